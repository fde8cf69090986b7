"""Segmentation losses built by name from JSON configs: ``build_loss({"name": "dice_ce", ...})``."""

from medcore.losses.compound import DiceCELoss, DiceFocalLoss
from medcore.losses.deep_supervision import DeepSupervisionLoss
from medcore.losses.dice import DiceLoss, GeneralizedDiceLoss, TverskyLoss
from medcore.losses.focal import FocalLoss
from medcore.losses.registry import build_loss, loss_names, register_loss

__all__ = ["build_loss", "loss_names", "register_loss", "DiceLoss", "DiceCELoss", "DiceFocalLoss", "FocalLoss",
           "TverskyLoss", "GeneralizedDiceLoss", "DeepSupervisionLoss"]

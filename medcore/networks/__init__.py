"""Segmentation networks built by name from JSON configs: ``build_network({"name": "unet", ...})``.

Every built network has ``.config`` (a JSON-ready dict that rebuilds it); weights travel as
safetensors (:func:`save_network` / :func:`load_network`), never as pickles.
"""

from medcore.networks.dynunet import DynUNet, dynunet_kernels_strides
from medcore.networks.registry import build_network, network_names, register_network
from medcore.networks.segresnet import SegResNet
from medcore.networks.swin_unetr import SwinUNETR
from medcore.networks.unet import UNet
from medcore.networks.unetr import UNETR
from medcore.networks.weights import load_network, load_weights, read_weights, save_network, save_weights

__all__ = ["build_network", "network_names", "register_network", "UNet", "DynUNet", "dynunet_kernels_strides",
           "SegResNet", "UNETR", "SwinUNETR", "save_weights", "load_weights", "read_weights", "save_network",
           "load_network"]

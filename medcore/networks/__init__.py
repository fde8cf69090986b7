"""Segmentation networks built by name from JSON configs: ``build_network({"name": "unet", ...})``."""

from medcore.networks.registry import build_network, network_names, register_network
from medcore.networks.unet import UNet
from medcore.networks.weights import load_network, load_weights, read_weights, save_network, save_weights

__all__ = ["build_network", "network_names", "register_network", "UNet", "save_weights", "load_weights",
           "read_weights", "save_network", "load_network"]

"""Tiny configs for every registered network, with example spatial sizes that keep CPU tests fast."""

from __future__ import annotations

# name -> (extra config, 2D example size, 3D example size, multiple every spatial size must be of)
TINY = {
    "unet": ({"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 2}, [16, 12], [16, 12, 8], 4),
    "dynunet": ({"kernel_size": [3, 3, 3], "strides": [1, 2, 2], "filters": [4, 8, 16], "deep_supervision": True,
                 "deep_supr_num": 1, "res_block": True}, [16, 12], [16, 12, 8], 4),
    "segresnet": ({"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}, [16, 12], [16, 12, 8], 4),
    "unetr": ({"img_size": 32, "feature_size": 4, "hidden_size": 24, "mlp_dim": 32, "num_heads": 2,
               "num_layers": 4}, [32, 16], [32, 16, 16], 16),
    "swin_unetr": ({"feature_size": 4, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 2},
                   [64, 32], [64, 32, 32], 32),
}


def tiny_config(name: str, spatial_dims: int) -> dict:
    return {"name": name, "spatial_dims": spatial_dims, "in_channels": 2, "out_channels": 3, **TINY[name][0]}


def example_size(name: str, spatial_dims: int) -> list[int]:
    return list(TINY[name][1] if spatial_dims == 2 else TINY[name][2])


def size_multiple(name: str) -> int:
    return TINY[name][3]

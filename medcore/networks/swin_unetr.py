"""SwinUNETR (Hatamizadeh et al. 2022): a Swin Transformer encoder with a convolutional U-Net decoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medcore.networks.layers import NormSpec, as_tuple, conv_type
from medcore.networks.registry import register_network
from medcore.networks.swin import SwinEncoder
from medcore.networks.unet import ResidualUnit
from medcore.networks.unetr import UpBlock


@register_network("swin_unetr")
class SwinUNETR(nn.Module):
    """SwinUNETR: patch size 2 and four Swin stages give features at 1/2 ... 1/32 resolution
    (``feature_size * 2**i`` channels); residual units refine the skips and a transposed-conv decoder
    returns to full resolution. Spatial sizes must be divisible by 32; ``feature_size`` by 12 is
    conventional (heads 3, 6, 12, 24 need widths divisible by them).

    Any size works (feature maps are padded to whole windows and padded keys are masked), so the
    network exports with dynamic spatial sizes. Trace ``torch.export`` with an example larger than
    ``16 * window_size`` on each dynamic axis (e.g. 128 for window 7): a stage holding a single
    window gets specialised to one window, which limits the exported range.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, feature_size: int = 24,
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int | Sequence[int] = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 dropout: float = 0.0, normalize: bool = True, norm: NormSpec = "instance",
                 act: NormSpec = ("leakyrelu", {"negative_slope": 0.01})) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"swin_unetr supports spatial_dims 2 or 3, got {spatial_dims}")
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"swin_unetr needs 4 stages: depths and num_heads of length 4, got {list(depths)} and "
                             f"{list(num_heads)}")
        window = as_tuple(window_size, spatial_dims, "window_size")
        self.encoder = SwinEncoder(spatial_dims, in_channels, feature_size, 2, depths, num_heads, window, mlp_ratio,
                                   qkv_bias, dropout, normalize)
        f = feature_size
        unit: dict[str, Any] = dict(norm=norm, act=act, bias=False)
        self.skip0 = ResidualUnit(spatial_dims, in_channels, f, **unit)
        self.skip1 = ResidualUnit(spatial_dims, f, f, **unit)
        self.skip2 = ResidualUnit(spatial_dims, 2 * f, 2 * f, **unit)
        self.skip3 = ResidualUnit(spatial_dims, 4 * f, 4 * f, **unit)
        self.bottleneck = ResidualUnit(spatial_dims, 16 * f, 16 * f, **unit)
        self.up4 = UpBlock(spatial_dims, 16 * f, 8 * f, norm, act)
        self.up3 = UpBlock(spatial_dims, 8 * f, 4 * f, norm, act)
        self.up2 = UpBlock(spatial_dims, 4 * f, 2 * f, norm, act)
        self.up1 = UpBlock(spatial_dims, 2 * f, f, norm, act)
        self.up0 = UpBlock(spatial_dims, f, f, norm, act)
        self.head = conv_type(spatial_dims)(f, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis, size in enumerate(x.shape[2:]):
            if size % 32:
                raise ValueError(f"swin_unetr: spatial size {size} on axis {axis} is not divisible by 32; pad or crop "
                                 "the input (e.g. sliding-window patches of 64 or 96)")
        h0, h1, h2, h3, h4 = self.encoder(x)
        y = self.up4(self.bottleneck(h4), h3)
        y = self.up3(y, self.skip3(h2))
        y = self.up2(y, self.skip2(h1))
        y = self.up1(y, self.skip1(h0))
        return self.head(self.up0(y, self.skip0(x)))

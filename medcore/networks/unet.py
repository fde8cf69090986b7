"""A U-Net whose encoder and decoder stages are residual units (Kerfoot et al. 2018 style)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medcore.networks.layers import ConvNormAct, NormSpec, conv_type
from medcore.networks.registry import register_network


class ResidualUnit(nn.Module):
    """``num_convs`` conv-norm-act blocks (the first one strided) plus a projected shortcut.

    ``num_convs=0`` gives a single plain conv block without shortcut.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1,
                 num_convs: int = 2, kernel_size: int = 3, norm: NormSpec = "instance", act: NormSpec = "prelu",
                 dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        n = max(1, num_convs)
        self.convs = nn.Sequential(*[
            ConvNormAct(spatial_dims, in_channels if i == 0 else out_channels, out_channels, kernel_size,
                        stride if i == 0 else 1, norm, act, dropout, bias)
            for i in range(n)])
        self.shortcut: nn.Module | None
        if num_convs == 0:
            self.shortcut = None
        elif in_channels == out_channels and stride == 1:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = conv_type(spatial_dims)(in_channels, out_channels, 1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convs(x)
        return y if self.shortcut is None else y + self.shortcut(x)


@register_network("unet")
class UNet(nn.Module):
    """Residual U-Net.

    ``channels[i]`` features at level ``i``; ``strides[i]`` downsamples from level ``i`` to ``i+1``
    (so ``len(strides) == len(channels) - 1``). Each stage is a :class:`ResidualUnit` with
    ``num_res_units`` convolutions. Upsampling is a transposed conv (kernel = stride) followed by
    concatenation with the skip and a residual unit. Spatial sizes must be divisible by the product
    of the strides.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 channels: Sequence[int] = (16, 32, 64, 128, 256), strides: Sequence[int] = (2, 2, 2, 2),
                 num_res_units: int = 2, kernel_size: int = 3, norm: NormSpec = "instance",
                 act: NormSpec = "prelu", dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        channels, strides = list(channels), list(strides)
        if len(channels) < 2 or len(strides) != len(channels) - 1:
            raise ValueError(f"unet needs at least 2 channels and len(strides) == len(channels) - 1; "
                             f"got channels={channels}, strides={strides}")
        unit: dict[str, Any] = dict(
            spatial_dims=spatial_dims,
            num_convs=num_res_units,
            kernel_size=kernel_size,
            norm=norm,
            act=act,
            dropout=dropout,
            bias=bias,
        )
        self.stem = ResidualUnit(in_channels=in_channels, out_channels=channels[0], **unit)
        self.down = nn.ModuleList(ResidualUnit(in_channels=channels[i], out_channels=channels[i + 1],
                                               stride=strides[i], **unit) for i in range(len(strides)))
        up_conv = conv_type(spatial_dims, transposed=True)
        self.upsample = nn.ModuleList(up_conv(channels[i + 1], channels[i], strides[i], stride=strides[i], bias=bias)
                                      for i in range(len(strides)))
        self.up = nn.ModuleList(ResidualUnit(in_channels=2 * channels[i], out_channels=channels[i], **unit)
                                for i in range(len(strides)))
        self.head = conv_type(spatial_dims)(channels[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for i in reversed(range(len(self.up))):
            y = self.up[i](torch.cat([self.upsample[i](y), skips[i]], dim=1))
        return self.head(y)

"""SegResNet (Myronenko 2018) without the VAE branch: a residual encoder and a light decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medcore.networks.layers import NormSpec, conv_type, make_act, make_norm
from medcore.networks.registry import register_network


class PreActResBlock(nn.Module):
    """norm-act-conv-norm-act-conv with an identity shortcut."""

    def __init__(self, spatial_dims: int, channels: int, norm: NormSpec, act: NormSpec) -> None:
        super().__init__()
        conv = conv_type(spatial_dims)
        self.body = nn.Sequential(make_norm(norm, spatial_dims, channels), make_act(act, channels),
                                  conv(channels, channels, 3, padding=1, bias=False),
                                  make_norm(norm, spatial_dims, channels), make_act(act, channels),
                                  conv(channels, channels, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsample(nn.Module):
    """x2 upsampling: ``"deconv"`` (transposed conv) or ``"nontrainable"`` (linear interpolation)."""

    def __init__(self, spatial_dims: int, channels: int, mode: str) -> None:
        super().__init__()
        if mode not in ("deconv", "nontrainable"):
            raise ValueError(f"segresnet upsample_mode must be 'deconv' or 'nontrainable', got {mode!r}")
        self.deconv = conv_type(spatial_dims, True)(channels, channels, 2, stride=2) if mode == "deconv" else None
        self.interp = ("linear", "bilinear", "trilinear")[spatial_dims - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deconv is not None:
            return self.deconv(x)
        return F.interpolate(x, scale_factor=2.0, mode=self.interp, align_corners=False)


@register_network("segresnet")
class SegResNet(nn.Module):
    """SegResNet: ``len(blocks_down)`` encoder levels with ``init_filters * 2**i`` channels, each with
    ``blocks_down[i]`` residual blocks; decoder levels halve channels, upsample x2, add the skip and
    apply ``blocks_up[i]`` residual blocks. Spatial sizes must be divisible by ``2**(len(blocks_down)-1)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, init_filters: int = 8,
                 blocks_down: Sequence[int] = (1, 2, 2, 4), blocks_up: Sequence[int] = (1, 1, 1),
                 norm: NormSpec = ("group", {"num_groups": 8}), act: NormSpec = "relu", dropout: float = 0.0,
                 upsample_mode: str = "nontrainable") -> None:
        super().__init__()
        blocks_down, blocks_up = list(blocks_down), list(blocks_up)
        if len(blocks_up) != len(blocks_down) - 1:
            raise ValueError(f"segresnet needs len(blocks_up) == len(blocks_down) - 1, got {blocks_up} and "
                             f"{blocks_down}")
        conv = conv_type(spatial_dims)
        widths = [init_filters * 2 ** i for i in range(len(blocks_down))]
        self.stem = conv(in_channels, init_filters, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.down = nn.ModuleList(
            nn.Sequential(conv(widths[i - 1], widths[i], 3, stride=2, padding=1, bias=False) if i else nn.Identity(),
                          *[PreActResBlock(spatial_dims, widths[i], norm, act) for _ in range(blocks_down[i])])
            for i in range(len(blocks_down)))
        self.reduce = nn.ModuleList(conv(widths[i + 1], widths[i], 1, bias=False) for i in range(len(blocks_up)))
        self.upsample = nn.ModuleList(Upsample(spatial_dims, widths[i], upsample_mode) for i in range(len(blocks_up)))
        self.up = nn.ModuleList(nn.Sequential(*[PreActResBlock(spatial_dims, widths[i], norm, act)
                                                for _ in range(blocks_up[i])]) for i in range(len(blocks_up)))
        self.head = nn.Sequential(make_norm(norm, spatial_dims, init_filters), make_act(act, init_filters),
                                  conv(init_filters, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.stem(x))
        skips = []
        for level in self.down:
            x = level(x)
            skips.append(x)
        y = skips.pop()
        for i in reversed(range(len(self.up))):
            y = self.up[i](self.upsample[i](self.reduce[i](y)) + skips[i])
        return self.head(y)

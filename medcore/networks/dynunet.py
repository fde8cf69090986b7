"""DynUNet: a U-Net configured the nnU-Net way, with per-level kernels and strides and deep supervision."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medcore.networks.layers import ConvNormAct, NormSpec, conv_type, make_act, make_norm, same_padding
from medcore.networks.registry import register_network

Kernel = int | Sequence[int]


def dynunet_kernels_strides(spacing: Sequence[float], patch_size: Sequence[int], min_size: int = 8,
                            max_downsamplings: int | None = None) -> tuple[list[list[int]], list[list[int]]]:
    """Choose per-level kernels and strides from voxel ``spacing`` (mm) and ``patch_size`` (voxels).

    nnU-Net's rule, applied level by level: an axis is halved while its current spacing is at most
    twice the finest current spacing and its current size is at least ``min_size``; its kernel is 3,
    or 1 while the axis is more than twice as coarse as the finest (very anisotropic). The first
    level has stride 1, the bottleneck 3x3(x3) kernels. Returns ``(kernel_size, strides)`` lists.
    """
    spacing, sizes = [float(s) for s in spacing], [int(s) for s in patch_size]
    if len(spacing) != len(sizes) or len(sizes) not in (2, 3):
        raise ValueError(f"spacing {spacing} and patch_size {sizes} need the same length, 2 or 3")
    if min(spacing) <= 0 or min(sizes) <= 0:
        raise ValueError(f"spacing and patch size must be positive, got {spacing} and {sizes}")
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * len(sizes)]
    while max_downsamplings is None or len(strides) - 1 < max_downsamplings:
        finest = min(spacing)
        ratios = [s / finest for s in spacing]
        stride = [2 if r <= 2 and n >= min_size else 1 for r, n in zip(ratios, sizes)]
        if all(s == 1 for s in stride):
            break
        for axis, (s, n) in enumerate(zip(stride, sizes)):
            if s == 2 and n % 2:
                raise ValueError(f"patch size {list(patch_size)} is not divisible by the strides on axis {axis}; "
                                 "pick a patch size divisible by 2 at every downsampling (e.g. a multiple of 32)")
        kernels.append([3 if r <= 2 else 1 for r in ratios])
        strides.append(stride)
        sizes = [n // s for n, s in zip(sizes, stride)]
        spacing = [p * s for p, s in zip(spacing, stride)]
    kernels.append([3] * len(sizes))
    return kernels, strides


class DoubleConv(nn.Module):
    """Two conv-norm-act blocks (the first strided), optionally with a projected residual shortcut."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: Kernel, stride: Kernel,
                 norm: NormSpec, act: NormSpec, dropout: float, residual: bool) -> None:
        super().__init__()
        self.first = ConvNormAct(spatial_dims, in_channels, out_channels, kernel_size, stride, norm, act, dropout,
                                 bias=False)
        self.shortcut: nn.Module | None
        if residual:
            conv = conv_type(spatial_dims)
            self.second = nn.Sequential(
                conv(out_channels, out_channels, kernel_size, padding=same_padding(kernel_size, spatial_dims),
                     bias=False),
                make_norm(norm, spatial_dims, out_channels))
            self.shortcut = nn.Sequential(conv(in_channels, out_channels, 1, stride=stride, bias=False),
                                          make_norm(norm, spatial_dims, out_channels))
            self.out_act = make_act(act, out_channels)
        else:
            self.second = ConvNormAct(spatial_dims, out_channels, out_channels, kernel_size, 1, norm, act, dropout,
                                      bias=False)
            self.shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.second(self.first(x))
        return y if self.shortcut is None else self.out_act(y + self.shortcut(x))


@register_network("dynunet")
class DynUNet(nn.Module):
    """nnU-Net-style U-Net.

    ``kernel_size[i]`` and ``strides[i]`` configure level ``i`` (``strides[0]`` is usually 1); see
    :func:`dynunet_kernels_strides`. ``filters`` default to 32, 64, ... capped at 320 (3D) or 512 (2D).
    With ``deep_supervision`` the module returns, in training mode, a list of logits: full
    resolution first, then ``deep_supr_num`` coarser decoder levels at their own (smaller) sizes,
    ready for :class:`medcore.losses.DeepSupervisionLoss`. In eval mode it returns one tensor.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: Sequence[Kernel],
                 strides: Sequence[Kernel], filters: Sequence[int] | None = None, norm: NormSpec = "instance",
                 act: NormSpec = ("leakyrelu", {"negative_slope": 0.01}), dropout: float = 0.0,
                 deep_supervision: bool = False, deep_supr_num: int = 1, res_block: bool = False) -> None:
        super().__init__()
        kernel_size, strides = list(kernel_size), list(strides)
        levels = len(kernel_size)
        if levels < 2 or len(strides) != levels:
            raise ValueError(f"dynunet needs kernel_size and strides of equal length >= 2 (one per level), "
                             f"got {len(kernel_size)} and {len(strides)}")
        if filters is None:
            cap = 320 if spatial_dims == 3 else 512
            filters = [min(32 * 2 ** i, cap) for i in range(levels)]
        filters = list(filters)
        if len(filters) != levels:
            raise ValueError(f"dynunet: filters needs {levels} entries (one per level), got {filters}")
        if deep_supervision and not 1 <= deep_supr_num <= levels - 2:
            raise ValueError(f"dynunet: deep_supr_num must be in [1, {levels - 2}] for {levels} levels, "
                             f"got {deep_supr_num}")
        block: dict[str, Any] = dict(spatial_dims=spatial_dims, norm=norm, act=act, dropout=dropout, residual=res_block)
        self.encoder = nn.ModuleList(
            DoubleConv(in_channels=in_channels if i == 0 else filters[i - 1], out_channels=filters[i],
                       kernel_size=kernel_size[i], stride=strides[i], **block) for i in range(levels))
        up_conv = conv_type(spatial_dims, transposed=True)
        self.upsample = nn.ModuleList(up_conv(filters[i + 1], filters[i], strides[i + 1], stride=strides[i + 1],
                                              bias=False) for i in range(levels - 1))
        self.decoder = nn.ModuleList(
            DoubleConv(in_channels=2 * filters[i], out_channels=filters[i], kernel_size=kernel_size[i], stride=1,
                       **block) for i in range(levels - 1))
        conv = conv_type(spatial_dims)
        self.head = conv(filters[0], out_channels, 1)
        self.deep_supervision = deep_supervision
        self.deep_heads = nn.ModuleList(conv(filters[i], out_channels, 1)
                                        for i in range(1, deep_supr_num + 1)) if deep_supervision else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        y = skips.pop()
        decoded: list[torch.Tensor] = []
        for i in reversed(range(len(self.decoder))):
            y = self.decoder[i](torch.cat([self.upsample[i](y), skips[i]], dim=1))
            decoded.append(y)
        out = self.head(y)
        if not (self.training and self.deep_supervision):
            return out
        decoded.reverse()  # finest first
        return [out] + [head(decoded[k + 1]) for k, head in enumerate(self.deep_heads)]

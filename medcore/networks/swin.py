"""A Swin Transformer encoder (shifted-window attention) for 2D or 3D feature maps, channel-last.

Maps whose sizes are not multiples of the window are padded; padded tokens are masked out of the
attention keys, so results do not depend on the padding and any input size works (no shape-dependent
branches, which keeps the network exportable with dynamic sizes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """``(N, N)`` index into a ``prod(2w-1)`` bias table for every pair of positions in a window."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    index = torch.zeros(rel.shape[1:], dtype=torch.long)
    for axis, w in enumerate(window):
        index = index * (2 * w - 1) + rel[axis] + (w - 1)
    return index


def partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """``(B, *S, C)`` with S divisible by ``window`` -> ``(B * windows, prod(window), C)``."""
    d, c = len(window), x.shape[-1]
    for axis, w in enumerate(window):
        x = x.unfold(1 + axis, w, w)  # (B, *grid, C, *window) once all axes are done
    x = x.permute(0, *range(1, d + 1), *range(d + 2, 2 * d + 2), d + 1)
    return x.reshape(-1, math.prod(window), c)


def merge(windows: torch.Tensor, window: Sequence[int], batch: int, spatial: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`partition`."""
    d, c = len(window), windows.shape[-1]
    grid = [s // w for s, w in zip(spatial, window)]
    x = windows.reshape(batch, *grid, *window, c)
    order = [0]
    for axis in range(d):
        order += [1 + axis, 1 + d + axis]
    return x.permute(*order, 2 * d + 1).reshape(batch, *spatial, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, window: Sequence[int], qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"swin: feature width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.bias_table = nn.Parameter(torch.zeros(math.prod(2 * w - 1 for w in window), num_heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("bias_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B * nW, N, C)``; ``allowed``: ``(nW, N, N)`` bool, which keys each query may see."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        scores = (q * self.scale) @ k.transpose(-2, -1)
        bias_index = cast(torch.Tensor, self.bias_index)  # a registered buffer
        scores = scores + self.bias_table[bias_index].permute(2, 0, 1).to(scores.dtype)
        blocked = (~allowed).repeat(bw // allowed.shape[0], 1, 1)[:, None]
        attn = scores.masked_fill(blocked, torch.finfo(scores.dtype).min).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


def cyclic_shift(x: torch.Tensor, shifts: Sequence[int], dims: Sequence[int]) -> torch.Tensor:
    """``torch.roll(x, [-s for s in shifts], dims)`` by slicing, which exports with symbolic sizes."""
    for s, d in zip(shifts, dims):
        if s:
            x = torch.cat([x.narrow(d, s, x.shape[d] - s), x.narrow(d, 0, s)], dim=d)
    return x


def cyclic_unshift(x: torch.Tensor, shifts: Sequence[int], dims: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`cyclic_shift`."""
    for s, d in zip(shifts, dims):
        if s:
            x = torch.cat([x.narrow(d, x.shape[d] - s, s), x.narrow(d, 0, x.shape[d] - s)], dim=d)
    return x


def window_mask(sizes: Sequence[int], padded: Sequence[int], window: Sequence[int], shift: Sequence[int],
                device: torch.device) -> torch.Tensor:
    """``(nW, N, N)`` bool: query and key come from the same (pre-shift) region and the key is not padding.

    Built per axis on a ``(windows, window)`` grid of positions and combined by broadcasting.
    """
    d = len(padded)
    label: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    for axis, (s, p, w, sh) in enumerate(zip(sizes, padded, window, shift)):
        pos = torch.arange(p // w, device=device)[:, None] * w + torch.arange(w, device=device)[None, :]
        index = (None,) * axis + (slice(None),) + (None,) * (d - 1) + (slice(None),) + (None,) * (d - 1 - axis)
        ok = (((pos + sh) % p) < s)[index]  # position before the cyclic shift lies inside the image
        valid = ok if valid is None else valid & ok
        region = ((pos >= p - w).long() + (pos >= p - sh).long()) if sh else torch.zeros_like(pos)
        label = region[index] if label is None else label * 3 + region[index]
    assert label is not None and valid is not None
    n = math.prod(window)
    lab = label.reshape(-1, n)
    ok = valid.reshape(-1, n)
    return (lab[:, :, None] == lab[:, None, :]) & ok[:, None, :]


class SwinBlock(nn.Module):
    """(Shifted-)window attention + MLP, pre-norm, residual."""

    def __init__(self, dim: int, num_heads: int, window: Sequence[int], shift: Sequence[int], mlp_ratio: float,
                 qkv_bias: bool, dropout: float) -> None:
        super().__init__()
        self.window, self.shift = list(window), list(shift)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, spatial = x.shape[0], x.shape[1:-1]
        y = self.norm1(x)
        pad: list[int] = []
        for s, w in zip(reversed(spatial), reversed(self.window)):
            pad += [0, (s + w - 1) // w * w - s]
        y = F.pad(y, [0, 0] + pad)
        padded = y.shape[1:-1]
        dims = list(range(1, len(spatial) + 1))
        y = cyclic_shift(y, self.shift, dims)
        y = merge(self.attn(partition(y, self.window), allowed), self.window, b, padded)
        y = cyclic_unshift(y, self.shift, dims)
        y = y[(slice(None), *[slice(0, s) for s in spatial])]
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Halve every (even) spatial size: concatenate each 2x2(x2) neighbourhood, normalise, project to 2C."""

    def __init__(self, dim: int, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.norm = nn.LayerNorm(2 ** spatial_dims * dim)
        self.reduction = nn.Linear(2 ** spatial_dims * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d = x.shape[0], x.shape[-1], self.spatial_dims
        half = [s // 2 for s in x.shape[1:-1]]
        split: list[int] = []
        for h in half:
            split += [h, 2]
        x = x.reshape(b, *split, c).permute(0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1)
        return self.reduction(self.norm(x.reshape(b, *half, 2 ** d * c)))


class SwinStage(nn.Module):
    """``depth`` blocks alternating plain and shifted windows, then patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: Sequence[int], mlp_ratio: float,
                 qkv_bias: bool, dropout: float, spatial_dims: int) -> None:
        super().__init__()
        self.window = list(window)
        self.shift = [w // 2 for w in window]
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, [0] * spatial_dims if i % 2 == 0 else self.shift, mlp_ratio, qkv_bias,
                      dropout) for i in range(depth))
        self.downsample = PatchMerging(dim, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = list(x.shape[1:-1])
        padded = [(s + w - 1) // w * w for s, w in zip(spatial, self.window)]
        masks = [window_mask(spatial, padded, self.window, [0] * len(spatial), x.device),
                 window_mask(spatial, padded, self.window, self.shift, x.device)]
        for i, block in enumerate(self.blocks):
            x = block(x, masks[i % 2])
        return self.downsample(x)


class SwinEncoder(nn.Module):
    """Patch embedding (stride ``patch_size``) then one :class:`SwinStage` per entry of ``depths``.

    Returns channel-first feature maps: the embedding (``feature_size`` channels) and the output of
    each stage (doubling channels, halving sizes), layer-normalised over channels when ``normalize``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, feature_size: int, patch_size: int,
                 depths: Sequence[int], num_heads: Sequence[int], window_size: Sequence[int], mlp_ratio: float,
                 qkv_bias: bool, dropout: float, normalize: bool) -> None:
        super().__init__()
        conv = (nn.Conv2d, nn.Conv3d)[spatial_dims - 2]
        self.patch_embed = conv(in_channels, feature_size, patch_size, stride=patch_size)
        self.drop = nn.Dropout(dropout)
        self.stages = nn.ModuleList(
            SwinStage(feature_size * 2 ** i, depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias, dropout,
                      spatial_dims) for i in range(len(depths)))
        self.normalize = normalize

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = F.layer_norm(x, x.shape[-1:])
        return x.movedim(-1, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.drop(self.patch_embed(x).movedim(1, -1))
        outs = [self._out(x)]
        for stage in self.stages:
            x = stage(x)
            outs.append(self._out(x))
        return outs

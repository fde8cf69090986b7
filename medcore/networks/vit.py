"""A plain Vision Transformer encoder over non-overlapping patches, for 2D or 3D images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medcore.networks.layers import as_tuple, conv_type


class TransformerBlock(nn.Module):
    """Pre-norm multi-head self-attention and MLP, each with a residual connection."""

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int, dropout: float = 0.0,
                 qkv_bias: bool = False) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, hidden_size), nn.Dropout(dropout))
        self.dropout = dropout

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, n, c)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding (a strided conv) + learned position embeddings + transformer blocks.

    Position embeddings are learned for the ``img_size`` grid and resized (linear interpolation) to
    the grid of the actual input, so any input whose sizes are multiples of the patch size works.
    ``forward`` returns the token sequence after every block (``(B, N, hidden)`` each) and the grid.
    """

    def __init__(self, spatial_dims: int, in_channels: int, img_size: int | Sequence[int], patch_size: int,
                 hidden_size: int, mlp_dim: int, num_layers: int, num_heads: int, dropout: float = 0.0,
                 qkv_bias: bool = False) -> None:
        super().__init__()
        img_size = as_tuple(img_size, spatial_dims, "img_size")
        if any(s % patch_size for s in img_size):
            raise ValueError(f"img_size {list(img_size)} must be divisible by patch_size {patch_size}")
        self.spatial_dims, self.patch_size = spatial_dims, patch_size
        self.grid = tuple(s // patch_size for s in img_size)
        self.patch_embed = conv_type(spatial_dims)(in_channels, hidden_size, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, hidden_size, *self.grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(hidden_size, mlp_dim, num_heads, dropout, qkv_bias)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.patch_embed(x)
        mode = ("linear", "bilinear", "trilinear")[self.spatial_dims - 1]
        pos = F.interpolate(self.pos_embed, size=x.shape[2:], mode=mode, align_corners=False)
        tokens = self.drop((x + pos).flatten(2).transpose(1, 2))
        hidden = []
        for block in self.blocks:
            tokens = block(tokens)
            hidden.append(tokens)
        return self.norm(tokens), hidden

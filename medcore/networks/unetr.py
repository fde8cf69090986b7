"""UNETR (Hatamizadeh et al. 2022): a ViT encoder with a convolutional U-shaped decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medcore.networks.layers import NormSpec, conv_type
from medcore.networks.registry import register_network
from medcore.networks.unet import ResidualUnit
from medcore.networks.vit import ViT


class UpBlock(nn.Module):
    """x2 transposed conv, concatenation with a skip, then a residual unit."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: NormSpec, act: NormSpec) -> None:
        super().__init__()
        self.up = conv_type(spatial_dims, True)(in_channels, out_channels, 2, stride=2, bias=False)
        self.block = ResidualUnit(spatial_dims, 2 * out_channels, out_channels, norm=norm, act=act, bias=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class TokenUpsampler(nn.Sequential):
    """Tokens on the patch grid -> feature map ``2**steps`` times finer (transposed conv + residual unit each)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, steps: int, norm: NormSpec,
                 act: NormSpec) -> None:
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(steps):
            layers += [conv_type(spatial_dims, True)(channels, out_channels, 2, stride=2, bias=False),
                       ResidualUnit(spatial_dims, out_channels, out_channels, norm=norm, act=act, bias=False)]
            channels = out_channels
        super().__init__(*layers)


@register_network("unetr")
class UNETR(nn.Module):
    """UNETR with a 16-voxel patch ViT. Hidden states after layers L/4, L/2, 3L/4 and L are decoded at
    1/8, 1/4, 1/2 resolution (and the bottleneck 1/16); the input itself feeds the full-resolution skip.
    ``img_size`` sets the learned position-embedding grid; other sizes divisible by 16 also work
    (the embeddings are interpolated), so it exports with dynamic sizes; trace with at least two
    patches per dynamic axis, or that axis is specialised to one patch.
    """

    patch_size = 16

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, img_size: int | Sequence[int] = 96,
                 feature_size: int = 16, hidden_size: int = 768, mlp_dim: int = 3072, num_heads: int = 12,
                 num_layers: int = 12, norm: NormSpec = "instance", act: NormSpec = "prelu", dropout: float = 0.0,
                 qkv_bias: bool = False) -> None:
        super().__init__()
        if num_layers % 4:
            raise ValueError(f"unetr: num_layers must be a multiple of 4 (skips come from every quarter), "
                             f"got {num_layers}")
        self.spatial_dims, self.num_layers = spatial_dims, num_layers
        self.vit = ViT(spatial_dims, in_channels, img_size, self.patch_size, hidden_size, mlp_dim, num_layers,
                       num_heads, dropout, qkv_bias)
        f = feature_size
        self.encoder1 = ResidualUnit(spatial_dims, in_channels, f, norm=norm, act=act, bias=False)
        self.encoder2 = TokenUpsampler(spatial_dims, hidden_size, 2 * f, 3, norm, act)
        self.encoder3 = TokenUpsampler(spatial_dims, hidden_size, 4 * f, 2, norm, act)
        self.encoder4 = TokenUpsampler(spatial_dims, hidden_size, 8 * f, 1, norm, act)
        self.decoder5 = UpBlock(spatial_dims, hidden_size, 8 * f, norm, act)
        self.decoder4 = UpBlock(spatial_dims, 8 * f, 4 * f, norm, act)
        self.decoder3 = UpBlock(spatial_dims, 4 * f, 2 * f, norm, act)
        self.decoder2 = UpBlock(spatial_dims, 2 * f, f, norm, act)
        self.head = conv_type(spatial_dims)(f, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = [s // self.patch_size for s in x.shape[2:]]
        last, hidden = self.vit(x)

        def as_map(tokens: torch.Tensor) -> torch.Tensor:
            return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)

        q = self.num_layers // 4
        enc2 = self.encoder2(as_map(hidden[q - 1]))
        enc3 = self.encoder3(as_map(hidden[2 * q - 1]))
        enc4 = self.encoder4(as_map(hidden[3 * q - 1]))
        y = self.decoder5(as_map(last), enc4)
        y = self.decoder4(y, enc3)
        y = self.decoder3(y, enc2)
        return self.head(self.decoder2(y, self.encoder1(x)))

"""Dimension-generic building blocks shared by the networks: conv, norm and activation factories."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

NormSpec = str | Sequence | None


def conv_type(spatial_dims: int, transposed: bool = False) -> type[nn.Module]:
    """``nn.Conv{2,3}d`` or ``nn.ConvTranspose{2,3}d``."""
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    return (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[spatial_dims - 1] if transposed \
        else (nn.Conv1d, nn.Conv2d, nn.Conv3d)[spatial_dims - 1]


def as_tuple(value: int | Sequence[int], n: int, field: str = "value") -> tuple[int, ...]:
    """Broadcast an int to ``n`` dims, or check a sequence has ``n`` entries."""
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{field} needs {n} entries (one per spatial dim), got {list(value)}")
    return value


def same_padding(kernel_size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """Padding that keeps size (for odd kernels) at stride 1."""
    return tuple((k - 1) // 2 for k in as_tuple(kernel_size, spatial_dims, "kernel_size"))


def _split(spec: NormSpec | str) -> tuple[str, dict[str, Any]]:
    if spec is None:
        return "none", {}
    if isinstance(spec, str):
        return spec.lower(), {}
    if isinstance(spec, (list, tuple)) and len(spec) == 2 and isinstance(spec[1], dict):
        return str(spec[0]).lower(), dict(spec[1])
    raise ValueError(f"norm/act must be a name or [name, {{options}}], got {spec!r}")


def make_norm(spec: NormSpec, spatial_dims: int, channels: int) -> nn.Module:
    """``"instance"`` (affine), ``"batch"``, ``"group"`` (8 groups or fewer), ``"layer"`` or ``"none"``.

    Options ride along as ``["group", {"num_groups": 4}]``.
    """
    name, options = _split(spec)
    if name == "instance":
        cls = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[spatial_dims - 1]
        return cls(channels, **{"affine": True, **options})
    if name == "batch":
        return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[spatial_dims - 1](channels, **options)
    if name == "group":
        groups = int(options.pop("num_groups", min(8, channels)))
        if channels % groups:
            raise ValueError(f"group norm: {channels} channels are not divisible by num_groups={groups}; "
                             "pick channel counts that are multiples of the group count")
        return nn.GroupNorm(groups, channels, **options)
    if name == "layer":  # layer norm over channels, for channel-first feature maps
        return nn.GroupNorm(1, channels, **options)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {name!r}; use 'instance', 'batch', 'group', 'layer' or 'none'")


def make_act(spec: NormSpec, channels: int = 1) -> nn.Module:
    """``"prelu"``, ``"relu"``, ``"leakyrelu"`` (slope 0.01 unless given), ``"gelu"``, ``"none"``."""
    name, options = _split(spec)
    if name == "prelu":
        return nn.PReLU(**options)
    if name == "relu":
        return nn.ReLU(**{"inplace": False, **options})
    if name in ("leakyrelu", "leaky_relu"):
        return nn.LeakyReLU(**{"negative_slope": 0.01, **options})
    if name == "gelu":
        return nn.GELU(**options)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; use 'prelu', 'relu', 'leakyrelu', 'gelu' or 'none'")


class ConvNormAct(nn.Sequential):
    """conv -> norm -> dropout -> activation (each optional but the conv)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int | Sequence[int] = 3,
                 stride: int | Sequence[int] = 1, norm: NormSpec = "instance", act: NormSpec = "prelu",
                 dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.conv = conv_type(spatial_dims)(in_channels, out_channels, kernel_size, stride=stride,
                                            padding=same_padding(kernel_size, spatial_dims), bias=bias)
        self.norm = make_norm(norm, spatial_dims, out_channels)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.act = make_act(act, out_channels)

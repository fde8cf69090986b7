"""The ``Image`` carrier: a tensor, its voxel-to-world affine, a small meta dict and the applied ops.

Decisions (ARCHITECTURE rule 4):

* ``Image`` is a plain dataclass, never a ``torch.Tensor`` subclass, so tensor maths costs what
  torch costs. Transforms return a new ``Image`` (``img.replace(...)``); they never mutate one.
* ``data`` is channel-first: ``(C, *spatial)`` with one, two or three spatial axes.
* ``affine`` is ALWAYS a 4x4 ``float64`` CPU tensor mapping a voxel index ``(i, j, k, 1)`` to RAS
  world millimetres, as in NIfTI. For a 2D image the third voxel axis is implicit (size one); the
  spatial part used by transforms is ``affine[:, [0, .., d-1, 3]]``. The affine stays on the CPU
  whatever device ``data`` is on: it is 128 bytes of metadata and float64 maths on a GPU is slow.
* ``meta`` holds small JSON-able facts (source format, original shape/affine, intensity range...).
  Never PHI.
* ``ops`` is the list of applied operations, each a JSON-able dict with at least ``name`` and
  ``transform`` (the config of the deterministic transform that was applied, so it can be replayed)
  plus, for geometric ops, what ``medcore.transforms.invert`` needs to undo it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


def as_affine(affine: Any) -> torch.Tensor:
    """Return ``affine`` as a 4x4 float64 CPU tensor (2x2/3x3 spatial affines are embedded)."""
    a = torch.as_tensor(np.asarray(affine, dtype=np.float64) if not isinstance(affine, torch.Tensor) else affine)
    a = a.detach().to(device="cpu", dtype=torch.float64)
    if a.shape == (4, 4):
        return a.clone()
    if a.ndim == 2 and a.shape[0] == a.shape[1] and a.shape[0] in (2, 3):
        d = a.shape[0] - 1
        out = torch.eye(4, dtype=torch.float64)
        out[:d, :d] = a[:d, :d]
        out[:d, 3] = a[:d, d]
        return out
    raise ValueError(f"affine must be 4x4 (or a 2D/3D homogeneous square matrix), got shape {tuple(a.shape)}")


@dataclass
class Image:
    """A channel-first tensor with its geometry, metadata and history. See the module docstring."""

    data: torch.Tensor
    affine: torch.Tensor = field(default_factory=lambda: torch.eye(4, dtype=torch.float64))
    meta: dict[str, Any] = field(default_factory=dict)
    ops: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.data, torch.Tensor):
            self.data = torch.as_tensor(np.asarray(self.data))
        if self.data.ndim < 2 or self.data.ndim > 4:
            raise ValueError(
                f"Image.data must be channel-first (C, *spatial) with 1-3 spatial axes, got shape "
                f"{tuple(self.data.shape)}; add a channel axis with data[None]"
            )
        if not (isinstance(self.affine, torch.Tensor) and self.affine.dtype == torch.float64
                and self.affine.shape == (4, 4) and self.affine.device.type == "cpu"):
            self.affine = as_affine(self.affine)

    # --- geometry -------------------------------------------------------------------------
    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial size, without the channel axis."""
        return tuple(self.data.shape[1:])

    @property
    def ndim(self) -> int:
        """Number of spatial axes (1, 2 or 3)."""
        return self.data.ndim - 1

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each spatial axis (column norms of the affine)."""
        return tuple(float(v) for v in torch.linalg.norm(self.affine[:3, : self.ndim], dim=0))

    @property
    def device(self) -> torch.device:
        return self.data.device

    # --- copies ---------------------------------------------------------------------------
    def replace(self, **changes: Any) -> Image:
        """A shallow copy with fields replaced; ``meta`` and ``ops`` are copied (not shared)."""
        changes.setdefault("meta", dict(self.meta))
        changes.setdefault("ops", list(self.ops))
        return dataclasses.replace(self, **changes)

    def with_op(self, op: dict[str, Any], **changes: Any) -> Image:
        """``replace(**changes)`` and append ``op`` to the history."""
        new = self.replace(**changes)
        new.ops.append(op)
        return new

    def to(self, *args: Any, **kwargs: Any) -> Image:
        """Move/cast ``data`` like ``Tensor.to``; the affine stays a CPU float64 tensor."""
        return self.replace(data=self.data.to(*args, **kwargs))

    def clone(self) -> Image:
        """A deep copy (data, affine, meta and ops)."""
        return Image(self.data.clone(), self.affine.clone(), copy.deepcopy(self.meta), copy.deepcopy(self.ops))

    def __repr__(self) -> str:
        return (f"Image(shape={tuple(self.data.shape)}, dtype={self.data.dtype}, device={self.device}, "
                f"spacing={tuple(round(s, 4) for s in self.spacing)}, ops={[o.get('name') for o in self.ops]})")

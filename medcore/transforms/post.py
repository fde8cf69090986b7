"""Post-processing of network outputs: activations, discretisation and connected-component
clean-up. Connected components use ``scipy.ndimage`` on the CPU; for CUDA inputs that host round
trip is explicit here (and documented), never hidden elsewhere."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from medcore.io.image import Image
from medcore.transforms.base import Transform, register


class PostTransform(Transform):
    def compute(self, data: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, img: Image) -> Image:
        return img.with_op(self.op(kind="post"), data=self.compute(img.data))


@register
@dataclass(frozen=True)
class Activations(PostTransform):
    """``sigmoid`` and/or ``softmax`` over the channel axis."""

    sigmoid: bool = False
    softmax: bool = False

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        if self.sigmoid and self.softmax:
            raise ValueError("Activations: choose sigmoid or softmax, not both")
        x = data.float() if not data.is_floating_point() else data
        if self.sigmoid:
            return torch.sigmoid(x)
        if self.softmax:
            return torch.softmax(x, dim=0)
        return x


@register
@dataclass(frozen=True)
class AsDiscrete(PostTransform):
    """``argmax`` over channels (kept as one channel), then ``to_onehot`` classes, or
    ``threshold`` (values >= threshold -> 1). Output float32 like the network output."""

    argmax: bool = False
    to_onehot: int | None = None
    threshold: float | None = None

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        x = data
        if self.argmax:
            x = x.argmax(0, keepdim=True)
        if self.to_onehot is not None:
            if x.shape[0] != 1:
                raise ValueError(f"AsDiscrete: to_onehot needs one channel of class ids, got {x.shape[0]} channels")
            lab = x[0].round().long() if x.is_floating_point() else x[0].long()
            x = torch.nn.functional.one_hot(lab.clamp(0, self.to_onehot - 1), self.to_onehot).movedim(-1, 0)
        if self.threshold is not None:
            x = x >= self.threshold
        return x.float()


Mask = np.ndarray
MaskFn = Callable[[Mask], Mask]


def _structure(d: int, connectivity: int | None) -> np.ndarray:
    st: np.ndarray = ndimage.generate_binary_structure(d, connectivity or d)
    return st


def _per_mask(data: torch.Tensor, labels: Sequence[int] | None, fn: MaskFn) -> torch.Tensor:
    """Run ``fn(bool mask) -> bool mask`` on each channel (one-hot) or each label value."""
    arr = data.detach().cpu().numpy()
    out = arr.copy()
    if arr.shape[0] > 1:  # one-hot / multi-channel binary
        chans = range(arr.shape[0]) if labels is None else labels
        for c in chans:
            out[c] = fn(arr[c] > 0).astype(arr.dtype)
    else:
        vals = [v for v in np.unique(arr[0]) if v != 0] if labels is None else labels
        for v in vals:
            mask = arr[0] == v
            keep = fn(mask)
            out[0][mask & ~keep] = 0
            out[0][keep & ~mask & (arr[0] == 0)] = v
    return torch.from_numpy(out).to(data.device)


@register
@dataclass(frozen=True)
class KeepLargestConnectedComponent(PostTransform):
    """Keep only the largest connected component of each label (``applied_labels``; all
    nonzero labels by default), or of the union of them when ``independent=False``."""

    applied_labels: tuple[int, ...] | None = None
    independent: bool = True
    connectivity: int | None = None

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        d = data.ndim - 1
        st = _structure(d, self.connectivity)

        def largest(mask: Mask) -> Mask:
            lab, n = ndimage.label(mask, st)
            if n <= 1:
                return mask
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            keep: Mask = lab == int(sizes.argmax())
            return keep

        if self.independent or data.shape[0] > 1:
            return _per_mask(data, self.applied_labels, largest)
        arr = data.detach().cpu().numpy()
        labels = [v for v in np.unique(arr[0]) if v != 0] if self.applied_labels is None else self.applied_labels
        union = np.isin(arr[0], labels)
        keep = largest(union)
        out = arr.copy()
        out[0][union & ~keep] = 0
        return torch.from_numpy(out).to(data.device)


@register
@dataclass(frozen=True)
class RemoveSmallObjects(PostTransform):
    """Remove connected components smaller than ``min_size`` voxels (per label)."""

    min_size: int = 64
    connectivity: int | None = None

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        st = _structure(data.ndim - 1, self.connectivity)

        def drop_small(mask: Mask) -> Mask:
            lab, n = ndimage.label(mask, st)
            if n == 0:
                return mask
            sizes = np.bincount(lab.ravel())
            ok = sizes >= self.min_size
            ok[0] = False
            kept: Mask = ok[lab]
            return kept

        return _per_mask(data, None, drop_small)


@register
@dataclass(frozen=True)
class FillHoles(PostTransform):
    """Fill enclosed holes of each label (``applied_labels``; all nonzero by default)."""

    applied_labels: tuple[int, ...] | None = None
    connectivity: int | None = None

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        st = _structure(data.ndim - 1, self.connectivity)
        return _per_mask(data, self.applied_labels, lambda m: ndimage.binary_fill_holes(m, st))

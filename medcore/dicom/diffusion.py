"""Diffusion tables: ``.bval`` and ``.bvec`` of a 4D diffusion series, as dcm2niix writes them.

The ``.bvec`` follows FSL: one unit vector per volume in the image's voxel axes, with the first
axis negated when the voxel-to-world matrix has a positive determinant (FSL reads vectors as if
the image were stored radiologically). Gradients come in two frames (see
:func:`medcore.dicom.reader.diffusion`): patient LPS (standard, Siemens, Philips), projected
here onto the row, column and normal directions; or the image frame already (United Imaging).

medcore volumes are laid out ``(column, row, slice)`` with the slice axis along ``row x column``,
so the voxel axes are the image frame itself and the determinant is always positive.

A table that cannot be trusted gives no ``.bvec``, and the reason says why: a ``.bvec`` that is
wrong is a silent error in every tractography that follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from medcore.dicom import geometry
from medcore.dicom.frame import Frame

#: Directions shorter than this are "no direction" (b=0, or an isotropic / trace image).
ZERO_LENGTH = 1e-3
#: Frames of one volume whose directions differ by more than this do not share one gradient.
AGREEMENT = 1e-3


@dataclass(frozen=True)
class DiffusionTables:
    """Per-volume b-values and, when trustworthy, FSL ``bvecs`` (``(n_volumes, 3)``) or why not."""

    bvals: tuple[float, ...]
    bvecs: NDArray[np.float64] | None
    reason: str | None = None

    def bval_text(self) -> str:
        return " ".join(f"{b:g}" for b in self.bvals) + "\n"

    def bvec_text(self) -> str:
        """Three rows (x, y, z), one column per volume, as FSL and dcm2niix write them."""
        if self.bvecs is None:
            raise ValueError(f"no trustworthy gradient directions: {self.reason}")
        return "".join(" ".join(f"{v:.6g}" for v in row) + "\n" for row in np.where(self.bvecs == 0, 0.0, self.bvecs).T)


def image_frame_vector(frame: Frame) -> NDArray[np.float64] | None:
    """The frame's gradient in (row direction, column direction, normal) components, or None."""
    if frame.diffusion_gradient is None:
        return None
    g = np.asarray(frame.diffusion_gradient, dtype=np.float64)
    if frame.gradient_in_image_frame:
        return g
    if frame.iop is None:
        return None
    rc = geometry.as_iop(frame.iop)
    out: NDArray[np.float64] = np.array([g @ rc[0], g @ rc[1], g @ geometry.slice_normal(frame.iop)])
    return out


def fsl_bvec(vector: NDArray[np.float64]) -> NDArray[np.float64]:
    """Unit vector in FSL's convention for a medcore volume (first axis negated), or zeros."""
    length = float(np.linalg.norm(vector))
    if length < ZERO_LENGTH:
        return np.zeros(3)
    out = vector / length
    out[0] = -out[0]
    return out


def diffusion_tables(volumes: Sequence[Sequence[Frame]]) -> DiffusionTables | None:
    """Tables of a series with at least two volumes that all carry a b-value, else None.

    ``volumes[v]`` are the frames of volume ``v`` in output order.
    """
    if len(volumes) < 2 or any(f.diffusion_bvalue is None for vol in volumes for f in vol):
        return None
    if all(f.diffusion_bvalue == 0 for vol in volumes for f in vol):
        return None  # every b-value 0: not a diffusion series (GE writes b=0 on its fMRI too)
    bvals = []
    for v, vol in enumerate(volumes):
        values = {float(f.diffusion_bvalue or 0.0) for f in vol}
        if max(values) - min(values) > 1e-3 * max(1.0, max(values)):
            return DiffusionTables(tuple(float(vol[0].diffusion_bvalue or 0.0) for vol in volumes), None,
                                   f"volume {v} mixes b-values {sorted(values)}; the volumes are not one "
                                   "diffusion weighting each")
        bvals.append(float(vol[0].diffusion_bvalue or 0.0))
    vectors = []
    for v, (b, vol) in enumerate(zip(bvals, volumes)):
        if b <= 0:
            vectors.append(np.zeros(3))
            continue
        found = [image_frame_vector(f) for f in vol]
        if any(x is None for x in found):
            return DiffusionTables(tuple(bvals), None, f"volume {v} (b={b:g}) has no gradient direction "
                                   "in its header (or no orientation to place it)")
        stack = np.stack([x for x in found if x is not None])
        if np.max(np.abs(stack - stack[0])) > AGREEMENT:
            return DiffusionTables(tuple(bvals), None, f"the slices of volume {v} (b={b:g}) disagree about "
                                   "its gradient direction")
        vectors.append(fsl_bvec(stack[0]))
    return DiffusionTables(tuple(bvals), np.stack(vectors))

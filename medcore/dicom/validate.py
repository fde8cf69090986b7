"""Check the geometry of one candidate stack and decide how to write it, or refuse it.

:func:`plan_stack` looks only at header values (IOP, IPP, PixelSpacing, identity and temporal
keys) and returns a :class:`StackPlan`: slice order (volume-major for 4D), exact duplicates to
drop, the output slice step, and whether the stack must be resampled onto a regular grid.
Problems it cannot resolve safely raise :class:`GeometryError` with a machine-readable ``code``.

Decisions (a volume with a wrong affine is the worst possible output):

* ``mixed_orientation`` / ``mixed_pixel_spacing``: refuse (grouping normally splits these first).
* ``missing_geometry``: no IOP/IPP/PixelSpacing: refuse, nothing trustworthy can be written.
* exact duplicates (same SOPInstanceUID and frame): the later copies are dropped (the converter
  then checks that their pixels are identical, else refuses ``conflicting_duplicates``).
* repeated positions are volumes only when an acquisition value tells them apart (temporal
  position, acquisition number or time, trigger time, b-value and gradient, echo, vendor
  dimension index: the ``acquisition_keys``). Frames at one position with equal acquisition keys
  are copies: the later ones are dropped (the converter then checks that their pixels are
  identical, else refuses ``indistinct_repeats``).
* then every position the same number of times -> 4D, ordered by temporal keys; otherwise
  ``inconsistent_repeats``.
* ``missing_slices``: a gap that is a whole multiple (>= 2) of the usual step, or more than
  2.5 times it: refuse, because filling a hole would invent anatomy.
* irregular spacing (other uneven gaps) and gantry tilt (slice origins drifting in-plane):
  resampled onto a regular, orthogonal grid (see :mod:`medcore.dicom.resample`), recorded.
  The output step is the smallest gap (at least a quarter of the median gap).

A stack is regular when every slice lies within ``max(0.02 mm, 0.2% of the step)`` of
``first + k * step``; the affine then places every input slice within that distance.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from medcore.dicom import geometry

#: Positions closer than this (mm) along the normal are the same slice position.
POSITION_TOLERANCE = 0.02
#: In-plane drift of slice origins above this (mm) is treated as gantry tilt.
TILT_TOLERANCE = 0.02
#: A gap more than this multiple of the usual step is a hole, not irregular spacing.
MAX_GAP_RATIO = 2.5


class GeometryError(ValueError):
    """A stack whose geometry cannot be written safely; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class StackPlan:
    """How to assemble one series: ``order[v, s]`` indexes the input frames."""

    order: np.ndarray
    dropped: tuple[int, ...]  # copies not used ...
    originals: tuple[int, ...]  # ... and, for each, the frame used in its place
    positions: np.ndarray  # distances along the normal of the sorted slice positions (mm)
    in_plane_offsets: np.ndarray  # (n_slices, 2) pixel offsets (col, row) from the first slice
    step: float  # output slice step (mm)
    tilt_deg: float
    resample: bool
    irregular: bool
    issues: tuple[str, ...] = field(default=())
    #: How many of ``dropped`` are repeats told apart by no acquisition value (the rest share identity).
    n_repeats: int = 0

    @property
    def n_volumes(self) -> int:
        return int(self.order.shape[0])

    @property
    def n_slices(self) -> int:
        return int(self.order.shape[1])

    def target_positions(self) -> np.ndarray:
        """Output slice positions along the normal (the input ones when not resampling)."""
        if not self.resample:
            return self.positions.copy()
        start, stop = float(self.positions[0]), float(self.positions[-1])
        n = int(np.floor((stop - start) / self.step + 1e-6)) + 1
        return start + self.step * np.arange(n)


def _first_of_each(indices: Iterable[int], key: Callable[[int], Hashable]
                   ) -> tuple[list[int], list[int], list[int]]:
    """``(first, repeats, their_firsts)``: the first index of each key, and every later one with its first."""
    first_of: dict[Hashable, int] = {}
    first: list[int] = []
    repeats: list[int] = []
    their_firsts: list[int] = []
    for i in indices:
        k = key(i)
        if k in first_of:
            repeats.append(i)
            their_firsts.append(first_of[k])
        else:
            first_of[k] = i
            first.append(i)
    return first, repeats, their_firsts


def _check_uniform(values: np.ndarray, code: str, what: str, tol: float) -> None:
    spread = np.max(np.abs(values - values[0]), axis=0)
    if np.any(spread > tol):
        raise GeometryError(code, f"{what} differs between slices (spread {np.round(spread, 4).tolist()}); "
                                  "the slices do not form one stack - split the series or fix the headers")


def _cluster_positions(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label sorted-by-value positions into clusters within POSITION_TOLERANCE."""
    order = np.argsort(d, kind="stable")
    labels = np.empty(len(d), dtype=np.int64)
    current, anchor = 0, d[order[0]]
    for idx in order:
        if d[idx] - anchor > POSITION_TOLERANCE:
            current += 1
            anchor = d[idx]
        labels[idx] = current
    centres = np.array([d[labels == k].mean() for k in range(current + 1)])
    return labels, centres


def _classify_gaps(positions: np.ndarray) -> tuple[float, bool]:
    """Return (regular step, irregular?) or raise ``missing_slices``."""
    gaps = np.diff(positions)
    step = float((positions[-1] - positions[0]) / (len(positions) - 1))
    expected = positions[0] + step * np.arange(len(positions))
    tol = max(POSITION_TOLERANCE, 0.002 * step)
    if np.max(np.abs(positions - expected)) <= tol:
        return step, False
    usual = float(np.median(gaps))
    ratios = gaps / usual
    nearest = np.round(ratios)
    hole = (ratios > MAX_GAP_RATIO) | ((nearest >= 2) & (np.abs(ratios - nearest) < 0.1))
    if np.any(hole):
        worst = int(np.argmax(ratios))
        raise GeometryError(
            "missing_slices",
            f"gap of {gaps[worst]:.3f} mm between slices {worst} and {worst + 1} where the usual step is "
            f"{usual:.3f} mm: slices are missing; export the complete series")
    # the finest spacing, but never below a quarter of the usual step (near-coincident slices
    # would otherwise explode the volume)
    return float(max(np.min(gaps), usual / 4.0)), True


def plan_stack(iops: np.ndarray, ipps: np.ndarray, pixel_spacings: np.ndarray,
               identity_keys: Sequence[tuple], temporal_keys: Sequence[tuple],
               slice_thickness: float | None = None,
               acquisition_keys: Sequence[tuple] | None = None) -> StackPlan:
    """Plan how to assemble frames into a volume; raise :class:`GeometryError` if unsafe.

    ``identity_keys[i]`` identifies the stored frame (SOPInstanceUID, frame index): equal keys
    are exact duplicates. ``temporal_keys[i]`` orders repeated positions into volumes.
    ``acquisition_keys[i]`` holds the values that may tell repeated positions apart (default:
    the temporal keys); frames at one position with equal keys are copies of one another.
    """
    n = len(identity_keys)
    if n == 0:
        raise GeometryError("empty_series", "no image frames in the series")
    iops = np.asarray(iops, dtype=np.float64).reshape(n, -1)
    ipps = np.asarray(ipps, dtype=np.float64).reshape(n, -1)
    spacing = np.asarray(pixel_spacings, dtype=np.float64).reshape(n, -1)
    if iops.shape[1] != 6 or ipps.shape[1] != 3 or spacing.shape[1] != 2 or not (
            np.all(np.isfinite(iops)) and np.all(np.isfinite(ipps)) and np.all(np.isfinite(spacing))):
        raise GeometryError("missing_geometry", "ImageOrientationPatient, ImagePositionPatient or "
                                                "PixelSpacing is missing or malformed; the image has no "
                                                "trustworthy position in space, so it is not converted")
    if np.any(spacing <= 0):
        raise GeometryError("missing_geometry", f"PixelSpacing {spacing[0].tolist()} is not positive")
    _check_uniform(iops, "mixed_orientation", "ImageOrientationPatient", geometry.ORIENTATION_TOLERANCE)
    _check_uniform(spacing, "mixed_pixel_spacing", "PixelSpacing", 1e-4)

    keep, dropped, originals = _first_of_each(range(n), lambda i: identity_keys[i])
    n_identical = len(dropped)

    iop = iops[0]
    normal = geometry.slice_normal(iop)
    acquisition = temporal_keys if acquisition_keys is None else acquisition_keys
    labels, _ = _cluster_positions(geometry.slice_positions(ipps[np.asarray(keep)], normal))
    label_of = dict(zip(keep, labels.tolist()))
    by_time = sorted(keep, key=lambda i: (temporal_keys[i], i))
    unique, copies, copied = _first_of_each(by_time, lambda i: (label_of[i], acquisition[i]))
    dropped, originals = dropped + copies, originals + copied
    kept = np.asarray(sorted(unique))
    d = geometry.slice_positions(ipps[kept], normal)
    labels, centres = _cluster_positions(d)
    n_pos = len(centres)
    counts = np.bincount(labels, minlength=n_pos)
    if np.any(counts != counts[0]):
        raise GeometryError(
            "inconsistent_repeats",
            f"slice positions repeat unevenly ({int(counts.min())} to {int(counts.max())} frames per "
            "position); volumes are incomplete - export the complete series")
    n_vol = int(counts[0])
    pos_order = np.argsort(centres, kind="stable")
    order = np.empty((n_vol, n_pos), dtype=np.int64)
    for s, p in enumerate(pos_order):
        members = kept[labels == p]
        members = sorted(members, key=lambda i: (temporal_keys[i], i))
        order[:, s] = members
    positions = centres[pos_order]

    first = order[0]
    offsets_mm = geometry.in_plane_offsets(ipps[first], iop, spacing[0]) * spacing[0][::-1]
    tilted = bool(n_pos > 1 and np.max(np.abs(offsets_mm)) > TILT_TOLERANCE)
    if n_vol > 1:
        for v in range(1, n_vol):
            drift = np.abs(ipps[order[v]] - ipps[first]).max()
            if drift > POSITION_TOLERANCE:
                raise GeometryError("moving_positions", "slice positions differ between volumes of the "
                                                        "4D series; convert each volume separately")
    issues: list[str] = []
    if dropped:
        issues.append("duplicate_frames")
    if n_pos == 1:
        step = float(slice_thickness) if slice_thickness and slice_thickness > 0 else \
            geometry.slice_thickness_default(spacing[0])
        irregular = False
    else:
        step, irregular = _classify_gaps(positions)
    if irregular:
        issues.append("irregular_spacing")
    if tilted:
        issues.append("gantry_tilt")
    tilt = geometry.tilt_degrees(ipps[first], iop) if n_pos > 1 else 0.0
    return StackPlan(order=order, dropped=tuple(int(i) for i in dropped),
                     originals=tuple(int(i) for i in originals), n_repeats=len(dropped) - n_identical,
                     positions=positions,
                     in_plane_offsets=geometry.in_plane_offsets(ipps[first], iop, spacing[0]),
                     step=step, tilt_deg=tilt, resample=irregular or tilted, irregular=irregular,
                     issues=tuple(issues))


def output_affine(plan: StackPlan, iop, first_ipp, pixel_spacing) -> np.ndarray:
    """RAS affine of the volume the plan produces (the first sorted slice is the origin)."""
    return geometry.affine_ras(iop, first_ipp, pixel_spacing, plan.step)

"""Group scanned frames into stacks the way a careful reader would, not by SeriesInstanceUID alone.

Within one SeriesInstanceUID, frames are split on: SOP class family (classic, enhanced, legacy converted
enhanced: a scanner may export one acquisition twice, and the copies must never merge), SeriesNumber,
orientation, image size, pixel spacing,
samples per pixel, echo (number and time), image component (magnitude / phase / real /
imaginary / field map), ORIGINAL versus DERIVED, and localizer versus main stack.
If positions then repeat, the frames are a 4D
series when every temporal value (TemporalPositionIdentifier, AcquisitionNumber) covers the
same positions; otherwise they are split on that temporal value (e.g. two acquisitions of a
CT at different table ranges). :func:`group_frames` works on the scan index DataFrame and
returns :class:`StackGroup` objects holding row labels into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medcore.dicom.geometry import slice_normal
from medcore.dicom.values import sop_family

#: IOPs whose direction cosines differ by at most this are the same orientation.
_IOP_TOLERANCE = 1e-3
_POSITION_TOLERANCE = 0.02  # mm

_COMPONENTS = {"P": "phase", "PHASE": "phase", "R": "real", "REAL": "real", "I": "imaginary",
               "IMAGINARY": "imaginary", "FIELD_MAP": "fieldmap", "B0": "fieldmap", "FIELDMAPHZ": "fieldmap"}


@dataclass(frozen=True)
class StackGroup:
    """One candidate output volume: frame rows (index labels of the scan DataFrame) + why split."""

    series_uid: str
    rows: tuple[int, ...]
    split: tuple[tuple[str, Any], ...]  # (reason, value) pairs that separated it from siblings
    localizer: bool = False


def image_component(image_type) -> str:
    """'magnitude', 'phase', 'real', 'imaginary' or 'fieldmap' from the ImageType values."""
    values = [str(v).upper() for v in (image_type or ())][2:]
    for v in values:
        if v in _COMPONENTS:
            return _COMPONENTS[v]
    return "magnitude"


def _scalar(value):
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


_TEMPORAL_FIELDS = ("temporal_position", "acquisition_number", "trigger_time", "acquisition_time",
                    "instance_number", "frame_index")


def temporal_key(item) -> tuple:
    """Sort key ordering repeated positions into volumes (missing values sort first).

    ``item`` is a :class:`~medcore.dicom.frame.Frame` or a mapping with the same field names.
    """
    get = item.get if isinstance(item, dict) else (lambda name: getattr(item, name, None))

    def k(v):
        v = _scalar(v)
        return (0, 0) if v is None else (1, v)
    return tuple(k(get(name)) for name in _TEMPORAL_FIELDS)


class _Canonical:
    """Maps near-equal numeric tuples to one representative (no rounding-boundary splits)."""

    def __init__(self, tol: float):
        self.tol = tol
        self.reps: list[tuple] = []

    def __call__(self, value) -> tuple | None:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        try:
            vec = tuple(float(x) for x in (value if isinstance(value, (tuple, list, np.ndarray)) else [value]))
        except (TypeError, ValueError):
            return None
        for rep in self.reps:
            if len(rep) == len(vec) and max(abs(a - b) for a, b in zip(rep, vec)) <= self.tol:
                return rep
        self.reps.append(vec)
        return vec


def _split_key(row, canon: dict[str, _Canonical]) -> tuple:
    return (
        ("sop_family", sop_family(str(row["sop_class_uid"] or ""))),
        ("series_number", _scalar(row["series_number"])),
        ("orientation", canon["iop"](row["iop"])),
        ("size", (int(row["rows"]), int(row["cols"]))),
        ("pixel_spacing", canon["spacing"](row["pixel_spacing"])),
        ("samples", int(row["samples_per_pixel"])),
        ("echo", (_scalar(row["echo_number"]), canon["echo"](_scalar(row["echo_time"])))),
        ("component", image_component(row["image_type"])),
        ("derived", _is_derived(row["image_type"])),
        ("localizer", bool(row["is_localizer"])),
    )


def _is_derived(image_type) -> bool:
    """ImageType value 1 is DERIVED (reformat, MIP, post-processing) rather than ORIGINAL."""
    return bool(image_type) and str(image_type[0]).upper() == "DERIVED"


def _temporal_value(row):
    tp, an = _scalar(row["temporal_position"]), _scalar(row["acquisition_number"])
    return (tp, an)


def _position_ids(rows: list[dict]) -> list[int] | None:
    """Slice-position cluster id of each row (distance along the normal, within tolerance)."""
    try:
        normal = slice_normal(rows[0]["iop"])
        d = np.array([np.dot(np.asarray(r["ipp"], dtype=float), normal) for r in rows])
    except (TypeError, ValueError):
        return None
    if not np.all(np.isfinite(d)):
        return None
    order = np.argsort(d, kind="stable")
    ids = np.empty(len(d), dtype=np.int64)
    current, anchor = 0, d[order[0]]
    for idx in order:
        if d[idx] - anchor > _POSITION_TOLERANCE:
            current, anchor = current + 1, d[idx]
        ids[idx] = current
    return ids.tolist()


def _split_temporal(records: dict[int, dict], labels: list[int]) -> list[tuple[list[int], object]]:
    """Keep a 4D set together; split acquisitions that cover different positions."""
    pos = _position_ids([records[i] for i in labels])
    if pos is None or len(set(pos)) == len(pos):
        return [(labels, None)]
    tvals = [_temporal_value(records[i]) for i in labels]
    distinct = list(dict.fromkeys(tvals))
    if len(distinct) <= 1:
        return [(labels, None)]
    position_sets = {t: frozenset(p for p, tv in zip(pos, tvals) if tv == t) for t in distinct}
    if len(set(position_sets.values())) == 1:
        return [(labels, None)]
    return [([i for i, tv in zip(labels, tvals) if tv == t], t) for t in sorted(distinct, key=str)]


_COLUMNS = ("series_uid", "sop_class_uid", "series_number", "iop", "rows", "cols", "pixel_spacing", "samples_per_pixel",
            "echo_number", "echo_time", "image_type", "is_localizer", "ipp", "temporal_position",
            "acquisition_number")


def group_frames(index: pd.DataFrame) -> list[StackGroup]:
    """Split the frames of the scan index into candidate stacks (one output volume each)."""
    groups: list[StackGroup] = []
    if index.empty:
        return groups
    columns = {c: index[c].tolist() for c in _COLUMNS}
    labels_all = index.index.tolist()
    records = {lab: {c: columns[c][k] for c in _COLUMNS} for k, lab in enumerate(labels_all)}
    by_series: dict[str, list[int]] = {}
    for lab in labels_all:
        by_series.setdefault(str(records[lab]["series_uid"]), []).append(lab)
    for series_uid in sorted(by_series):
        members = by_series[series_uid]
        keyed: dict[tuple, list[int]] = {}
        canon = {"iop": _Canonical(_IOP_TOLERANCE), "spacing": _Canonical(1e-4), "echo": _Canonical(1e-3)}
        for lab in members:
            keyed.setdefault(_split_key(records[lab], canon), []).append(lab)
        distinct = list(keyed)
        varying = [i for i in range(len(distinct[0])) if len({d[i] for d in distinct}) > 1]
        for key, labels in keyed.items():
            split = tuple(key[i] for i in varying)
            for part, tval in _split_temporal(records, labels):
                extra = (("acquisition", tval),) if tval is not None else ()
                groups.append(StackGroup(series_uid=series_uid, rows=tuple(int(x) for x in part),
                                         split=split + extra, localizer=dict(key)["localizer"]))
    return groups

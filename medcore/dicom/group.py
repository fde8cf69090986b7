"""Group scanned frames into stacks the way a careful reader would, not by SeriesInstanceUID alone.

Within one SeriesInstanceUID, frames are split on: SeriesNumber, orientation, image size, pixel spacing,
samples per pixel, echo (number and time), image component (magnitude / phase / real /
imaginary), and localizer versus main stack. If positions then repeat, the frames are a 4D
series when every temporal value (TemporalPositionIdentifier, AcquisitionNumber) covers the
same positions; otherwise they are split on that temporal value (e.g. two acquisitions of a
CT at different table ranges). :func:`group_frames` works on the scan index DataFrame and
returns :class:`StackGroup` objects holding row labels into it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: IOP values are rounded to this many decimals to decide "same orientation".
_IOP_DECIMALS = 3
_POSITION_DECIMALS = 2

_COMPONENTS = {"P": "phase", "PHASE": "phase", "R": "real", "REAL": "real", "I": "imaginary",
               "IMAGINARY": "imaginary", "FIELD_MAP": "fieldmap", "B0": "fieldmap", "FIELDMAPHZ": "fieldmap"}


@dataclass(frozen=True)
class StackGroup:
    """One candidate output volume: frame rows (index labels of the scan DataFrame) + why split."""

    series_uid: str
    rows: tuple[int, ...]
    split: tuple[tuple[str, object], ...]  # (reason, value) pairs that separated it from siblings
    localizer: bool = False


def image_component(image_type) -> str:
    """'magnitude', 'phase', 'real', 'imaginary' or 'fieldmap' from the ImageType values."""
    values = [str(v).upper() for v in (image_type or ())][2:]
    for v in values:
        if v in _COMPONENTS:
            return _COMPONENTS[v]
    return "magnitude"


def _round_tuple(value, decimals: int):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    try:
        return tuple(round(float(x), decimals) + 0.0 for x in value)
    except TypeError:
        return None


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

    ``item`` is a :class:`~medcore.dicom.frames.Frame` or a mapping with the same field names.
    """
    get = item.get if isinstance(item, dict) else (lambda name: getattr(item, name, None))

    def k(v):
        v = _scalar(v)
        return (0, 0) if v is None else (1, v)
    return tuple(k(get(name)) for name in _TEMPORAL_FIELDS)


def _split_key(row) -> tuple:
    return (
        ("series_number", _scalar(row["series_number"])),
        ("orientation", _round_tuple(row["iop"], _IOP_DECIMALS)),
        ("size", (int(row["rows"]), int(row["cols"]))),
        ("pixel_spacing", _round_tuple(row["pixel_spacing"], 4)),
        ("samples", int(row["samples_per_pixel"])),
        ("echo", (_scalar(row["echo_number"]), _round_tuple([row["echo_time"]], 3)
                  if _scalar(row["echo_time"]) is not None else None)),
        ("component", image_component(row["image_type"])),
        ("localizer", bool(row["is_localizer"])),
    )


def _temporal_value(row):
    tp, an = _scalar(row["temporal_position"]), _scalar(row["acquisition_number"])
    return (tp, an)


def _split_temporal(records: dict[int, dict], labels: list[int]) -> list[tuple[list[int], object]]:
    """Keep a 4D set together; split acquisitions that cover different positions."""
    pos = [_round_tuple(records[i]["ipp"], _POSITION_DECIMALS) for i in labels]
    if any(p is None for p in pos) or len(set(pos)) == len(pos):
        return [(labels, None)]
    tvals = [_temporal_value(records[i]) for i in labels]
    distinct = list(dict.fromkeys(tvals))
    if len(distinct) <= 1:
        return [(labels, None)]
    position_sets = {t: frozenset(p for p, tv in zip(pos, tvals) if tv == t) for t in distinct}
    if len(set(position_sets.values())) == 1:
        return [(labels, None)]
    return [([i for i, tv in zip(labels, tvals) if tv == t], t) for t in sorted(distinct, key=str)]


_COLUMNS = ("series_uid", "series_number", "iop", "rows", "cols", "pixel_spacing", "samples_per_pixel",
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
        for lab in members:
            keyed.setdefault(_split_key(records[lab]), []).append(lab)
        distinct = list(keyed)
        varying = [i for i in range(len(distinct[0])) if len({d[i] for d in distinct}) > 1]
        for key, labels in keyed.items():
            split = tuple(key[i] for i in varying)
            for part, tval in _split_temporal(records, labels):
                extra = (("acquisition", tval),) if tval is not None else ()
                groups.append(StackGroup(series_uid=series_uid, rows=tuple(int(x) for x in part),
                                         split=split + extra, localizer=dict(key)["localizer"]))
    return groups

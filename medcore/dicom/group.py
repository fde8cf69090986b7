"""Group scanned frames into stacks the way a careful reader would, not by SeriesInstanceUID alone.

Within one SeriesInstanceUID, frames are split on: orientation, image size, pixel spacing,
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
               "IMAGINARY": "imaginary"}


@dataclass(frozen=True)
class StackGroup:
    """One candidate output volume: frame rows (index labels of the scan DataFrame) + why split."""

    series_uid: str
    rows: tuple[int, ...]
    split: tuple[tuple[str, object], ...]  # (reason, value) pairs that separated it from siblings
    localizer: bool = False


def image_component(image_type) -> str:
    """'magnitude', 'phase', 'real' or 'imaginary' from the ImageType values."""
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


def temporal_key(row) -> tuple:
    """Sort key ordering repeated positions into volumes (missing values sort first)."""
    def k(v):
        v = _scalar(v)
        return (0, 0) if v is None else (1, v)
    return (k(row.get("temporal_position")), k(row.get("acquisition_number")),
            k(row.get("trigger_time")), k(row.get("acquisition_time")),
            k(row.get("instance_number")), k(row.get("frame_index")))


def _split_key(row) -> tuple:
    return (
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


def _split_temporal(df: pd.DataFrame, labels: list) -> list[tuple[list, object]]:
    """Keep a 4D set together; split acquisitions that cover different positions."""
    sub = df.loc[labels]
    pos = sub["ipp"].map(lambda v: _round_tuple(v, _POSITION_DECIMALS))
    if pos.isna().any() or not pos.duplicated().any():
        return [(labels, None)]
    tvals = sub.apply(_temporal_value, axis=1)
    if tvals.nunique(dropna=False) <= 1:
        return [(labels, None)]
    position_sets = {t: frozenset(pos[tvals == t]) for t in tvals.unique()}
    if len(set(position_sets.values())) == 1:
        return [(labels, None)]
    return [(list(sub.index[tvals == t]), t) for t in sorted(position_sets, key=str)]


def group_frames(index: pd.DataFrame) -> list[StackGroup]:
    """Split the frames of the scan index into candidate stacks (one output volume each)."""
    groups: list[StackGroup] = []
    if index.empty:
        return groups
    for series_uid, series in index.groupby("series_uid", sort=True):
        keys = series.apply(_split_key, axis=1)
        distinct = list(dict.fromkeys(keys))
        varying = [i for i in range(len(distinct[0])) if len({d[i] for d in distinct}) > 1]
        for key in distinct:
            labels = list(series.index[keys.map(lambda k, key=key: k == key)])
            split = tuple(key[i] for i in varying)
            for part, tval in _split_temporal(index, labels):
                extra = (("acquisition", tval),) if tval is not None else ()
                groups.append(StackGroup(series_uid=str(series_uid), rows=tuple(int(x) for x in part),
                                         split=split + extra, localizer=dict(key)["localizer"]))
    return groups

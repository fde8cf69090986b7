"""Per-case evaluation of label maps: every metric for every class, as plain JSON-able floats."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medcore.metrics.overlap import confusion_counts, rate_from_counts
from medcore.metrics.surface import surface_distances

METRICS = ("dice", "iou", "sensitivity", "specificity", "precision", "hausdorff", "hausdorff_percentile", "assd",
           "surface_dice")


def _labels_array(x: Any, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim >= 3 and a.shape[0] == 1:  # channel-first (1, *spatial)
        a = a[0]
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_)):
        if a.size and not np.all(a == np.round(a)):
            raise ValueError(f"{name} must be an integer label map, got non-integer values ({a.dtype})")
        a = a.astype(np.int64)
    return a


def case_metrics(pred: Any, ref: Any, spacing: Sequence[float] | None = None,
                 labels: Mapping[str, int] | Sequence[int] = (1,), tolerance: float = 1.0,
                 percentile: float = 95.0) -> dict[str, dict[str, float]]:
    """``{class name: {metric: value}}`` for two label maps of one case (``(*spatial)`` or ``(1, *spatial)``).

    ``labels`` maps class names to label values (a list of values uses ``str(value)`` as the name);
    background (0) is only evaluated when listed. Metrics are those of ``METRICS``, in mm where
    they are distances, with the empty-mask conventions of ``overlap`` and ``surface``.
    """
    p, r = _labels_array(pred, "pred"), _labels_array(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref label maps differ in shape: {p.shape} vs {r.shape}; resample the "
                         "prediction onto the reference grid first")
    named = dict(labels) if isinstance(labels, Mapping) else {str(v): int(v) for v in labels}
    out: dict[str, dict[str, float]] = {}
    for name, value in named.items():
        pm, rm = p == value, r == value
        counts = confusion_counts(torch.from_numpy(pm)[None, None], torch.from_numpy(rm)[None, None])
        row = {rate: float(rate_from_counts(counts, rate)) for rate in ("dice", "iou", "sensitivity",
                                                                        "specificity", "precision")}
        if not rm.any():  # an empty reference: dice/iou are undefined (nan), as in dice(ignore_empty=True)
            row["dice"] = row["iou"] = float("nan")
        d = surface_distances(pm, rm, spacing)
        row.update(hausdorff=d.hausdorff(), hausdorff_percentile=d.hausdorff(percentile), assd=d.average(),
                   surface_dice=d.surface_dice(tolerance))
        out[name] = row
    return out

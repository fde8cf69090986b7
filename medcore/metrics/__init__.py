"""Segmentation metrics in millimetres, per case and class, with batch and DDP accumulation.

Overlap: ``dice``, ``iou``, ``sensitivity``, ``specificity``, ``precision`` (``confusion_counts``).
Surface: ``hausdorff_distance`` (max or percentile), ``average_surface_distance`` (ASSD),
``surface_dice`` (NSD at a tolerance in mm), or all at once with ``surface_metrics``.
``case_metrics`` evaluates two label maps of one case: every metric for every class.
Inputs are one-hot ``(B, C, *spatial)`` masks; ``one_hot`` converts label maps. Conventions for
empty masks are documented in ``overlap`` and ``surface`` and match MONAI 1.6.
"""

from medcore.metrics.accumulate import MetricAccumulator, all_gather_rows, all_reduce_sum, nanmean_rows
from medcore.metrics.evaluate import METRICS, case_metrics
from medcore.metrics.overlap import (
                                     confusion_counts,
                                     dice,
                                     iou,
                                     one_hot,
                                     precision,
                                     rate_from_counts,
                                     sensitivity,
                                     specificity,
)
from medcore.metrics.surface import (
                                     SurfaceDistances,
                                     average_surface_distance,
                                     hausdorff_distance,
                                     mask_surface,
                                     surface_dice,
                                     surface_distances,
                                     surface_metrics,
)

__all__ = [
    "METRICS",
    "case_metrics",
    "MetricAccumulator",
    "all_gather_rows",
    "all_reduce_sum",
    "nanmean_rows",
    "confusion_counts",
    "dice",
    "iou",
    "one_hot",
    "precision",
    "rate_from_counts",
    "sensitivity",
    "specificity",
    "SurfaceDistances",
    "average_surface_distance",
    "hausdorff_distance",
    "mask_surface",
    "surface_dice",
    "surface_distances",
    "surface_metrics",
]

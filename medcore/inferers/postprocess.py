"""Post-processing decided from validation, as nnU-Net does it: for each class, keep only its largest
connected component if, and only if, that raises the class's mean validation Dice.

The decision is a pure function of the two Dice tables; the result is a list of transform configs
that the model directory stores (``postprocessing``) and ``predict_volume`` applies to every label map,
so ``medcore predict`` and the MLflow model give what validation chose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medcore.io import Image
from medcore.transforms import KeepLargestConnectedComponent, from_config


def largest_component_helps(dice: Mapping[str, float], dice_largest: Mapping[str, float]) -> list[str]:
    """The classes (keys of ``dice``) whose validation Dice is strictly higher with only the largest
    connected component kept; a class without a finite Dice either way is left alone."""
    return [name for name, plain in dice.items()
            if math.isfinite(plain) and math.isfinite(dice_largest.get(name, math.nan))
            and dice_largest[name] > plain]


def postprocessing_configs(labels: Mapping[str, int], keep_largest: Sequence[str]) -> list[dict[str, Any]]:
    """Transform configs for the model directory: one ``KeepLargestConnectedComponent`` over the
    labels of ``keep_largest`` (class names of ``labels``), or nothing."""
    unknown = sorted(set(keep_largest) - set(labels))
    if unknown:
        raise ValueError(f"post-processing names class(es) {unknown} that are not among the labels {sorted(labels)}")
    if not keep_largest:
        return []
    values = tuple(sorted(int(labels[name]) for name in keep_largest))
    return [KeepLargestConnectedComponent(applied_labels=values, independent=True).config()]


def keep_largest_components(label_map: torch.Tensor) -> torch.Tensor:
    """``(*spatial)`` integer labels with every nonzero label reduced to its largest component."""
    return KeepLargestConnectedComponent()(Image(label_map[None])).data[0]


def apply_postprocessing(labels: Image, configs: Sequence[dict[str, Any]]) -> Image:
    """Run the model's post-processing configs on a label map; the ops are not kept (the output is
    a fresh label volume on the input's grid)."""
    if not configs:
        return labels
    out = from_config(list(configs))(labels)
    return labels.replace(data=out.data, ops=list(labels.ops))

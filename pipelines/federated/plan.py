"""One plan for a federation from the sites' fingerprints, through the planner a single site uses.

Sites must agree on modality and class names; the agreement is the signature most sites share (ties
go to the earliest site by name), and every other site is refused by name with the reason. The
accepted fingerprints are pooled (case-weighted medians and intensity statistics, shape range,
labels present) and planned by ``medcore.engine.presets.make_plan``. Pure functions: no Flower here.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

PRESET_BY_MODALITY = {"CT": "synthetic_ct", "MR": "hippocampus", "MRI": "hippocampus"}


@dataclass(frozen=True)
class FederatedPlan:
    """The plan, the sites it covers, and the refused sites with their reasons."""

    plan: dict
    accepted: tuple[str, ...]
    refused: dict[str, str]


def plan_key(plan: dict) -> str:
    """A short content hash of ``plan``: checkpoints and a site's optimiser state are reused only under it."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def signature(fp: dict) -> tuple[str, tuple[tuple[str, int], ...]]:
    return fp["modality"].upper(), tuple(sorted((str(k), int(v)) for k, v in fp["labels"].items()))


def refusals(fingerprints: dict[str, dict]) -> dict[str, str]:
    """``{site: reason}`` for each site whose modality or class names differ from the federation's."""
    if not fingerprints:
        return {}
    names = sorted(fingerprints)
    counts = Counter(signature(fingerprints[n]) for n in names)
    best = max(counts.values())
    modality, labels = next(signature(fingerprints[n]) for n in names if counts[signature(fingerprints[n])] == best)
    out = {}
    for name in names:
        mod, lab = signature(fingerprints[name])
        if mod != modality:
            out[name] = f"modality {mod} differs from the federation's {modality}"
        elif lab != labels:
            out[name] = f"class names {dict(lab)} differ from the federation's {dict(labels)}"
    return out


def _weighted_median(values: list[list[float]], weights: list[int]) -> list[float]:
    """Per axis: the value at which half the cases (``weights``) lie below."""
    arr, w = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
    out = []
    for axis in range(arr.shape[1]):
        order = np.argsort(arr[:, axis])
        cum = np.cumsum(w[order])
        out.append(float(arr[order, axis][np.searchsorted(cum, cum[-1] / 2.0)]))
    return out


def pool_fingerprints(fps: list[dict]) -> dict:
    """One fingerprint with the fields ``make_plan`` reads, pooled over sites (weighted by case count)."""
    n = [int(fp["num_cases"]) for fp in fps]
    total = float(sum(n))
    fi = [fp["foreground_intensity"] for fp in fps]
    mean = sum(w * f["mean"] for w, f in zip(n, fi)) / total
    var = sum(w * (f["std"] ** 2 + (f["mean"] - mean) ** 2) for w, f in zip(n, fi)) / total
    spacing = _weighted_median([fp["median_spacing"] for fp in fps], n)
    spacings = np.asarray([fp["median_spacing"] for fp in fps])
    return {
        "num_cases": int(total),
        "median_shape": _weighted_median([fp["median_shape"] for fp in fps], n),
        "min_shape": [int(v) for v in np.min([fp["min_shape"] for fp in fps], axis=0)],
        "max_shape": [int(v) for v in np.max([fp["max_shape"] for fp in fps], axis=0)],
        "median_spacing": spacing,
        "spacing_varies": any(fp["spacing_varies"] for fp in fps)
        or bool(np.ptp(spacings, axis=0).max() > 1e-3 * max(1e-6, spacings.min())),
        "foreground_intensity": {"mean": mean, "std": float(np.sqrt(var)),
                                 "p00_5": min(f["p00_5"] for f in fi), "p99_5": max(f["p99_5"] for f in fi)},
        "foreground_max_ratio": max(fp["foreground_max_ratio"] for fp in fps),
        "labels_present": sorted({int(v) for fp in fps for v in fp["labels_present"]}),
    }


def federated_plan(fingerprints: dict[str, dict], overrides: dict | None = None,
                   device: str = "cpu") -> FederatedPlan:
    """Refuse disagreeing sites, pool the others' fingerprints and plan them as one dataset."""
    from medcore.engine.presets import make_plan

    refused = refusals(fingerprints)
    accepted = tuple(sorted(n for n in fingerprints if n not in refused))
    if not accepted:
        raise ValueError("no site can join the federation: " + "; ".join(f"{k}: {v}" for k, v in refused.items()))
    first = fingerprints[accepted[0]]
    modality = first["modality"].upper()
    if modality not in PRESET_BY_MODALITY:
        raise ValueError(f"sites {list(accepted)}: modality {modality} has no planner preset; "
                         f"known: {sorted(PRESET_BY_MODALITY)}")
    pooled = pool_fingerprints([fingerprints[n] for n in accepted])
    plan = make_plan(pooled, PRESET_BY_MODALITY[modality], device,
                     {**(overrides or {}), "labels": dict(first["labels"])})
    plan["reasons"].append(f"federated: one plan for sites {list(accepted)} from their pooled fingerprints "
                           f"({pooled['num_cases']} training cases); refused: {refused or 'none'}")
    return FederatedPlan(plan, accepted, refused)

"""Presets: find a dataset, fingerprint it, and plan the training from its properties (nnU-Net's spirit).

``fingerprint(cases)`` measures median shape and spacing, intensity statistics inside the labelled
foreground and the labels present. ``make_plan(fingerprint, preset)`` derives the target spacing,
patch size, normalisation, network (DynUNet with kernels/strides from spacing, or UNet), loss,
optimiser and schedule, and lists the reason for each choice. The plan is plain JSON and is saved in
the run directory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

PRESETS: dict[str, dict[str, Any]] = {
    "hippocampus": {
        "description": "MSD Task04 hippocampus (T1 MRI crops, 1 mm, labels anterior/posterior)",
        "data_dir": "hippocampus",  # relative to $MEDCORE_TEST_DATA (default ../shared/data)
        "modality": "MRI",
        "labels": {"background": 0, "anterior": 1, "posterior": 2},
        "network": "dynunet",
    },
    "synthetic_ct": {
        "description": "synthetic CT phantoms (anisotropic 1.5x1.5x3 mm, HU; labels organ/lesion), generated on demand",
        "data_dir": None,  # generated into the run directory unless given
        "modality": "CT",
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "network": "dynunet",
        "num_cases": 24,
    },
    "datalist": {
        "description": "any labelled dataset given as a datalist: modality and class names come from its "
                       "dataset.json (the workflow's preset)",
        "data_dir": None,
        "modality": None,  # from the datalist's "modality", or the plan override "modality"
        "labels": None,  # from the datalist's "labels", or the plan override "labels"
        "network": "dynunet",
    },
}


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dict(PRESETS[name])


def default_data_root() -> Path:
    """``$MEDCORE_TEST_DATA`` or ``../shared/data`` beside the project root."""
    root = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("MEDCORE_TEST_DATA", root.parent / "shared" / "data")).resolve()


def find_msd_cases(data_dir: str | Path) -> list[dict[str, str]]:
    """``imagesTr/X.nii.gz`` + ``labelsTr/X.nii.gz`` pairs of an MSD-layout folder, sorted by case id."""
    data_dir = Path(data_dir)
    images, labels = data_dir / "imagesTr", data_dir / "labelsTr"
    if not images.is_dir() or not labels.is_dir():
        raise FileNotFoundError(f"{data_dir}: expected the MSD layout with imagesTr/ and labelsTr/ folders; "
                                "point data_dir at the dataset's root folder")
    cases = []
    for image in sorted(images.glob("*.nii*")):
        if image.name.startswith("."):
            continue  # macOS resource forks ship in some MSD archives
        label = labels / image.name
        if label.is_file():
            cases.append({"id": image.name.split(".nii")[0], "image": str(image), "label": str(label)})
    if not cases:
        raise FileNotFoundError(f"{data_dir}: no image/label pairs with matching names in imagesTr/ and labelsTr/")
    return cases


def split_cases(cases: list[dict], fraction: float = 0.2, seed: int = 0, folds: int | None = None,
                fold: int = 0) -> tuple[list[dict], list[dict]]:
    """A fixed hold-out (``fraction``) or ``folds``-fold split; deterministic for a given seed."""
    order = np.random.default_rng(seed).permutation(len(cases))
    if folds:
        if not 0 <= fold < folds:
            raise ValueError(f"split: fold {fold} out of range for {folds} folds")
        val_idx = set(order[fold::folds].tolist())
    else:
        if not 0 < fraction < 1:
            raise ValueError(f"split: validation fraction must lie in (0, 1), got {fraction}")
        val_idx = set(order[:max(1, int(round(fraction * len(cases))))].tolist())
    train = [c for i, c in enumerate(cases) if i not in val_idx]
    val = [c for i, c in enumerate(cases) if i in val_idx]
    if not train:
        raise ValueError(f"split: no training cases left out of {len(cases)}; lower the validation fraction")
    return train, val


def fingerprint(cases: list[dict], max_intensity_cases: int = 64, seed: int = 0) -> dict[str, Any]:
    """Median shape and spacing (all cases, from headers), foreground intensity statistics and labels
    (from up to ``max_intensity_cases`` cases)."""
    shapes, spacings, readable = [], [], []
    for case in cases:
        try:  # an unreadable case is skipped here and reported by the preprocessing step
            header: Any = nib.load(case["image"]).header
        except Exception:  # nibabel raises many types for damaged files
            continue
        shapes.append([int(v) for v in header.get_data_shape()[:3]])
        spacings.append([float(v) for v in header.get_zooms()[:3]])
        readable.append(case)
    if not readable:
        raise ValueError(f"none of the {len(cases)} cases can be read (first: {cases[0]['image'] if cases else '-'})")
    cases = readable
    pick = np.random.default_rng(seed).permutation(len(cases))[:max_intensity_cases]
    samples, labels = [], set()
    for i in sorted(pick.tolist()):
        try:
            image_file: Any = nib.load(cases[i]["image"])
            label_file: Any = nib.load(cases[i]["label"])
            image = np.asarray(image_file.dataobj, dtype=np.float32)
            label = np.rint(np.asarray(label_file.dataobj)).astype(np.int64)
        except Exception:  # damaged data: skipped here, reported by the preprocessing step
            continue
        if image.shape != label.shape:
            continue
        labels.update(np.unique(label).tolist())
        fg = image[label > 0]
        if fg.size:
            samples.append(np.random.default_rng(i).choice(fg, size=min(fg.size, 2000), replace=False))
    values = np.concatenate(samples) if samples else np.zeros(1, np.float32)
    per_case_max = [float(s.max()) for s in samples] or [0.0]
    return {
        "num_cases": len(cases),
        "median_shape": [float(v) for v in np.median(np.asarray(shapes), axis=0)],
        "min_shape": [int(v) for v in np.min(np.asarray(shapes), axis=0)],
        "max_shape": [int(v) for v in np.max(np.asarray(shapes), axis=0)],
        "median_spacing": [float(v) for v in np.median(np.asarray(spacings), axis=0)],
        "spacing_varies": bool(np.ptp(np.asarray(spacings), axis=0).max() > 1e-3 * max(1e-6, np.min(spacings))),
        "foreground_intensity": {"mean": float(values.mean()), "std": float(values.std()),
                                 "p00_5": float(np.percentile(values, 0.5)),
                                 "p99_5": float(np.percentile(values, 99.5))},
        "foreground_max_ratio": float(max(per_case_max) / max(1e-6, min(per_case_max))),
        "labels_present": sorted(int(v) for v in labels),
    }


#: Training augmentation: nnU-Net's default set, each as ``{"prob": p, <range>: ...}``, with nnU-Net's
#: ranges. All of them are in the training pipeline; the probabilities say which fire by default. They
#: were decided by measurement on another split than the benchmark's (``benchmarks/RESULTS.md``,
#: "Augmentation tuning"): under a budget of minutes on a CPU, mirroring with brightness and contrast
#: scored best, nnU-Net's own probabilities (made for 1,000 epochs) worst, so the spatial and the other
#: intensity transforms are off (prob 0). ``make_plan`` merges ``overrides["augmentation"]`` into these per
#: entry, so ``{"rotation": {"prob": 0.2}}`` turns one back on for a longer (GPU) budget.
AUGMENTATION: dict[str, dict[str, Any]] = {
    "rotation": {"prob": 0.0, "degrees": 30.0},            # about every axis, within +-degrees (nnU-Net: 0.2)
    "scaling": {"prob": 0.0, "range": [0.7, 1.4]},         # zoom factor of the sampling grid (nnU-Net: 0.2)
    "mirror": {"prob": 0.5},                               # each axis independently
    "noise": {"prob": 0.0, "std": 0.1},                    # Gaussian, std drawn from [0, std] (nnU-Net: 0.1)
    "blur": {"prob": 0.0, "sigma": [0.5, 1.0]},            # Gaussian, sigma per axis, voxels (nnU-Net: 0.2)
    "brightness": {"prob": 0.15, "range": [0.75, 1.25]},   # multiplicative
    "contrast": {"prob": 0.15, "range": [0.75, 1.25]},     # about the mean, range preserved
    "low_resolution": {"prob": 0.0, "zoom": [0.5, 1.0]},   # nearest down, trilinear up (nnU-Net: 0.25)
    "gamma": {"prob": 0.0, "range": [0.7, 1.5]},           # mean and std retained (nnU-Net: 0.3)
    "gamma_inverted": {"prob": 0.0, "range": [0.7, 1.5]},  # gamma of the negated image (nnU-Net: 0.1)
}


def augmentation_plan(overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """``AUGMENTATION`` with ``overrides`` merged in per entry; unknown entries or fields raise."""
    plan = {name: dict(values) for name, values in AUGMENTATION.items()}
    for name, values in (overrides or {}).items():
        if name not in plan:
            raise ValueError(f"plan augmentation has no entry {name!r}; known: {sorted(plan)}")
        unknown = sorted(set(values) - set(plan[name]))
        if unknown:
            raise ValueError(f"plan augmentation {name!r} has unknown field(s) {unknown}; "
                             f"allowed: {sorted(plan[name])}")
        plan[name].update(values)
    return plan


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def make_plan(fp: dict, preset_name: str, device: str = "cpu", overrides: dict | None = None) -> dict[str, Any]:
    """Derive the training plan from the fingerprint ``fp``; ``overrides`` replace top-level fields."""
    from medcore.networks.dynunet import dynunet_kernels_strides

    info = preset(preset_name)
    overrides = dict(overrides or {})
    reasons: list[str] = []
    spacing = [float(v) for v in overrides.get("target_spacing", fp["median_spacing"])]
    reasons.append(f"target spacing {spacing} mm = median spacing of the cases (nnU-Net default)")
    # shape at target spacing, then the patch: cover the median case (up to a voxel budget), divisible by 8
    median_at_target = [n * s / t for n, s, t in zip(fp["median_shape"], fp["median_spacing"], spacing)]
    budget = 128 ** 3 if device.startswith("cuda") else 64 ** 3
    patch = [max(16, _round_up(v, 8)) for v in median_at_target]
    while np.prod(patch) > budget:
        axis = int(np.argmax([p * s for p, s in zip(patch, spacing)]))  # shrink the physically longest axis
        patch[axis] = max(16, patch[axis] - 8)
    patch = [int(v) for v in overrides.get("patch_size", patch)]
    reasons.append(f"patch {patch} covers the median shape {[round(v) for v in median_at_target]} at target spacing, "
                   f"rounded up to multiples of 8 within {budget} voxels")
    modality, labels_given = overrides.get("modality", info["modality"]), overrides.get("labels", info["labels"])
    if modality is None or labels_given is None:
        raise ValueError(f"preset {preset_name!r} takes the modality and class names from the data: give a "
                         "datalist whose dataset.json has 'modality' and 'labels', or set the plan overrides "
                         "'modality' and 'labels'")
    labels = {str(k): int(v) for k, v in labels_given.items()}
    num_classes = max(max(labels.values()), max(fp["labels_present"] or [0])) + 1
    if modality == "CT":
        fi = fp["foreground_intensity"]
        normalization = {"kind": "ct", "clip": [fi["p00_5"], fi["p99_5"]], "mean": fi["mean"],
                         "std": max(fi["std"], 1e-3)}
        reasons.append("CT: clip to the foreground 0.5-99.5 percentiles, z-score with the foreground mean/std "
                       "(one global scheme, since Hounsfield units are calibrated)")
    else:
        normalization = {"kind": "zscore"}
        reasons.append(f"{modality}: per-case z-score (intensity maxima differ "
                       f"{fp['foreground_max_ratio']:.0f}x between cases, so no global scale applies)")
    resample = bool(fp["spacing_varies"]) or any(abs(a - b) > 1e-3 * b for a, b in zip(fp["median_spacing"], spacing))
    reasons.append("resample every case to the target spacing" if resample else
                   "all cases already have the target spacing: no resampling (no interpolation of labels)")
    kernels, strides = dynunet_kernels_strides(spacing, patch, min_size=8)
    f0 = int(overrides.get("base_filters", 32 if device.startswith("cuda") else 8))
    reasons.append(f"{len(strides) - 1} downsamplings from spacing and patch (halve while >= 8 voxels and not "
                   f"coarser than 2x the finest axis); {f0} base filters ({'GPU' if f0 >= 32 else 'CPU budget'})")
    if info["network"] == "dynunet":
        network = {"name": "dynunet", "spatial_dims": 3, "in_channels": 1, "out_channels": num_classes,
                   "kernel_size": kernels, "strides": strides,
                   "filters": [min(f0 * 2 ** i, 320) for i in range(len(kernels))],
                   "deep_supervision": True, "deep_supr_num": max(1, min(2, len(kernels) - 2))}
    else:
        network = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": num_classes,
                   "channels": [f0 * 2 ** i for i in range(len(strides))], "strides": [2] * (len(strides) - 1)}
    network = overrides.get("network", network)
    loss = {"name": "deep_supervision", "loss": {"name": "dice_ce", "to_onehot_y": True, "softmax": True,
                                                 "batch": True, "include_background": False}}
    plan = {
        "preset": preset_name, "modality": modality, "labels": labels, "num_classes": num_classes,
        "target_spacing": spacing, "resample": resample, "patch_size": patch, "normalization": normalization,
        "network": network, "loss": overrides.get("loss", loss),
        "batch_size": int(overrides.get("batch_size", 2)),
        "foreground_oversample": float(overrides.get("foreground_oversample", 0.33)),
        "augmentation": augmentation_plan(overrides.get("augmentation")),
        "optimizer": overrides.get("optimizer", {"name": "adamw", "lr": 3e-3, "weight_decay": 3e-5}),
        "schedule": overrides.get("schedule", {"kind": "poly", "warmup_steps": 50, "power": 0.9}),
        "inference": {"roi_size": patch, "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 2, "tta": True},
        "fingerprint": fp,
    }
    reasons.append(
        "AdamW 3e-3 with 50 warm-up steps and poly decay: converges within a short (minutes) budget; "
        "DiceCE (batch Dice over the foreground classes) with deep supervision weights 1, 1/2, 1/4; "
        "1/3 of patches centred on foreground"
    )
    reasons.append("augmentation: nnU-Net's default set and ranges (rotation and scaling in the crop's one "
                   "resample, mirroring, noise, blur, brightness, contrast, low resolution, gamma plain and "
                   "inverted), the heavier ones at lower probabilities than nnU-Net's for minute-long budgets")
    reasons.append("inference: Gaussian-weighted sliding window with overlap 0.5, averaged over all flips (training "
                   "flips every axis, as nnU-Net's mirroring); validation during training skips the flips for speed")
    unknown = sorted(set(overrides) - set(plan) - {"base_filters"})
    if unknown:
        raise ValueError(f"plan overrides have unknown field(s) {unknown}; allowed: {sorted(plan)} and base_filters")
    plan["reasons"] = reasons
    return plan

"""Small synthetic NIfTI cases and pipelines shared by the tests of medcore.data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medcore.io import Image, save_image
from medcore.transforms import (
    Compose,
    ForegroundIndices,
    Keyed,
    NormalizeIntensity,
    Orientation,
    RandCropByPosNegLabel,
    RandFlip,
    RandRotate90,
    RandShiftIntensity,
    ScaleIntensityRange,
)

# LPS-ish oblique affine so Orientation does real work
AFFINE = np.array([[-1.0, 0.0, 0.0, 10.0], [0.0, -1.2, 0.0, -4.0], [0.0, 0.0, 1.5, 2.0], [0, 0, 0, 1]])


def write_case(folder: Path, i: int, shape=(18, 20, 16)) -> dict:
    """Write one image/label pair (deterministic content from ``i``) and return its item."""
    g = np.random.default_rng(i)
    img = g.normal(100.0, 20.0, size=shape).astype(np.float32)
    lab = np.zeros(shape, dtype=np.uint8)
    c = [4 + (i * 3) % (s - 8) for s in shape]
    lab[c[0]:c[0] + 4, c[1]:c[1] + 5, c[2]:c[2] + 3] = 1
    lab[c[0] + 1:c[0] + 3, c[1]:c[1] + 2, c[2]:c[2] + 2] = 2
    img[lab > 0] += 50
    folder.mkdir(parents=True, exist_ok=True)
    ip, lp = folder / f"case_{i:03d}_img.nii.gz", folder / f"case_{i:03d}_seg.nii.gz"
    save_image(Image(torch.from_numpy(img)[None], AFFINE), ip)
    save_image(Image(torch.from_numpy(lab)[None], AFFINE), lp)
    return {"image": str(ip), "label": str(lp), "case": i}


def write_cases(folder: Path, n: int = 6) -> list[dict]:
    return [write_case(folder, i) for i in range(n)]


def pipeline(a_min: float = 0.0, num_samples: int = 2, roi=(8, 8, 8)) -> Compose:
    """Deterministic prefix (orientation, intensity scaling, label indices) + random rest
    (multi-sample crop, flip, rot90, intensity shift)."""
    return Compose([
        Keyed(Orientation("RAS")),
        Keyed(ScaleIntensityRange(a_min, 200.0, 0.0, 1.0, clip=True), keys="image"),
        ForegroundIndices("label"),
        Keyed(RandCropByPosNegLabel(roi, num_samples=num_samples)),
        Keyed(RandFlip(prob=0.5)),
        Keyed(RandRotate90(prob=0.5)),
        Keyed(RandShiftIntensity(0.1, prob=1.0), keys="image"),
    ])


def normalize_only() -> Compose:
    return Compose([Keyed(Orientation("RAS"), keys="image"), Keyed(NormalizeIntensity(), keys="image")])


def same_sample(a, b) -> bool:
    """Bit-identical samples (dicts/lists of Images and plain values)."""
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same_sample(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(same_sample(a[k], b[k]) for k in a)
    if isinstance(a, Image):
        return (isinstance(b, Image) and a.data.dtype == b.data.dtype and torch.equal(a.data, b.data)
                and torch.equal(a.affine, b.affine) and a.ops == b.ops)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):  # collated numbers come back as 0-d tensors
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    return a == b

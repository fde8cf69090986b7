"""Shared builders for transform tests: small oblique/anisotropic volumes with labels."""

from __future__ import annotations

import numpy as np
import torch

from medcore.io import Image


def oblique_affine(spacing=(0.9, 1.3, 2.5), angles=(0.3, -0.2, 0.15), origin=(-40.0, 25.0, 10.0)) -> np.ndarray:
    """A rotated, anisotropic (non-RAS) voxel->world affine."""
    r = np.eye(3)
    for axis, t in enumerate(angles):
        c, s = np.cos(t), np.sin(t)
        i, j = [k for k in range(3) if k != axis]
        rot = np.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        r = rot @ r
    a = np.eye(4)
    # permute and flip axes so orientation has real work to do
    perm = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], dtype=float)
    a[:3, :3] = r @ perm @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def volume(shape=(20, 17, 11), channels=1, seed=0, affine=None) -> Image:
    g = torch.Generator().manual_seed(seed)
    data = torch.rand((channels, *shape), generator=g) * 100
    return Image(data, torch.from_numpy(oblique_affine() if affine is None else affine))


def labelled(shape=(24, 20, 16), seed=0, affine=None) -> dict:
    """image + integer label with two classes: a box (1) and a sphere (2)."""
    img = volume(shape, seed=seed, affine=affine)
    lab = torch.zeros((1, *shape), dtype=torch.uint8)
    lab[0, 3:9, 4:10, 2:8] = 1
    zz = torch.stack(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij"))
    centre = torch.tensor([s * 2 // 3 for s in shape]).reshape(3, 1, 1, 1)
    lab[0][((zz - centre) ** 2).sum(0) < 9] = 2
    return {"image": img, "label": Image(lab, img.affine), "id": "case0"}

"""Inversion and replay of recorded ops.

``invert(x, ops)`` undoes every geometric op (``affine`` and ``crop_pad`` kinds) in ``ops``
(default: ``img.ops``) with ONE resample: the forward voxel maps are multiplied and the product
is inverted, so a prediction made on the preprocessed grid lands on the original grid with the
original affine; ``x`` is an ``Image``, a dict (its Images are inverted, each through its own
ops) or a list of those. Intensity and post ops are ignored; a ``deform`` op (elastic) cannot be inverted
and raises. ``replay(img, ops)`` re-applies the recorded concrete transforms, reproducing a
(random) sample exactly from its input.
"""

from __future__ import annotations

from typing import Any, overload

import numpy as np

from medcore.io.image import Image
from medcore.transforms.base import Config, from_config
from medcore.transforms.functional import spatial as fs
from medcore.transforms.spatial import Resample

GEOMETRIC = ("affine", "crop_pad")


def op_map(op: Config, d: int) -> np.ndarray:
    """The forward voxel map (output -> input) of one recorded geometric op."""
    if op["kind"] == "affine":
        return np.asarray(op["matrix"], dtype=np.float64)
    before = op["transform"]["before"]
    return fs.translation([-int(b) for b in before])


@overload
def invert(x: Image, ops: list[Config] | None = None, mode: str | None = None,
           padding_mode: str = "zeros") -> Image: ...


@overload
def invert(x: Any, ops: list[Config] | None = None, mode: str | None = None, padding_mode: str = "zeros") -> Any: ...


def invert(x: Any, ops: list[Config] | None = None, mode: str | None = None, padding_mode: str = "zeros") -> Any:
    """Map ``x`` (an Image, a dict or a list of those) back through the geometric ``ops`` (default:
    each Image's own ``ops``) onto the grid they started from. ``mode`` defaults to ``nearest`` for
    integer/bool data, ``bilinear`` otherwise; other dict entries pass through."""
    if isinstance(x, list):
        return [invert(i, ops, mode, padding_mode) for i in x]
    if isinstance(x, dict):
        return {k: invert_image(v, ops, mode, padding_mode) if isinstance(v, Image) else v for k, v in x.items()}
    if not isinstance(x, Image):
        raise TypeError(f"invert expects an Image, a dict of Images or a list; got {type(x).__name__}")
    return invert_image(x, ops, mode, padding_mode)


def invert_image(img: Image, ops: list[Config] | None = None, mode: str | None = None,
                 padding_mode: str = "zeros") -> Image:
    """``invert`` for one ``Image``."""
    ops = img.ops if ops is None else ops
    geo = [o for o in ops if o.get("kind") in GEOMETRIC]
    bad = [o["name"] for o in ops if o.get("kind") == "deform"]
    if bad:
        raise ValueError(f"invert: ops {bad} (elastic deformation) cannot be inverted; invert predictions made "
                         f"on images preprocessed without them")
    if not geo:
        return img
    d = img.ndim
    if list(img.spatial_shape) != list(geo[-1]["out_shape"]):
        raise ValueError(f"invert: image shape {list(img.spatial_shape)} is not the shape the recorded ops produced "
                         f"({geo[-1]['out_shape']}); pass the ops of the image this prediction was made on")
    forward = np.eye(d + 1)
    for o in geo:
        forward = forward @ op_map(o, d)
    inverse = np.linalg.inv(forward)
    in_shape = tuple(int(v) for v in geo[0]["in_shape"])
    if mode is None:
        mode = "bilinear" if img.data.is_floating_point() else "nearest"
    rs = Resample(matrix=inverse.tolist(), out_shape=list(in_shape), mode=mode, padding_mode=padding_mode)
    data = fs.resample(img.data, inverse, in_shape, mode, padding_mode)
    op = rs.op(kind="invert", matrix=inverse.tolist(), in_shape=list(img.spatial_shape), out_shape=list(in_shape),
               n_inverted=len(geo))
    return img.with_op(op, data=data, affine=fs.update_affine(img.affine, inverse))


def replay(img: Image, ops: list[Config]) -> Image:
    """Re-apply the concrete transforms recorded in ``ops`` to ``img`` (the same input)."""
    for o in ops:
        img = from_config(o["transform"]).apply(img)
    return img

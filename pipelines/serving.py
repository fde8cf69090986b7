"""What the served model reads and writes: image content in, label content out, never a path.

A request is a table with one column, ``image``: per row, base64 of a NIfTI file (``.nii`` or
``.nii.gz``) or of a zip holding one DICOM series. The reply has ``labels`` (base64 of a
``.nii.gz`` label volume on the input's grid, or of a DICOM SEG when the ``output_format`` parameter
is ``seg``; SEG needs a DICOM input), ``format``, ``shape`` and ``voxels`` (JSON: voxel count per
label). Content is unpacked into a private temporary folder that is removed after each row; zip
member names are ignored (members are numbered), so no name in a request reaches the file system.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import json
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np

IMAGE_COLUMN = "image"
FORMATS = ("nifti", "seg")
MAX_UNPACKED_BYTES = 4 << 30  # a zip that would unpack to more is refused (zip bomb)
DEFAULT_PARAMS = {"output_format": "nifti", "model_name": "medcore-segmentation", "model_version": ""}


class RequestError(ValueError):
    """A request the model refuses; the message says what to send instead."""


def _looks_like_path(value: str) -> bool:
    # base64 of a NIfTI, gzip or zip starts with "XAEA"/"AAAB", "H4sI" or "UEsD": never like these
    return value.startswith(("/", "~", ".", "\\", "file:")) or re.match(r"^[A-Za-z]:[\\/]", value) is not None \
        or value.lower().endswith((".nii", ".nii.gz", ".dcm", ".zip", ".nrrd"))


def _content(value: object, row: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise RequestError(f"row {row}: '{IMAGE_COLUMN}' must be a base64 string of a NIfTI file or a zip of "
                           "one DICOM series")
    if _looks_like_path(value):
        raise RequestError(f"row {row}: '{IMAGE_COLUMN}' looks like a file path; the served model never reads "
                           "server paths: send the file's content, base64-encoded")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"row {row}: '{IMAGE_COLUMN}' is not base64 of a NIfTI file or a zip of one DICOM "
                           "series") from None


def decode_request(frame) -> list[bytes]:
    """The decoded content of each row; refuses other columns (paths, outputs) with a clear error."""
    columns = [str(c) for c in frame.columns]
    if columns != [IMAGE_COLUMN]:
        raise RequestError(f"expected exactly one column '{IMAGE_COLUMN}' (base64 of a NIfTI file or a zip of one "
                           f"DICOM series), got {columns}; the served model takes image content, never server "
                           "paths or output locations")
    return [_content(v, i) for i, v in enumerate(frame[IMAGE_COLUMN].tolist())]


def _is_nifti(data: bytes) -> bool:
    sizes = (int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big"))  # sizeof_hdr: NIfTI-1 or -2
    return len(data) >= 348 and bool({348, 540} & set(sizes))


def unpack(content: bytes, folder: Path) -> Path:
    """Write ``content`` under ``folder``: a NIfTI file, or a DICOM series folder from a zip."""
    if content[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(content)) as g:
                head = g.read(348)
        except OSError as exc:
            raise RequestError(f"gzip content is damaged ({exc})") from None
        if not _is_nifti(head):
            raise RequestError("gzip content is not a NIfTI file")
        path = folder / "image.nii.gz"
        path.write_bytes(content)
        return path
    if _is_nifti(content):
        path = folder / "image.nii"
        path.write_bytes(content)
        return path
    if zipfile.is_zipfile(io.BytesIO(content)):
        series = folder / "series"
        series.mkdir()
        with zipfile.ZipFile(io.BytesIO(content)) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
                raise RequestError(f"the zip unpacks to more than {MAX_UNPACKED_BYTES >> 30} GiB")
            if not members:
                raise RequestError("the zip holds no files; send a zip of one DICOM series")
            for i, member in enumerate(members):
                (series / f"{i:05d}.dcm").write_bytes(z.read(member))
        return series
    raise RequestError("content is neither a NIfTI file (.nii/.nii.gz) nor a zip of one DICOM series")


def predict_content(model, spec, content: bytes, params: dict, device) -> dict:
    """One reply row for one request row (see the module docstring)."""
    from medcore.data import load_volume
    from medcore.dicom.seg import SegAlgorithm, build_seg
    from medcore.inferers.predict import predict_volume
    from medcore.io import save_image

    fmt = params["output_format"]
    if fmt not in FORMATS:
        raise RequestError(f"output_format must be one of {FORMATS}, got {fmt!r}")
    with tempfile.TemporaryDirectory(prefix="medcore-serve-") as tmp:
        source = unpack(content, Path(tmp))
        if fmt == "seg" and not source.is_dir():
            raise RequestError("output_format 'seg' needs a DICOM series (a zip): a SEG references its source images")
        image = load_volume(source)
        labels = predict_volume(model, spec, image, device=device)
        array = labels.data[0].numpy()
        if fmt == "seg":
            names = {value: name for name, value in spec.labels.items()}
            algorithm = SegAlgorithm(str(params["model_name"]), str(params["model_version"] or "unregistered"))
            seg = build_seg(array, source, names, algorithm=algorithm, affine=image.affine.numpy(),
                            series_description=f"{algorithm.name} v{algorithm.version}")
            buffer = io.BytesIO()
            seg.save_as(buffer, enforce_file_format=True)
            data = buffer.getvalue()
        else:
            out = save_image(labels, Path(tmp) / "labels.nii.gz")
            data = Path(out).read_bytes()
    values, counts = np.unique(array, return_counts=True)
    return {"labels": base64.b64encode(data).decode("ascii"), "format": fmt, "shape": json.dumps(list(array.shape)),
            "voxels": json.dumps({str(int(v)): int(c) for v, c in zip(values, counts)})}


def example_request() -> str:
    """A tiny NIfTI volume as base64: the input example logged with the model."""
    import torch

    from medcore.io import Image, save_image

    with tempfile.TemporaryDirectory(prefix="medcore-example-") as tmp:
        image = Image(torch.zeros((1, 16, 16, 8)), torch.eye(4, dtype=torch.float64), {}, [])
        path = save_image(image, Path(tmp) / "example.nii.gz")
        return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def signature():
    """The model signature: one string column in, four string columns out, and the parameters."""
    import pandas as pd
    from mlflow.models import infer_signature

    request = pd.DataFrame({IMAGE_COLUMN: ["<base64>"]})
    reply = pd.DataFrame({"labels": ["<base64>"], "format": ["nifti"], "shape": ["[16, 16, 8]"], "voxels": ["{}"]})
    return infer_signature(request, reply, params=DEFAULT_PARAMS)

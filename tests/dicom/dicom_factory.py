"""Write small, valid DICOM files with pydicom for tests (CT/MR images, SR, RTSTRUCT), and compare
decoded frames with a reference NIfTI in world space."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medcore.data.synthetic import new_dicom_dataset

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.22"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
PHI_NAME = "Doe^Jane"
PHI_ID = "MRN123456"


def _base(sop_class: str, *, study_uid: str, series_uid: str, modality: str, series_number: int,
          patient_name: str = PHI_NAME, patient_id: str = PHI_ID) -> Dataset:
    ds = new_dicom_dataset(sop_class)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.StudyDate = "20240102"
    ds.SeriesDescription = "test series"
    return ds


def image_dataset(*, study_uid: str, series_uid: str, ipp, pixels: np.ndarray, iop=AXIAL,
                  pixel_spacing=(0.8, 0.7), series_number: int = 1, instance_number: int = 1,
                  modality: str = "CT", slope: float = 1.0, intercept: float = -1024.0,
                  echo_number: int | None = None, echo_time: float | None = None,
                  image_type=("ORIGINAL", "PRIMARY", "AXIAL"), slice_thickness: float = 2.0,
                  tilt: float | None = None, patient_name: str = PHI_NAME,
                  patient_id: str = PHI_ID) -> Dataset:
    """One single-frame image with full geometry; ``pixels`` is (rows, cols) int16/uint16."""
    sop = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    ds = _base(sop, study_uid=study_uid, series_uid=series_uid, modality=modality,
               series_number=series_number, patient_name=patient_name, patient_id=patient_id)
    ds.InstanceNumber = instance_number
    ds.ImageType = list(image_type)
    ds.ImagePositionPatient = [float(x) for x in ipp]
    ds.ImageOrientationPatient = [float(x) for x in iop]
    ds.PixelSpacing = [float(x) for x in pixel_spacing]
    ds.SliceThickness = slice_thickness
    ds.FrameOfReferenceUID = study_uid
    if modality == "CT":
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.KVP = 120
    if echo_number is not None:
        ds.EchoNumbers = echo_number
    if echo_time is not None:
        ds.EchoTime = echo_time
    if tilt is not None:
        ds.GantryDetectorTilt = tilt
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def save(ds: Dataset, path: Path, preamble: bool = True) -> Path:
    """Write ``ds``; ``preamble=False`` writes a bare implicit-VR dataset (no preamble, no meta)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.save_as(path, enforce_file_format=True, little_endian=True, implicit_vr=False)
    else:
        bare = Dataset()
        bare.update(ds)
        bare.save_as(path, enforce_file_format=False, little_endian=True, implicit_vr=True)
    return path


def phantom(rows: int, cols: int, k: int, seed: int = 0) -> np.ndarray:
    """Deterministic int16 slice content that differs per slice index ``k``."""
    rng = np.random.default_rng(seed * 1000 + k)
    yy, xx = np.mgrid[0:rows, 0:cols]
    base = (xx * 3 + yy * 5 + k * 17) % 400
    return (base + rng.integers(0, 20, size=(rows, cols))).astype(np.int16)


def write_series(folder: Path, n: int, *, rows: int = 12, cols: int = 10, step: float = 2.0,
                 iop=AXIAL, origin=(-10.0, -20.0, 30.0), name: str = "IM", seed: int = 0,
                 shift_per_slice=(0.0, 0.0, 0.0), study_uid: str | None = None,
                 series_uid: str | None = None, preamble: bool = True, **kwargs) -> list[Path]:
    """Write an ``n``-slice straight (or sheared via ``shift_per_slice``) stack; returns paths.

    Files are written in shuffled order with instance numbers unrelated to position.
    """
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    rc = np.asarray(iop, dtype=float).reshape(2, 3)
    normal = np.cross(rc[0], rc[1])
    paths = []
    names = np.random.default_rng(n + seed).permutation(n)  # file order unrelated to position
    numbers = np.random.default_rng(n + seed + 1).permutation(n) + 1
    for k in range(n):
        ipp = np.asarray(origin) + normal * step * k + np.asarray(shift_per_slice) * k
        ds = image_dataset(study_uid=study_uid, series_uid=series_uid, ipp=ipp, iop=iop,
                           pixels=phantom(rows, cols, k, seed), instance_number=int(numbers[k]),
                           **kwargs)
        paths.append(save(ds, Path(folder) / f"{name}{names[k]:04d}.dcm", preamble=preamble))
    return paths


def csa_header(entries: dict[str, list[str]]) -> bytes:
    """A Siemens CSA header (SV10 layout) holding ``{name: [item strings]}``."""
    out = bytearray(b"SV10\x04\x03\x02\x01" + struct.pack("<2I", len(entries), 77))
    for name, items in entries.items():
        out += name.encode().ljust(64, b"\x00") + struct.pack("<i4sii i", 1, b"IS\x00\x00", 6, len(items), 77)
        for value in items:
            data = value.encode() + b"\x00"
            out += struct.pack("<4i", len(data), len(data), 77, len(data))
            out += data.ljust((len(data) + 3) // 4 * 4, b"\x00")
    return bytes(out)


def sr_dataset(study_uid: str) -> Dataset:
    ds = _base(SR_STORAGE, study_uid=study_uid, series_uid=generate_uid(), modality="SR",
               series_number=900)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    return ds


def rtstruct_dataset(study_uid: str) -> Dataset:
    ds = _base(RTSTRUCT_STORAGE, study_uid=study_uid, series_uid=generate_uid(), modality="RTSTRUCT",
               series_number=901)
    ds.StructureSetLabel = "test"
    ds.StructureSetROISequence = []
    return ds


def reference_at_frames(frames, ref, volume: int | None = None) -> tuple[float, list[np.ndarray]]:
    """(max distance in voxels from the reference grid, reference values under each frame's pixels).

    Each pixel of each frame is mapped to RAS world space from the frame's own IPP/IOP/spacing
    and looked up in the reference NIfTI ``ref`` through its affine, so axis order and flips do
    not matter. ``volume`` picks one volume of a 4D reference.
    """
    data = np.asarray(ref.dataobj)
    if volume is not None:
        data = data[..., volume]
    inv = np.linalg.inv(ref.affine)
    f0 = frames[0]
    iop = np.asarray(f0.iop)
    dr, dc = f0.pixel_spacing
    rows, cols = np.meshgrid(np.arange(f0.rows), np.arange(f0.cols), indexing="ij")
    worst, values = 0.0, []
    for f in frames:
        lps = np.asarray(f.ipp) + cols[..., None] * dc * iop[:3] + rows[..., None] * dr * iop[3:]
        ijk = (lps * [-1, -1, 1]) @ inv[:3, :3].T + inv[:3, 3]
        idx = np.rint(ijk)
        worst = max(worst, float(np.abs(ijk - idx).max()))
        idx = idx.astype(int)
        assert idx.min() >= 0 and np.all(idx < data.shape[:3]), "frame falls outside the reference"
        values.append(data[idx[..., 0], idx[..., 1], idx[..., 2]])
    return worst, values


def world_mismatch(frames, values, ref, volume: int | None = None) -> tuple[float, int]:
    """(max distance in voxels from the reference grid, count of voxels differing from ``values``)."""
    worst, expected = reference_at_frames(frames, ref, volume)
    return worst, sum(int(np.sum(e != v)) for e, v in zip(expected, values))

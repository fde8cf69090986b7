"""One acquisition exported twice (classic files and one enhanced file, one SeriesInstanceUID) must give
one correct volume per copy, never a fake time series; damaged identity is quarantined (issue 13)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import image_dataset, phantom, save
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from medcore.data.synthetic import new_dicom_dataset
from medcore.dicom.convert import convert_tree
from medcore.dicom.deid import Deidentifier
from medcore.dicom.values import uid_problem

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
KEY = Deidentifier(b"d" * 32)
ROWS, COLS, SPACING, STEP = 10, 12, (0.9, 0.8), 3.0


@dataclass(frozen=True)
class Plane:
    """One acquired image: slice ``k``, echo, component, diffusion, and its stored pixels."""

    k: int
    pixels: np.ndarray
    echo: int | None = None
    te: float | None = None
    component: str = "M"
    bvalue: float | None = None
    gradient: tuple[float, float, float] | None = None


def _ipp(k: int) -> list[float]:
    return [-20.0, -30.0, 5.0 + STEP * k]


def _item(**kw) -> Dataset:
    it = Dataset()
    for k, v in kw.items():
        setattr(it, k, v)
    return it


def write_classic(folder: Path, planes: list[Plane], study: str, series: str) -> None:
    for i, p in enumerate(planes):
        ds = image_dataset(study_uid=study, series_uid=series, ipp=_ipp(p.k), pixels=p.pixels, modality="MR",
                           pixel_spacing=SPACING, slice_thickness=STEP, series_number=7, instance_number=i + 1,
                           echo_number=p.echo, echo_time=p.te,
                           image_type=("ORIGINAL", "PRIMARY", p.component, "NONE"))
        ds.Manufacturer = "Philips"
        if p.bvalue is not None:
            ds.DiffusionBValue = p.bvalue
            if p.gradient is not None:
                ds.DiffusionGradientOrientation = list(p.gradient)
        save(ds, folder / f"IM_{i:04d}.dcm")


def write_enhanced(path: Path, planes: list[Plane], study: str, series: str) -> None:
    ds = new_dicom_dataset(ENHANCED_MR)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = study, series, 7, "MR"
    ds.PatientName, ds.PatientID, ds.Manufacturer = "Doe^Jane", "MRN123456", "Philips"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "MIXED", "NONE"]
    ds.FrameOfReferenceUID = study
    ds.NumberOfFrames = len(planes)
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SharedFunctionalGroupsSequence = Sequence([_item(
        PlaneOrientationSequence=Sequence([_item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])]),
        PixelMeasuresSequence=Sequence([_item(PixelSpacing=list(SPACING), SliceThickness=STEP)]),
    )])
    per = []
    for i, p in enumerate(planes):
        group = _item(
            PlanePositionSequence=Sequence([_item(ImagePositionPatient=_ipp(p.k))]),
            FrameContentSequence=Sequence([_item(DimensionIndexValues=[i + 1])]),
            MRImageFrameTypeSequence=Sequence([_item(FrameType=["ORIGINAL", "PRIMARY", p.component, "NONE"])]),
        )
        if p.te is not None:
            group.MREchoSequence = Sequence([_item(EffectiveEchoTime=p.te)])
        if p.bvalue is not None:
            diffusion = _item(DiffusionBValue=p.bvalue)
            if p.gradient is not None:
                diffusion.DiffusionGradientDirectionSequence = Sequence(
                    [_item(DiffusionGradientOrientation=list(p.gradient))])
            group.MRDiffusionSequence = Sequence([diffusion])
        per.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = np.stack([p.pixels for p in planes]).astype(np.int16).tobytes()
    save(ds, path)


def _export_twice(root: Path, planes: list[Plane]) -> None:
    study, series = generate_uid(), generate_uid()
    write_classic(root / "classic", planes, study, series)
    write_enhanced(root / "enhanced" / "IM_ENH.dcm", planes, study, series)


def _outputs(report, out: Path) -> dict[tuple, dict[str, np.ndarray]]:
    """{(echo time, component): {"classic"|"enhanced": array}} with the affine checked equal per key."""
    found: dict[tuple, dict[str, nib.Nifti1Image]] = {}
    for rec in report.series:
        sidecar = json.loads((out / rec.sidecar).read_text())
        kind = "enhanced" if rec.series_id.endswith("_enhanced") else "classic"
        assert rec.series_id.endswith("_" + kind), rec.series_id  # the name says which copy it is
        found.setdefault((sidecar.get("EchoTime"), sidecar["ImageComponent"]), {})[kind] = nib.load(out / rec.nifti)
    arrays = {}
    for key, copies in found.items():
        assert set(copies) == {"classic", "enhanced"}, f"{key}: {sorted(copies)}"
        np.testing.assert_allclose(copies["classic"].affine, copies["enhanced"].affine, atol=1e-6)
        arrays[key] = {kind: np.asarray(img.dataobj) for kind, img in copies.items()}
    return arrays


def _expected(planes: list[Plane]) -> np.ndarray:
    """The acquisition as medcore lays it out: (col, row, slice[, volume])."""
    n_slices = len({p.k for p in planes})
    by_slice = sorted(planes, key=lambda p: p.k)
    n_vol = len(planes) // n_slices
    vols = [np.stack([by_slice[s * n_vol + v].pixels.T for s in range(n_slices)], axis=-1) for v in range(n_vol)]
    return vols[0] if n_vol == 1 else np.stack(vols, axis=-1)


def _convert(root: Path, out: Path):
    report = convert_tree(root, out, deid=KEY, compress=False, progress=False, workers=1)
    assert report.balanced
    return report


def test_single_volume_exported_twice_gives_one_volume_per_copy(tmp_path):
    planes = [Plane(k, phantom(ROWS, COLS, k)) for k in range(4)]
    _export_twice(tmp_path / "in", planes)
    report = _convert(tmp_path / "in", tmp_path / "out")
    assert not report.refused and len(report.series) == 2
    (copies,) = _outputs(report, tmp_path / "out").values()
    for kind, arr in copies.items():
        assert arr.shape == (COLS, ROWS, 4), kind  # [x, y, z], not [x, y, z, 2]
        np.testing.assert_array_equal(arr, _expected(planes))
    np.testing.assert_array_equal(copies["classic"], copies["enhanced"])


def test_two_echo_fieldmap_exported_twice(tmp_path):
    planes = [Plane(k, phantom(ROWS, COLS, k, seed=10 * echo + (comp == "P")), echo=echo, te=4.0 + 2.5 * echo,
                    component=comp)
              for echo in (1, 2) for comp in ("M", "P") for k in range(3)]
    _export_twice(tmp_path / "in", planes)
    report = _convert(tmp_path / "in", tmp_path / "out")
    assert not report.refused and len(report.series) == 8
    outputs = _outputs(report, tmp_path / "out")
    assert sorted(outputs) == [(0.0065, "magnitude"), (0.0065, "phase"), (0.009, "magnitude"), (0.009, "phase")]
    for (te, component), copies in outputs.items():
        echo = 1 if te == 0.0065 else 2
        wanted = [p for p in planes if p.echo == echo and (p.component == "P") == (component == "phase")]
        for arr in copies.values():
            assert arr.shape == (COLS, ROWS, 3)
            np.testing.assert_array_equal(arr, _expected(wanted))


def test_diffusion_exported_twice(tmp_path):
    directions = [None, (1.0, 0.0, 0.0), (0.0, 0.70710678, 0.70710678), (0.0, 0.0, 1.0)]
    planes = [Plane(k, phantom(ROWS, COLS, k, seed=v), bvalue=0.0 if g is None else 1000.0, gradient=g)
              for v, g in enumerate(directions) for k in range(3)]
    _export_twice(tmp_path / "in", planes)
    report = _convert(tmp_path / "in", tmp_path / "out")
    assert not report.refused and len(report.series) == 2
    (copies,) = _outputs(report, tmp_path / "out").values()
    for arr in copies.values():
        assert arr.shape == (COLS, ROWS, 3, 4)
        np.testing.assert_array_equal(arr, _expected(planes))
    bvals = {rec.series_id: (tmp_path / "out" / rec.nifti).with_suffix(".bval").read_text().split()
             for rec in report.series}
    assert list(bvals.values()) == [["0", "1000", "1000", "1000"]] * 2


def test_second_classic_copy_identical_pixels_is_dropped_and_recorded(tmp_path):
    planes = [Plane(k, phantom(ROWS, COLS, k)) for k in range(3)]
    study, series = generate_uid(), generate_uid()
    write_classic(tmp_path / "in" / "a", planes, study, series)
    write_classic(tmp_path / "in" / "b", planes, study, series)  # same acquisition, new SOPInstanceUIDs
    report = _convert(tmp_path / "in", tmp_path / "out")
    (rec,) = report.series
    assert rec.shape == [COLS, ROWS, 3] and "duplicate_frames" in rec.issues
    sidecar = json.loads((tmp_path / "out" / rec.sidecar).read_text())
    assert sidecar["DroppedDuplicateFrames"] == 3 and "pixel-identical" in sidecar["DroppedDuplicateFramesReason"]
    assert report.quarantine_counts() == {"duplicate_file": 3}


def test_second_classic_copy_with_different_pixels_is_refused(tmp_path):
    planes = [Plane(k, phantom(ROWS, COLS, k)) for k in range(3)]
    study, series = generate_uid(), generate_uid()
    write_classic(tmp_path / "in" / "a", planes, study, series)
    write_classic(tmp_path / "in" / "b", [Plane(p.k, p.pixels + 1) for p in planes], study, series)
    report = _convert(tmp_path / "in", tmp_path / "out")
    assert not report.series
    (refused,) = report.refused
    assert refused["code"] == "indistinct_repeats" and "tells them apart" in refused["message"]
    assert report.quarantine_counts() == {"indistinct_repeats": 6}


def _overwrite(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) >= 1
    path.write_bytes(data.replace(old, new, 1))


@pytest.mark.parametrize("damage", ["series_uid", "position"])
def test_corrupt_identity_is_quarantined_not_a_new_series(tmp_path, damage):
    planes = [Plane(k, phantom(ROWS, COLS, k)) for k in range(4)]
    study = generate_uid()
    series = "1.2.826.0.1.3680043.8.498.512" + "4" * 30
    write_classic(tmp_path / "in", planes, study, series)
    last = tmp_path / "in" / "IM_0003.dcm"
    if damage == "series_uid":  # a few bytes of the UID overwritten, as a failing disk or copy does
        _overwrite(last, series.encode(), series[:29].encode() + b"\xff\xff\xff\x7f" + series[33:].encode())
    else:
        _overwrite(last, b"14.0", b"NaN ")  # the IPP z of slice 3 (5 + 3 * 3 mm)
    report = _convert(tmp_path / "in", tmp_path / "out")
    (rec,) = report.series  # the damaged file is not converted on its own
    assert rec.shape == [COLS, ROWS, 3]
    q = report.quarantine
    assert list(q["code"]) == ["corrupt_identity"]
    assert report.local_paths[q["file_id"][0]] == last
    assert ("SeriesInstanceUID" if damage == "series_uid" else "ImagePositionPatient") in q["message"][0]


@pytest.mark.parametrize("uid, problem", [
    ("1.2.840.10008.5.1.4.1.1.4", None), ("0", None), ("", None),
    ("1.2.826.512\xff\xff\xff\x7f44", "holds characters other than digits and dots"),
    ("1.2..3", "has an empty component"), ("1.02.3", "has a component with a leading zero"),
    ("1." + "2" * 70, "is 72 characters long (at most 64)"),
])
def test_uid_rules(uid, problem):
    assert uid_problem(uid) == problem

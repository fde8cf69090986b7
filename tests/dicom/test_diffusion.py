"""``.bvec`` as dcm2niix writes it (FSL voxel axes), checked in world space against every Ref ``.bvec``
of the shared data and against dcm2niix run here on synthetic vendor files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import csa_header, image_dataset, phantom, save
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from medcore.data.synthetic import new_dicom_dataset
from medcore.dicom.convert import convert_tree
from medcore.dicom.deid import Deidentifier

KEY = Deidentifier(b"v" * 32)
TOL = 1e-3
#: Every Ref .bvec of the shared sets and what this suite does with it (the test fails on a new one).
REF_BVECS = {
    "dcm_qa_uih/Ref/dti_tra_dir16_PA_6_134431.bvec": "compared",
    "dcm_qa_enh/Ref/Canon_DTI_PA-ortho_9000.bvec": "not compared: the shared dcm_qa_enh/In holds no Canon "
                                                   "DICOM (only the Philips field map and the Siemens XA10 fMRI)",
}


def world_directions(bvec: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """FSL bvecs (3, n) of an image -> unit directions in RAS world space (n, 3), zeros kept."""
    m = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    v = np.asarray(bvec, dtype=float).T.copy()
    if np.linalg.det(m) > 0:
        v[:, 0] = -v[:, 0]
    w = v @ m.T
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    return np.divide(w, norms, out=np.zeros_like(w), where=norms > TOL)


def compare_bvecs(ref_nii: Path, ours_nii: Path) -> float:
    """Largest difference between the two images' gradient directions in world space.

    Volumes are paired by their voxel sum (independent of axis order and flips), so a converter
    that orders the volumes differently is compared volume for volume, not position for position.
    """
    ref, our = nib.load(ref_nii), nib.load(ours_nii)
    ref_w = world_directions(np.loadtxt(ref_nii.with_suffix(".bvec")), ref.affine)
    our_w = world_directions(np.loadtxt(ours_nii.with_suffix(".bvec")), our.affine)
    assert ref_w.shape == our_w.shape, (ref_w.shape, our_w.shape)
    ref_sums = np.asarray(ref.dataobj, dtype=np.float64).sum(axis=(0, 1, 2))
    our_sums = np.asarray(our.dataobj, dtype=np.float64).sum(axis=(0, 1, 2))
    pairs = [int(np.argmin(np.abs(our_sums - s))) for s in ref_sums]
    assert sorted(pairs) == list(range(len(pairs))), "volumes do not pair up one to one"
    return float(np.max(np.abs(ref_w - our_w[pairs])))


def _convert(src: Path, out: Path):
    report = convert_tree(src, out, deid=KEY, compress=False, progress=False, workers=1)
    assert report.balanced
    return report


def test_every_ref_bvec_is_listed_and_matches(shared_data, tmp_path):
    root = shared_data / "dicom"
    found = sorted(p.relative_to(root).as_posix() for p in root.glob("*/Ref/*.bvec"))
    assert found == sorted(REF_BVECS), "a Ref .bvec appeared or vanished: list it in REF_BVECS"
    results = {}
    for rel, what in REF_BVECS.items():
        if what != "compared":
            results[rel] = what
            continue
        ref = root / rel
        number = json.loads(ref.with_suffix(".json").read_text())["SeriesNumber"]
        report = _convert(root / rel.split("/")[0] / "In", tmp_path / rel.split("/")[0])
        (rec,) = [r for r in report.series if r.series_number == number]
        ours = tmp_path / rel.split("/")[0] / rec.nifti
        np.testing.assert_allclose(np.loadtxt(ours.with_suffix(".bval")), np.loadtxt(ref.with_suffix(".bval")),
                                   rtol=1e-4)
        worst = compare_bvecs(ref.with_suffix(".nii"), ours)
        results[rel] = f"max world-space difference {worst:.2e}"
        assert worst < TOL, f"{rel}: {results[rel]}"
    print("\n" + "\n".join(f"  {k}: {v}" for k, v in results.items()))


# ------------------------------------------------------------------ synthetic vendors, dcm2niix as oracle

OBLIQUE = tuple(np.round(np.r_[[0.98480775, 0.17364818, 0.0], [-0.16317591, 0.92541658, 0.34202014]], 8))
DIRECTIONS = [None, (1.0, 0.0, 0.0), (0.0, 0.6, 0.8), (-0.48, 0.6, 0.64), (0.267261, -0.534522, 0.801784)]
ROWS, COLS = 8, 10


def _f32(value: float) -> bytes:
    return np.float32(value).tobytes()


def _vendor_tags(ds: Dataset, vendor: str, b: float, g) -> None:
    if vendor == "siemens":  # private Siemens MR header: B_value IS, DiffusionGradientDirection FD
        ds.Manufacturer = "SIEMENS"
        ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        ds.add_new(0x0019100C, "IS", str(int(b)))
        if g is not None:
            ds.add_new(0x0019100E, "FD", list(g))
    elif vendor == "siemens_csa":  # only the CSA image header (0029,1010) carries them
        ds.Manufacturer = "SIEMENS"
        ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
        entries = {"B_value": [str(int(b))]}
        if g is not None:
            entries["DiffusionGradientDirection"] = [f"{v:.8f}" for v in g]
        ds.add_new(0x00291010, "OB", csa_header(entries))
    elif vendor == "ge":  # GE private: (0043,1039) b-value (with GE's 1e9 bias), (0019,10BB-10BD) gradient
        ds.Manufacturer = "GE MEDICAL SYSTEMS"
        ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
        ds.private_block(0x0043, "GEMS_PARM_01", create=True)
        ds.add_new(0x00431039, "IS", [1_000_000_000 + int(b), 8, 0, 0])
        for tag, value in zip((0x001910BB, 0x001910BC, 0x001910BD), g or (0.0, 0.0, 0.0)):
            ds.add_new(tag, "DS", f"{value:.6f}")
    elif vendor == "philips":  # Philips classic private: (2001,1003) b, (2005,10B0-B2) RL AP FH
        ds.Manufacturer = "Philips Medical Systems"
        ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
        ds.add_new(0x20011003, "FL", b)
        ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
        for tag, value in zip((0x200510B0, 0x200510B1, 0x200510B2), g or (0.0, 0.0, 0.0)):
            ds.add_new(tag, "FL", value)
    else:  # the standard attributes
        ds.Manufacturer = "Philips Medical Systems"
        ds.DiffusionBValue = b
        if g is not None:
            ds.DiffusionGradientOrientation = list(g)


def write_classic_dwi(folder: Path, vendor: str, directions=DIRECTIONS, iop=OBLIQUE, phase: str = "COL") -> None:
    study, series = generate_uid(), generate_uid()
    rc = np.asarray(iop).reshape(2, 3)
    normal = np.cross(rc[0], rc[1])
    n = 0
    for v, g in enumerate(directions):
        for k in range(3):
            n += 1
            ipp = np.array([-30.0, -40.0, 10.0]) + 4.0 * k * normal
            ds = image_dataset(study_uid=study, series_uid=series, ipp=ipp, iop=iop, modality="MR",
                               pixels=phantom(ROWS, COLS, k, seed=v), series_number=5, instance_number=n,
                               pixel_spacing=(2.0, 2.0), slice_thickness=4.0,
                               image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"))
            ds.PatientPosition = "HFS"
            ds.AcquisitionTime = f"1200{v:02d}.{k}"
            ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "EP", "SK", "2D"
            ds.InPlanePhaseEncodingDirection = phase
            _vendor_tags(ds, vendor, 0.0 if g is None else 1000.0, g)
            save(ds, folder / f"IM{n:04d}.dcm")


def _item(**kw) -> Dataset:
    it = Dataset()
    for k, v in kw.items():
        setattr(it, k, v)
    return it


def write_enhanced_dwi(path: Path, directions=DIRECTIONS, iop=OBLIQUE) -> None:
    rc = np.asarray(iop).reshape(2, 3)
    normal = np.cross(rc[0], rc[1])
    ds = new_dicom_dataset("1.2.840.10008.5.1.4.1.1.4.1")
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = generate_uid(), generate_uid(), 5, "MR"
    ds.FrameOfReferenceUID = ds.StudyInstanceUID
    ds.PatientName, ds.PatientID, ds.Manufacturer, ds.PatientPosition = "X^Y", "1", "Philips Medical Systems", "HFS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ROWS, COLS, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SharedFunctionalGroupsSequence = Sequence([_item(
        PlaneOrientationSequence=Sequence([_item(ImageOrientationPatient=list(iop))]),
        PixelMeasuresSequence=Sequence([_item(PixelSpacing=[2.0, 2.0], SliceThickness=4.0)]),
    )])
    per, pixels = [], []
    for v, g in enumerate(directions):
        for k in range(3):
            diffusion = _item(DiffusionBValue=0.0 if g is None else 1000.0,
                              DiffusionDirectionality="NONE" if g is None else "DIRECTIONAL")
            if g is not None:
                diffusion.DiffusionGradientDirectionSequence = Sequence([_item(DiffusionGradientOrientation=list(g))])
            per.append(_item(
                PlanePositionSequence=Sequence([_item(ImagePositionPatient=list(np.array([-30.0, -40, 10]) +
                                                                               4.0 * k * normal))]),
                FrameContentSequence=Sequence([_item(DimensionIndexValues=[1, k + 1, v + 1], StackID="1",
                                                     TemporalPositionIndex=v + 1, InStackPositionNumber=k + 1)]),
                MRDiffusionSequence=Sequence([diffusion]),
            ))
            pixels.append(phantom(ROWS, COLS, k, seed=v))
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=generate_uid())])
    ds.DimensionIndexSequence = Sequence([
        _item(DimensionIndexPointer=pointer, FunctionalGroupPointer=0x00209111,
              DimensionOrganizationUID=ds.DimensionOrganizationSequence[0].DimensionOrganizationUID)
        for pointer in (0x00209056, 0x00209057, 0x00209128)])  # stack, position in stack, volume
    ds.NumberOfFrames = len(per)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = np.stack(pixels).tobytes()
    save(ds, path)


def _dcm2niix(src: Path, out: Path) -> list[Path]:
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    out.mkdir(parents=True)
    subprocess.run([exe, "-z", "n", "-ba", "n", "-f", "%s", "-o", str(out), str(src)], capture_output=True,
                   timeout=120, check=True)
    return sorted(out.glob("*.bvec"))


@pytest.mark.parametrize("vendor", ["siemens", "siemens_csa", "philips", "standard", "enhanced"])
def test_bvec_matches_dcm2niix_on_oblique_vendor_files(tmp_path, vendor):
    src = tmp_path / "in"
    if vendor == "enhanced":
        write_enhanced_dwi(src / "dwi.dcm")
    else:
        write_classic_dwi(src, vendor)
    (ref_bvec,) = _dcm2niix(src, tmp_path / "ref")
    (rec,) = _convert(src, tmp_path / "ours").series
    ours = tmp_path / "ours" / rec.nifti
    assert rec.shape == [COLS, ROWS, 3, len(DIRECTIONS)]
    np.testing.assert_allclose(np.loadtxt(ours.with_suffix(".bval")), np.loadtxt(ref_bvec.with_suffix(".bval")))
    assert compare_bvecs(ref_bvec.with_suffix(".nii"), ours) < TOL
    bvec = np.loadtxt(ours.with_suffix(".bvec"))
    assert np.all(bvec[:, 0] == 0)  # b=0: a zero vector
    np.testing.assert_allclose(np.linalg.norm(bvec[:, 1:], axis=0), 1.0, atol=1e-5)


PLANES = {"axial": (1, 0, 0, 0, 1, 0), "sagittal": (0, 1, 0, 0, 0, -1), "coronal": (1, 0, 0, 0, 0, -1),
          "sagittal_flipped": (0, -1, 0, 0, 0, -1), "oblique": OBLIQUE}


@pytest.mark.parametrize("phase", ["COL", "ROW"])
@pytest.mark.parametrize("plane", sorted(PLANES))
def test_ge_bvec_matches_dcm2niix(tmp_path, plane, phase):
    """GE gradients are in GE's own frame; every (plane, phase axis) of the transform is checked."""
    src = tmp_path / "in"
    write_classic_dwi(src, "ge", iop=PLANES[plane], phase=phase)
    (ref_bvec,) = _dcm2niix(src, tmp_path / "ref")
    (rec,) = _convert(src, tmp_path / "ours").series
    ours = tmp_path / "ours" / rec.nifti
    np.testing.assert_allclose(np.loadtxt(ours.with_suffix(".bval")), np.loadtxt(ref_bvec.with_suffix(".bval")))
    assert compare_bvecs(ref_bvec.with_suffix(".nii"), ours) < TOL


def test_missing_direction_keeps_volumes_but_writes_no_bvec(tmp_path):
    src = tmp_path / "in"
    write_classic_dwi(src, "standard", directions=[None, (1.0, 0.0, 0.0), (0.0, 0.6, 0.8)])
    for path in sorted(src.glob("*.dcm"))[6:7]:  # one slice of the last volume lost its direction
        ds = pydicom.dcmread(path)
        del ds.DiffusionGradientOrientation
        ds.save_as(path)
    (rec,) = _convert(src, tmp_path / "ours").series
    ours = tmp_path / "ours" / rec.nifti
    assert rec.n_volumes == 3 and ours.with_suffix(".bval").exists() and not ours.with_suffix(".bvec").exists()
    sidecar = json.loads(ours.with_suffix(".json").read_text())
    assert "no gradient direction" in sidecar["BvecNotWrittenReason"]

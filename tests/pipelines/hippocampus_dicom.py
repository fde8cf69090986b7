"""Test fixture: the shared hippocampus cases as a hospital would send them. Each case becomes one patient's
study: an MR series written with pydicom (one file per slice, identifying values planted in the headers
and the folder name) and a DICOM SEG written with highdicom (segments "anterior" and "posterior")."""

from __future__ import annotations

import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.uid import MRImageStorage, generate_uid

from medcore.data.synthetic import new_dicom_dataset

LABELS = {1: "anterior", 2: "posterior"}


def planted_phi(case: str) -> dict[str, str]:
    """Distinctive identifying values for one case (none is shorter than 6 characters)."""
    n = "".join(ch for ch in case if ch.isdigit())
    return {"PatientName": f"Hippovar^Quintessa{n}", "PatientID": f"PHIID-{n}-88123",
            "AccessionNumber": f"ACC{n}7731", "InstitutionName": "Sunnyvale Memorial Hospital",
            "ReferringPhysicianName": "Drabrymor^Kellan", "StudyDescription": f"brain mri for Quintessa{n}"}


def _slices(image: np.ndarray, origin: np.ndarray, phi: dict[str, str], study_uid: str, frame_uid: str) -> list:
    """One MR Image Storage data set per axial slice; voxel (i, j, k) is RAS ``origin`` + (i, j, k) mm."""
    finite = np.nan_to_num(image.astype(np.float64))
    slope = max(float(finite.max()), 1e-6) / 4000.0
    series_uid, out = generate_uid(), []
    for k in range(image.shape[2]):
        ds = new_dicom_dataset(MRImageStorage)
        for key, value in phi.items():
            setattr(ds, key, value)
        ds.PatientBirthDate, ds.PatientSex = "19610412", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240301", "101500", "S1"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.Modality, ds.Manufacturer, ds.SeriesDescription = "MR", "medcore-tests", "T1 hippocampus crop"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
        ds.ImageOrientationPatient = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]  # columns go to R, rows to A (LPS)
        ds.ImagePositionPatient = [-float(origin[0]), -float(origin[1]), float(origin[2]) + k]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
        plane = np.rint(finite[:, :, k].T / slope).astype(np.uint16)  # rows = j, columns = i
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.8g}", "0"
        ds.PixelData = plane.tobytes()
        out.append(ds)
    return out


def _seg(slices: list, label: np.ndarray, phi: dict[str, str]):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=name, segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Hippocampus, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, name in LABELS.items()]
    frames = np.stack([label[:, :, k].T for k in range(label.shape[2])]).astype(np.uint8)
    return hd.seg.Segmentation(
        source_images=slices, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=100,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medcore-tests",
        manufacturer_model_name="fixture", software_versions="1", device_serial_number=phi["PatientID"],
        content_date=datetime.date(2024, 3, 1), content_time=datetime.time(11, 0))


def write_hippocampus_inbox(data_dir: Path, inbox: Path, cases: list[str]) -> list[str]:
    """Write ``cases`` (``hippocampus_NNN``) as DICOM studies with a SEG each under ``inbox``; return every
    planted identifying value. No label manifest: the labels are the SEGs."""
    planted: list[str] = []
    for case in cases:
        image = nib.load(str(data_dir / "imagesTr" / f"{case}.nii.gz"))
        label = np.rint(np.asarray(nib.load(str(data_dir / "labelsTr" / f"{case}.nii.gz")).dataobj)).astype(np.uint8)
        if not np.allclose(image.affine[:3, :3], np.eye(3)):
            raise ValueError(f"{case}: expected a 1 mm RAS grid, got {image.affine.tolist()}")
        phi = planted_phi(case)
        planted += list(phi.values())
        study = inbox / phi["PatientName"].replace("^", "_")  # a folder named after the patient, as it happens
        (study / "mr").mkdir(parents=True)
        slices = _slices(np.asarray(image.dataobj), image.affine[:3, 3], phi, generate_uid(), generate_uid())
        for k, ds in enumerate(slices):
            ds.save_as(study / "mr" / f"{k:04d}.dcm", enforce_file_format=True)
        _seg(slices, label, phi).save_as(study / "seg.dcm")
    return planted

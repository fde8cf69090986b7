"""Synthetic CT studies written through pydicom: realistic headers, HU phantom, labels and planted PHI.

Each patient has an abdomen-like phantom defined in patient (LPS) world coordinates: a body ellipse
with a fat layer and soft tissue, a vertebra, and labelled organ-like ellipsoids (liver, spleen,
kidneys). Every series samples that one phantom through its own geometry (axial or oblique, its own
pixel spacing, slice spacing and thickness), so masks and images agree in world space by
construction.

Layout under ``out_dir``::

    dicom/study-NNN/series-NN/NNNN.dcm     CT Image Storage, int16, RescaleIntercept -1024
    labels/mask-NNN.nii.gz                 uint8 mask per labelled series, RAS affine, (col, row, slice)
    labels/seg-NNN.dcm                     the same mask as a DICOM SEG (``seg=True`` only)
    labels/labels.json                     label names + ORIGINAL SeriesInstanceUID -> mask (and seg) file

Folder and file names carry no PHI unless ``phi_in_paths=True`` (for audits of path handling). Every
Basic Profile attribute a CT image can carry is filled with a distinctive value; those values are
returned in :attr:`SyntheticManifest.planted_phi` (never written to disk unless you call
:meth:`SyntheticManifest.save`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medcore.data.labels import LABEL_MANIFEST_FORMAT, LABEL_MANIFEST_NAME
from medcore.dicom.geometry import affine_ras, slice_normal
from medcore.utils.atomic import atomic_path, atomic_write_text

__all__ = [
    "LABEL_NAMES",
    "SyntheticManifest",
    "SyntheticSeries",
    "new_dicom_dataset",
    "write_synthetic_studies",
]

LABEL_NAMES: dict[int, str] = {0: "background", 1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right"}
RESCALE_INTERCEPT = -1024
STUDY_DATE = "20240229"  # every non-birth date: a shifted date can then never equal a planted one
AIR_HU, FAT_HU, SOFT_HU, CANCELLOUS_HU, CORTICAL_HU = -1000.0, -100.0, 40.0, 250.0, 900.0
ORGAN_HU = {1: 60.0, 2: 50.0, 3: 150.0, 4: 150.0}

_SYLLABLES = ("vor", "lax", "hen", "quin", "tes", "bry", "mor", "zel", "dra", "thu", "kas", "pim",
              "ruv", "gol", "nex", "yst", "fal", "orb", "wix", "jun", "pel", "zan", "cyr", "obo")


@dataclass(frozen=True)
class SyntheticSeries:
    """One written series (all UIDs are the ORIGINAL, identifying ones)."""

    patient_index: int
    study_index: int
    kind: str  # "axial", "oblique" or "localizer"
    folder: str  # relative to the manifest root
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    n_slices: int
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) as in DICOM
    slice_spacing: float
    slice_thickness: float
    orientation: tuple[float, ...]  # ImageOrientationPatient
    mask: str | None  # relative path of the NIfTI mask, None for unlabelled series
    affine_ras: list[list[float]]  # voxel (col, row, slice sorted along the normal) -> RAS mm


@dataclass
class SyntheticManifest:
    """What :func:`write_synthetic_studies` wrote, and the PHI it planted."""

    root: Path
    dicom_dir: Path
    label_manifest: Path
    series: list[SyntheticSeries]
    planted_phi: list[str]
    original_uids: list[str] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=lambda: dict(LABEL_NAMES))

    @property
    def n_files(self) -> int:
        return sum(s.n_slices for s in self.series)

    @property
    def n_studies(self) -> int:
        return len({s.study_instance_uid for s in self.series})

    def to_dict(self) -> dict:
        return {
            "root": str(self.root), "dicom_dir": str(self.dicom_dir),
            "label_manifest": str(self.label_manifest), "series": [asdict(s) for s in self.series],
            "planted_phi": self.planted_phi, "original_uids": self.original_uids,
            "label_names": {str(k): v for k, v in self.label_names.items()},
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the manifest as JSON. It holds the planted PHI: keep it out of audited trees."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return Path(path)


# --- helpers ---------------------------------------------------------------------------------------
def _uid(seed: int, *parts: object) -> str:
    """A deterministic original UID (``2.25.`` form) for a synthetic object."""
    digest = hashlib.sha256(("medcore-synthetic:" + ":".join(map(str, (seed, *parts)))).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big') or 1}"


def _word(rng: np.random.Generator, n: int = 3) -> str:
    return "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), n)).capitalize()


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, n))


def _pn(family: str, given: str, middle: str = "") -> str:
    return "^".join(p for p in (family, given, middle) if p)


def _code_item(value: str, meaning: str, scheme: str = "99SYNTH") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


class _Phi:
    """Collects planted values; names also contribute their components."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def __call__(self, value: str) -> str:
        if value not in self.values:
            self.values.append(value)
        return value

    def name(self, family: str, given: str, middle: str = "") -> str:
        for part in (family, given, middle):
            if part:
                self(part)
        return self(_pn(family, given, middle))


# --- phantom ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Phantom:
    body: tuple[float, float]  # semi-axes (x, y) mm of the body ellipse
    fat: float  # thickness of the subcutaneous fat layer, mm
    spine: tuple[float, float, float]  # centre x, y and radius of the vertebral body, mm
    organs: tuple[tuple[int, tuple[float, float, float], tuple[float, float, float]], ...]
    noise: float

    @staticmethod
    def random(rng: np.random.Generator) -> _Phantom:
        j = lambda v, s=0.08: float(v * (1.0 + rng.uniform(-s, s)))  # noqa: E731
        a, b = j(160.0), j(115.0)
        organs = (
            (3, (j(55.0), j(50.0), j(-25.0)), (j(22.0), j(30.0), j(45.0))),
            (4, (j(-55.0), j(50.0), j(-35.0)), (j(22.0), j(30.0), j(45.0))),
            (2, (j(80.0), j(30.0), j(30.0)), (j(28.0), j(40.0), j(45.0))),
            (1, (j(-60.0), j(-10.0), j(30.0)), (j(70.0), j(60.0), j(55.0))),
        )
        return _Phantom((a, b), j(14.0, 0.3), (0.0, b - 50.0, 17.0), organs, 8.0)

    def sample(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, rng: np.random.Generator | None):
        """HU (float32) and label (uint8) at world points (LPS mm, centred on the phantom)."""
        a, b = self.body
        r_body = (x / a) ** 2 + (y / b) ** 2
        r_inner = (x / (a - self.fat)) ** 2 + (y / (b - self.fat)) ** 2
        hu = np.full(x.shape, AIR_HU, dtype=np.float32)
        hu[r_body <= 1.0] = FAT_HU
        hu[r_inner <= 1.0] = SOFT_HU
        sx, sy, sr = self.spine
        d_spine = np.sqrt((x - sx) ** 2 + (y - sy) ** 2)
        hu[d_spine <= sr] = CORTICAL_HU
        hu[d_spine <= sr - 3.0] = CANCELLOUS_HU
        label = np.zeros(x.shape, dtype=np.uint8)
        for value, (cx, cy, cz), (rx, ry, rz) in self.organs:
            inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0
            inside &= label == 0
            label[inside] = value
            hu[inside] = ORGAN_HU[value]
        if rng is not None and self.noise > 0:
            body = r_body <= 1.0
            hu[body] += rng.standard_normal(int(body.sum()), dtype=np.float32) * self.noise
        return hu, label


# --- series geometry -------------------------------------------------------------------------------
def _rotation(rx_deg: float, rz_deg: float) -> np.ndarray:
    ax, az = np.radians(rx_deg), np.radians(rz_deg)
    rot_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rot_z = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rot_z @ rot_x


@dataclass(frozen=True)
class _Geometry:
    kind: str
    rows: int
    columns: int
    n_slices: int
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    slice_thickness: float
    iop: tuple[float, ...]
    origin: tuple[float, float, float]  # IPP of the first slice along the normal
    superior_first: bool  # InstanceNumber 1 at the top (the usual CT order) or at the bottom

    def positions(self) -> np.ndarray:
        n = slice_normal(self.iop)
        return np.asarray(self.origin)[None, :] + np.arange(self.n_slices)[:, None] * self.slice_spacing * n

    def slice_points(self, ipp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        row_dir, col_dir = np.asarray(self.iop[:3]), np.asarray(self.iop[3:])
        j = np.arange(self.rows, dtype=np.float64)[:, None] * self.pixel_spacing[0]
        i = np.arange(self.columns, dtype=np.float64)[None, :] * self.pixel_spacing[1]
        pts = [ipp[k] + i * row_dir[k] + j * col_dir[k] for k in range(3)]
        return pts[0], pts[1], pts[2]

    def affine(self) -> np.ndarray:
        return affine_ras(self.iop, self.origin, self.pixel_spacing, self.slice_spacing)


def _stack_geometry(kind, rows, columns, n_slices, spacing, step, thickness, rot, superior_first, shift):
    row_dir, col_dir = rot @ np.array([1.0, 0.0, 0.0]), rot @ np.array([0.0, 1.0, 0.0])
    normal = np.cross(row_dir, col_dir)
    half = (np.array([columns - 1, rows - 1, n_slices - 1]) * np.array([spacing[1], spacing[0], step])) / 2
    origin = np.asarray(shift) - half[0] * row_dir - half[1] * col_dir - half[2] * normal
    iop = tuple(round(float(v), 8) for v in (*row_dir, *col_dir))
    return _Geometry(kind, rows, columns, n_slices, spacing, step, thickness, iop,
                     tuple(float(v) for v in origin), superior_first)


def _series_plan(patient: int, study: int, shape, rng: np.random.Generator) -> list[_Geometry]:
    """The series of one study: axial for most, oblique for patient 1, a localizer in study 0 of patient 0."""
    rows, columns, n_slices = shape
    fov = float(rng.uniform(380.0, 460.0))
    aniso = 1.0 if patient % 3 != 2 else 0.9  # patient 2 gets non-square pixels
    spacing = (round(fov / rows, 4), round(fov * aniso / columns, 4))
    # ~40 slices span the organs at 2.5-5 mm; longer stacks get thinner slices (>= 0.625 mm)
    step = (2.5, 3.0, 4.0, 5.0)[(patient + study) % 4] * max(0.25, 40.0 / n_slices)
    thickness = step if patient % 2 == 0 else step * 1.25  # overlapping reconstruction for odd patients
    shift = (float(rng.uniform(-5, 5)), float(rng.uniform(-5, 5)), float(rng.uniform(-5, 5)))
    plan = []
    if patient == 1 and study == 0:
        plan.append(_stack_geometry("oblique", rows, columns, n_slices, spacing, step, thickness,
                                    _rotation(-18.0, 8.0), True, shift))
    else:
        plan.append(_stack_geometry("axial", rows, columns, n_slices, spacing, step, thickness,
                                    np.eye(3), patient % 2 == 0, shift))
    if patient == 0 and study == 0:  # a coronal localizer (scout) covering the whole scan range
        extent = max(rows * spacing[0], n_slices * step * 1.2)
        loc_spacing = round(extent / rows, 4)
        rot = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # rows run inferior: IOP 1\0\0\0\0\-1
        plan.append(_stack_geometry("localizer", rows, columns, 1, (loc_spacing, loc_spacing), 1.0, 1.0,
                                    rot, True, shift))
    return plan


# --- headers ---------------------------------------------------------------------------------------
def _patient_phi(phi: _Phi, rng: np.random.Generator, seed: int, patient: int) -> dict:
    family, given, middle = _word(rng), _word(rng), _word(rng, 2)
    ds = Dataset()
    ds.PatientName = phi.name(family, given, middle)
    ds.PatientID = phi(f"MRN{_digits(rng, 8)}")
    ds.IssuerOfPatientID = phi(f"{_word(rng)} Regional MPI")
    ds.PatientBirthDate = phi(f"19{rng.integers(30, 80)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}")
    ds.PatientBirthTime = "071500"
    ds.PatientSex = "F" if patient % 2 else "M"
    ds.PatientAge = f"{rng.integers(45, 90):03d}Y"
    ds.PatientSize = "1.74"
    ds.PatientWeight = "81.5"
    ds.OtherPatientIDs = phi(f"ALT{_digits(rng, 9)}")
    other = Dataset()
    other.PatientID = phi(f"OPI{_digits(rng, 9)}")
    other.TypeOfPatientID = "TEXT"
    other.IssuerOfPatientID = phi(f"{_word(rng)} Clinic Registry")
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.OtherPatientNames = phi.name(_word(rng), given)
    ds.PatientBirthName = phi.name(_word(rng), given)
    ds.PatientMotherBirthName = phi.name(_word(rng), _word(rng))
    ds.PatientAddress = phi(f"{rng.integers(10, 999)} {_word(rng)} Lane, {_word(rng)}ville")
    ds.PatientTelephoneNumbers = phi(f"+1-555-{_digits(rng, 3)}-{_digits(rng, 4)}")
    ds.EthnicGroup = phi(f"ETH{_digits(rng, 6)}")
    ds.Occupation = phi(f"{_word(rng, 2)}smith")
    ds.MilitaryRank = phi(f"Rank {_word(rng)}")
    ds.BranchOfService = phi(f"{_word(rng)} Guard")
    ds.CountryOfResidence = phi(f"{_word(rng)}stan")
    ds.RegionOfResidence = phi(f"{_word(rng)} County")
    ds.PatientComments = phi(f"Patient comment PCM{_digits(rng, 7)}: call {given} before visits")
    ds.AdditionalPatientHistory = phi(f"History HST{_digits(rng, 7)}: treated by {_word(rng)}")
    ds.MedicalAlerts = phi(f"Alert ALR{_digits(rng, 6)}")
    ds.Allergies = phi(f"Allergy to {_word(rng)}ine")
    ds.SmokingStatus = "NO"
    ds.PregnancyStatus = 4
    ds.LastMenstrualDate = phi("19991231") if patient % 2 else ""
    ds.ResponsiblePerson = phi.name(_word(rng), _word(rng))
    ds.ResponsibleOrganization = phi(f"{_word(rng)} Insurance Trust")
    ds.InsurancePlanIdentification = phi(f"INS{_digits(rng, 8)}")
    ds.MedicalRecordLocator = phi(f"Shelf {_word(rng)} {_digits(rng, 4)}")
    ds.AdmissionID = phi(f"ADM{_digits(rng, 8)}")
    ds.IssuerOfAdmissionID = phi(f"{_word(rng)} Admissions")
    ds.ServiceEpisodeID = phi(f"EPI{_digits(rng, 8)}")
    ds.ServiceEpisodeDescription = phi(f"Episode {_word(rng)} follow-up")
    ds.AdmittingDiagnosesDescription = phi(f"Diagnosis DGN{_digits(rng, 6)} per {_word(rng)}")
    ds.PatientSexNeutered = "UNALTERED"
    return {"ds": ds, "seed": seed, "patient": patient, "family": family, "given": given}


def _study_phi(phi: _Phi, rng: np.random.Generator) -> Dataset:
    ds = Dataset()
    ds.StudyDate = STUDY_DATE
    ds.StudyTime = f"{rng.integers(7, 18):02d}{rng.integers(0, 60):02d}15"
    ds.AccessionNumber = phi(f"ACC{_digits(rng, 10)}")
    ds.StudyID = phi(f"SID{_digits(rng, 9)}")
    ds.ReferringPhysicianName = phi.name(_word(rng), _word(rng))
    ds.ReferringPhysicianAddress = phi(f"{rng.integers(10, 999)} {_word(rng)} Street")
    ds.ReferringPhysicianTelephoneNumbers = phi(f"+1-555-{_digits(rng, 3)}-{_digits(rng, 4)}")
    ref_id = Dataset()
    ref_id.PersonIdentificationCodeSequence = Sequence([_code_item(phi(f"DOC{_digits(rng, 6)}"), "Doctor")])
    ref_id.InstitutionName = phi(f"{_word(rng)} Referral Center")
    ds.ReferringPhysicianIdentificationSequence = Sequence([ref_id])
    ds.ConsultingPhysicianName = phi.name(_word(rng), _word(rng))
    ds.PhysiciansOfRecord = phi.name(_word(rng), _word(rng))
    ds.NameOfPhysiciansReadingStudy = phi.name(_word(rng), _word(rng))
    ds.RequestingPhysician = phi.name(_word(rng), _word(rng))
    ds.RequestingService = phi(f"{_word(rng)} Surgery Service")
    ds.StudyDescription = phi(f"CT ABDOMEN STD{_digits(rng, 6)}")
    ds.RequestedProcedureDescription = phi(f"Abdomen RPD{_digits(rng, 6)}")
    ds.ReasonForStudy = phi(f"Reason RFS{_digits(rng, 6)}")
    ds.StudyComments = phi(f"Study comment SCM{_digits(rng, 6)}")
    ds.StudyIDIssuer = phi(f"{_word(rng)} RIS")
    ds.PlacerOrderNumberImagingServiceRequest = phi(f"PLC{_digits(rng, 8)}")
    ds.FillerOrderNumberImagingServiceRequest = phi(f"FIL{_digits(rng, 8)}")
    return ds


def _series_phi(phi: _Phi, rng: np.random.Generator, kind: str) -> Dataset:
    ds = Dataset()
    ds.SeriesDate = STUDY_DATE
    ds.SeriesDescription = phi(f"{kind.upper()} SRD{_digits(rng, 6)}")
    ds.ProtocolName = phi(f"Protocol PRN{_digits(rng, 6)}")
    ds.OperatorsName = phi.name(_word(rng), _word(rng))
    ds.PerformingPhysicianName = phi.name(_word(rng), _word(rng))
    ds.PerformedProcedureStepID = phi(f"PPS{_digits(rng, 8)}")
    ds.PerformedProcedureStepStartDate = STUDY_DATE
    ds.PerformedProcedureStepStartTime = "093000"
    ds.PerformedProcedureStepDescription = phi(f"Step PSD{_digits(rng, 6)}")
    ds.CommentsOnThePerformedProcedureStep = phi(f"Step comment PSC{_digits(rng, 6)}")
    ds.PerformedLocation = phi(f"ROOM{_digits(rng, 8)}")
    ds.PerformedStationName = phi(f"PST{_digits(rng, 6)}")
    ds.PerformedStationAETitle = phi(f"PAE{_digits(rng, 6)}")
    request = Dataset()
    request.RequestedProcedureID = phi(f"RPI{_digits(rng, 8)}")
    request.ScheduledProcedureStepID = phi(f"SPS{_digits(rng, 8)}")
    request.ScheduledProcedureStepDescription = phi(f"Scheduled SSD{_digits(rng, 6)}")
    ds.RequestAttributesSequence = Sequence([request])
    ds.InstitutionName = phi(f"{_word(rng)} University Hospital")
    ds.InstitutionAddress = phi(f"{rng.integers(10, 999)} {_word(rng)} Avenue, {_word(rng)}burg")
    ds.InstitutionalDepartmentName = phi(f"{_word(rng)} Radiology")
    ds.StationName = phi(f"STN{_digits(rng, 8)}")
    ds.DeviceSerialNumber = phi(f"DSN{_digits(rng, 9)}")
    ds.GantryID = phi(f"GTY{_digits(rng, 8)}")
    ds.DetectorID = phi(f"DET{_digits(rng, 8)}")
    ds.DateOfLastCalibration = STUDY_DATE
    ds.TimeOfLastCalibration = "060000"
    ds.AcquisitionComments = phi(f"Acquisition comment ACM{_digits(rng, 6)}")
    ds.ContrastBolusAgent = phi(f"Contrast CBA{_digits(rng, 6)}")
    ds.ImageComments = phi(f"Image comment ICM{_digits(rng, 6)}")
    ds.DerivationDescription = phi(f"Derived DRV{_digits(rng, 6)}")
    ds.TimezoneOffsetFromUTC = "+0530"
    return ds


def _ct_template(patient: Dataset, study: Dataset, series: Dataset, geometry: _Geometry,
                 uids: dict[str, str], private_phi: str, overlay_phi: str | None) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    localizer = geometry.kind == "localizer"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if localizer else "AXIAL"]
    ds.Modality = "CT"
    ds.Manufacturer = "MEDCORE SYNTHETIC"
    ds.ManufacturerModelName = "PHANTOM CT"
    ds.SoftwareVersions = "1"
    ds.InstanceCreationDate = STUDY_DATE
    ds.InstanceCreationTime = "100000"
    ds.InstanceCreatorUID = uids["creator"]
    ds.AcquisitionDate = STUDY_DATE
    ds.ContentDate = STUDY_DATE
    ds.AcquisitionTime = "093512"
    ds.ContentTime = "093512"
    ds.AcquisitionDateTime = STUDY_DATE + "093512.250000"
    for src in (patient, study, series):
        for elem in src:
            ds.add(elem)
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.IrradiationEventUID = uids["irradiation"]
    ds.DeviceUID = uids["device"]
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref_study.ReferencedSOPInstanceUID = uids["study_component"]
    ds.ReferencedStudySequence = Sequence([ref_study])
    pps = Dataset()
    pps.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.3"
    pps.ReferencedSOPInstanceUID = uids["pps"]
    ds.ReferencedPerformedProcedureStepSequence = Sequence([pps])
    if "localizer_sop" in uids and not localizer:
        ref = Dataset()
        ref.ReferencedSOPClassUID = CTImageStorage
        ref.ReferencedSOPInstanceUID = uids["localizer_sop"]
        ds.ReferencedImageSequence = Sequence([ref])
    ds.SeriesNumber = 2 if localizer else 3
    ds.AcquisitionNumber = 1
    ds.PatientPosition = "FFS"
    ds.BodyPartExamined = "ABDOMEN"
    ds.KVP = "120"
    ds.SliceThickness = f"{geometry.slice_thickness:.4g}"
    if geometry.n_slices > 1:
        ds.SpacingBetweenSlices = f"{geometry.slice_spacing:.4g}"
    ds.ConvolutionKernel = "STANDARD"
    ds.ImageOrientationPatient = [f"{v:.8f}".rstrip("0").rstrip(".") or "0" for v in geometry.iop]
    ds.PixelSpacing = [f"{v:.6g}" for v in geometry.pixel_spacing]
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = geometry.rows
    ds.Columns = geometry.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.BurnedInAnnotation = "NO"
    block = ds.private_block(0x0009, "MEDCORE SYNTH PRIVATE", create=True)
    block.add_new(0x10, "LO", private_phi)
    block.add_new(0x11, "LO", f"{private_phi} copy")
    if overlay_phi is None:
        return ds
    ds.add_new(0x60000010, "US", geometry.rows)
    ds.add_new(0x60000011, "US", geometry.columns)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60000022, "LO", overlay_phi)  # OverlayDescription (Overlay Comments is retired)
    ds.add_new(0x60001500, "LO", f"{overlay_phi} label")  # OverlayLabel
    overlay = np.zeros(geometry.rows * geometry.columns, dtype=bool)
    overlay[: geometry.columns * 4] = True
    ds.add_new(0x60003000, "OW", np.packbits(overlay, bitorder="little").tobytes())
    return ds


def _write_series(
    root: Path,
    folder: str,
    template: Dataset,
    geometry: _Geometry,
    phantom: _Phantom,
    rng: np.random.Generator,
    seed: int,
    tag: str,
    want_mask: bool,
) -> tuple[list[str], np.ndarray | None]:
    """Write every slice of one series; return the SOP Instance UIDs and the (col,row,slice) mask."""
    positions = geometry.positions()
    n = geometry.n_slices
    mask = np.zeros((geometry.columns, geometry.rows, n), dtype=np.uint8) if want_mask else None
    normal = slice_normal(geometry.iop)
    order = range(n - 1, -1, -1) if geometry.superior_first and normal[2] > 0 else range(n)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.SourceApplicationEntityTitle = template.get("PerformedStationAETitle", "SYNTH")
    template.file_meta = meta
    sop_uids: list[str] = []
    series_dir = root / folder
    series_dir.mkdir(parents=True, exist_ok=True)
    for instance, k in enumerate(order, start=1):
        ipp = positions[k]
        x, y, z = geometry.slice_points(ipp)
        hu, label = phantom.sample(x, y, z, rng)
        stored = np.clip(np.rint(hu) - RESCALE_INTERCEPT, -32768, 32767).astype("<i2")
        sop = _uid(seed, tag, "sop", k)
        sop_uids.append(sop)
        template.SOPInstanceUID = sop
        meta.MediaStorageSOPInstanceUID = UID(sop)
        template.InstanceNumber = instance
        template.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        template.SliceLocation = f"{float(ipp @ normal):.6f}"
        template.PixelData = stored.tobytes()
        with atomic_path(series_dir / f"{instance:04d}.dcm") as tmp:
            template.save_as(tmp, enforce_file_format=True)
        if mask is not None:
            mask[:, :, k] = label.T
    return sop_uids, mask


# --- public API ------------------------------------------------------------------------------------
def new_dicom_dataset(sop_class_uid: str, *, sop_instance_uid: str | None = None,
                      transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """An otherwise empty data set with its file meta, SOP class and SOP instance UID set.

    Fill in the attributes, then ``save_as(path, enforce_file_format=True)``. A new instance UID
    is generated unless ``sop_instance_uid`` is given.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid or generate_uid())
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    return ds


def write_synthetic_studies(
    out_dir: str | os.PathLike,
    *,
    n_patients: int = 3,
    seed: int = 0,
    shape: tuple[int, int, int] = (64, 64, 40),
    studies_per_patient: tuple[int, ...] | None = None,
    phi_in_paths: bool = False,
    localizer: bool = True,
    overlays: bool = True,
    seg: bool = False,
    noise: bool = True,
    progress: bool = False,
) -> SyntheticManifest:
    """Write synthetic CT studies under ``out_dir`` and return what was written.

    ``shape`` is (rows, columns, slices) of the main series. ``studies_per_patient`` defaults to one
    study for even patients and two for odd ones. Patient 0's first study has a coronal localizer,
    patient 1's first series is oblique, patient 2 has non-square pixels; slice spacing, thickness and
    in-plane spacing vary across patients. ``phi_in_paths=True`` names study folders after the
    patient (for audits of how converters treat input paths); ``localizer=False`` leaves the
    localizer out and ``overlays=False`` the overlay plane (whose description carries planted PHI).
    ``seg=True`` also writes each mask as a DICOM SEG (``labels/seg-NNN.dcm``, listed in the label
    manifest under ``"seg"``); like the source images it carries the planted patient and study PHI.
    Deterministic for a given ``seed``.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    rows, columns, n_slices = (int(v) for v in shape)
    if min(rows, columns) < 8 or n_slices < 2:
        raise ValueError(f"shape {tuple(shape)} is too small; need rows, columns >= 8 and slices >= 2")
    if studies_per_patient is None:
        studies_per_patient = tuple(1 + (p % 2) for p in range(n_patients))
    if len(studies_per_patient) != n_patients:
        raise ValueError(f"studies_per_patient has {len(studies_per_patient)} entries for {n_patients} patients")
    root = Path(out_dir)
    dicom_dir, labels_dir = root / "dicom", root / "labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    phi = _Phi()
    phi(STUDY_DATE)
    all_series: list[SyntheticSeries] = []
    original_uids: list[str] = []
    entries: list[dict] = []
    total = sum(studies_per_patient) * n_slices
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="synthetic studies", unit="series-slices")
    study_counter = 0
    for patient in range(n_patients):
        rng = np.random.default_rng([seed, patient])
        phantom = _Phantom.random(rng)
        if not noise:
            phantom = _Phantom(phantom.body, phantom.fat, phantom.spine, phantom.organs, 0.0)
        pat = _patient_phi(phi, rng, seed, patient)
        for study in range(studies_per_patient[patient]):
            study_ds = _study_phi(phi, rng)
            study_uid = _uid(seed, patient, study, "study")
            study_folder = (f"study-{study_counter:03d}" if not phi_in_paths
                            else f"{pat['family']}^{pat['given']}_{pat['ds'].PatientID}_{study_counter:03d}")
            study_counter += 1
            frame_uid = _uid(seed, patient, study, "frame")
            uids_common = {
                "study": study_uid, "frame": frame_uid, "creator": _uid(seed, patient, study, "creator"),
                "device": _uid(seed, "device", patient), "pps": _uid(seed, patient, study, "pps"),
                "study_component": _uid(seed, patient, study, "component"),
            }
            phi(study_uid)
            phi(frame_uid)
            original_uids += [v for v in uids_common.values()]
            plan = _series_plan(patient, study, (rows, columns, n_slices), rng)
            if not localizer:
                plan = [g for g in plan if g.kind != "localizer"]
            plan.sort(key=lambda g: g.kind != "localizer")  # write the localizer first to reference it
            for s_index, geometry in enumerate(plan):
                tag = f"{patient}:{study}:{s_index}"
                series_uid = _uid(seed, tag, "series")
                uids = dict(uids_common, series=series_uid, irradiation=_uid(seed, tag, "irradiation"))
                if "localizer_sop" in uids_common:
                    uids["localizer_sop"] = uids_common["localizer_sop"]
                phi(series_uid)
                series_ds = _series_phi(phi, rng, geometry.kind)
                private_phi = phi(f"PRV{_digits(rng, 9)} {pat['family']}")
                overlay_phi = f"Overlay note OVL{_digits(rng, 6)}"
                if overlays:
                    phi(overlay_phi)
                template = _ct_template(pat["ds"], study_ds, series_ds, geometry, uids, private_phi,
                                        overlay_phi if overlays else None)
                folder = f"dicom/{study_folder}/series-{s_index:02d}"
                labelled = geometry.kind != "localizer"
                sops, mask = _write_series(root, folder, template, geometry, phantom, rng, seed, tag, labelled)
                original_uids += [series_uid, uids["irradiation"], *sops]
                if geometry.kind == "localizer":
                    uids_common["localizer_sop"] = sops[0]
                mask_rel = None
                affine = geometry.affine()
                if mask is not None:
                    mask_rel = f"labels/mask-{len(entries):03d}.nii.gz"
                    img = nib.Nifti1Image(mask, affine)
                    img.set_qform(affine, code=1)
                    img.set_sform(affine, code=1)
                    img.header.set_xyzt_units("mm")
                    with atomic_path(root / mask_rel) as tmp:
                        nib.save(img, str(tmp))
                    entry = {"series_instance_uid": series_uid, "mask": Path(mask_rel).name}
                    if seg:
                        from medcore.dicom.seg import write_seg

                        seg_name = f"seg-{len(entries):03d}.dcm"
                        write_seg(mask, root / folder, labels_dir / seg_name, LABEL_NAMES,
                                  series_description="synthetic organ labels")
                        entry["seg"] = seg_name
                    entries.append(entry)
                all_series.append(SyntheticSeries(
                    patient, study, geometry.kind, folder, study_uid, series_uid, frame_uid,
                    geometry.n_slices, geometry.rows, geometry.columns, geometry.pixel_spacing,
                    geometry.slice_spacing, geometry.slice_thickness, geometry.iop, mask_rel,
                    affine.tolist()))
                if bar is not None and geometry.kind != "localizer":
                    bar.update(geometry.n_slices)
    if bar is not None:
        bar.close()
    label_manifest = labels_dir / LABEL_MANIFEST_NAME
    atomic_write_text(label_manifest, json.dumps({
        "format": LABEL_MANIFEST_FORMAT,
        "label_names": {str(k): v for k, v in LABEL_NAMES.items()},
        "series": entries,
    }, indent=1))
    return SyntheticManifest(root, dicom_dir, label_manifest, all_series, phi.values, original_uids)

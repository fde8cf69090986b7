"""De-identification of DICOM datasets: DICOM PS3.15 Annex E, Basic Application Confidentiality Profile.

A :class:`Deidentifier` holds a secret key and derives everything from it with HMAC-SHA256:

* UIDs are remapped to ``2.25.<integer>`` (deterministic per key, so series and studies stay linked);
* patients get a pseudonym ``sub-<10 hex>``, studies a session label ``ses-<10 hex>``;
* dates (DA, DT) are shifted by a per-patient number of days in -3650..-1
  (the profile's *Retain Longitudinal Temporal Information with Modified Dates* option);
* every attribute of the Basic Profile table gets its action (D, Z, X, K, C, U), private tags,
  curves and overlays are removed, and PatientIdentityRemoved / DeidentificationMethod(CodeSequence)
  record what was done.

Beyond the table, any person name (VR PN) is blanked and any non-standard UID is remapped, so an
attribute the table does not list cannot carry a name or a linkable identifier out.

The key never lives with the data: :func:`load_or_create_key` reads ``$MEDCORE_DEID_KEY`` (hex) or a
0600 key file under ``~/.config/medcore`` and refuses a key file inside a data or output tree.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

__all__ = [
    "BASIC_PROFILE",
    "DeidentificationError",
    "Deidentifier",
    "KEY_ENV",
    "default_key_path",
    "load_or_create_key",
]

KEY_ENV = "MEDCORE_DEID_KEY"
MIN_KEY_BYTES = 16
SHIFT_RANGE_DAYS = 3650
STANDARD_UID_ROOT = "1.2.840.10008."  # UIDs defined by the DICOM standard itself (SOP classes, ...)
METHOD_TEXT = "medcore: PS3.15 Basic Profile, modified dates, keyed UID remap"

# --- The Basic Profile attribute table (PS3.15 Table E.1-1, "Basic Prof." column) ------------------
# One line per attribute: "GGGG,EEEE Keyword ACTION". Action codes as in the standard:
#   D dummy value, Z zero length (or dummy), X remove, K keep, C clean, U replace UID consistently;
#   compound codes (X/Z, Z/D, X/D, X/Z/D, X/Z/U*) are resolved by ``_resolve``.
_TABLE = """
0008,0050 AccessionNumber Z
0018,4000 AcquisitionComments X
0040,0555 AcquisitionContextSequence X
0008,0022 AcquisitionDate X/Z
0008,002A AcquisitionDateTime X/D
0018,1400 AcquisitionDeviceProcessingDescription X/D
0018,9424 AcquisitionProtocolDescription X
0008,0032 AcquisitionTime X/Z
0008,0017 AcquisitionUID U
0040,4035 ActualHumanPerformersSequence X
0010,21B0 AdditionalPatientHistory X
0038,0010 AdmissionID X
0038,0020 AdmittingDate X
0008,1084 AdmittingDiagnosesCodeSequence X
0008,1080 AdmittingDiagnosesDescription X
0038,0021 AdmittingTime X
0010,2110 Allergies X
4000,0010 Arbitrary X
0040,A078 AuthorObserverSequence X
0010,1081 BranchOfService X
0018,1007 CassetteID X
0040,0280 CommentsOnThePerformedProcedureStep X
0020,9161 ConcatenationUID U
0040,3001 ConfidentialityConstraintOnPatientDataDescription X
0008,009C ConsultingPhysicianName X
0008,009D ConsultingPhysicianIdentificationSequence X
0070,0086 ContentCreatorIdentificationCodeSequence X
0070,0084 ContentCreatorName Z
0008,0023 ContentDate Z/D
0040,A730 ContentSequence X
0008,0033 ContentTime Z/D
0008,010D ContextGroupExtensionCreatorUID U
0018,0010 ContrastBolusAgent Z/D
0018,A002 ContributionDateTime X/D
0018,A003 ContributionDescription X
0010,2150 CountryOfResidence X
0008,9123 CreatorVersionUID U
0038,0300 CurrentPatientLocation X
0008,0025 CurveDate X
0008,0035 CurveTime X
0040,A07C CustodialOrganizationSequence X
FFFC,FFFC DataSetTrailingPadding X
0018,1200 DateOfLastCalibration X
0018,1012 DateOfSecondaryCapture X
0040,A121 Date D
0040,A120 DateTime X/D
0008,2111 DerivationDescription X
0018,700A DetectorID X
0018,1000 DeviceSerialNumber X/Z/D
0018,1002 DeviceUID U
0400,0100 DigitalSignatureUID X
FFFA,FFFA DigitalSignaturesSequence X
0020,9164 DimensionOrganizationUID U
0038,0030 DischargeDate X
0038,0040 DischargeDiagnosisDescription X
0038,0032 DischargeTime X
4008,011A DistributionAddress X
4008,0119 DistributionName X
300A,0013 DoseReferenceUID U
0018,9517 EndAcquisitionDateTime X/D
0010,2160 EthnicGroup X
0018,9804 ExclusionStartDateTime X
0008,0058 FailedSOPInstanceUIDList U
0070,031A FiducialUID U
0040,2017 FillerOrderNumberImagingServiceRequest Z
0018,9074 FrameAcquisitionDateTime X/D
0020,9158 FrameComments X
0020,0052 FrameOfReferenceUID U
0018,9151 FrameReferenceDateTime X/D
0018,1008 GantryID X
0018,1005 GeneratorID X
0070,0001 GraphicAnnotationSequence D
0010,0027 GroupOfPatientsIdentificationSequence X
0018,1011 HardcopyCreationDeviceID X
0040,4037 HumanPerformerName X
0040,4036 HumanPerformerOrganization X
0088,0200 IconImageSequence X
0008,4000 IdentifyingComments X
0020,4000 ImageComments X
0028,4000 ImagePresentationComments X
0040,2400 ImagingServiceRequestComments X
4008,0300 Impressions X
0008,0012 InstanceCreationDate X/D
0008,0013 InstanceCreationTime X/Z/D
0008,0014 InstanceCreatorUID U
0008,0015 InstanceCoercionDateTime X
0008,0081 InstitutionAddress X
0008,0082 InstitutionCodeSequence X/Z/D
0008,0080 InstitutionName X/Z/D
0008,1040 InstitutionalDepartmentName X
0008,1041 InstitutionalDepartmentTypeCodeSequence X
0010,1050 InsurancePlanIdentification X
0040,1011 IntendedRecipientsOfResultsIdentificationSequence X
4008,0111 InterpretationApproverSequence X
4008,010C InterpretationAuthor X
4008,0115 InterpretationDiagnosisDescription X
4008,0202 InterpretationIDIssuer X
4008,0102 InterpretationRecorder X
4008,010B InterpretationText X
4008,010A InterpretationTranscriber X
0008,3010 IrradiationEventUID U
0038,0011 IssuerOfAdmissionID X
0040,2004 IssueDateOfImagingServiceRequest X
0010,0021 IssuerOfPatientID X
0010,0024 IssuerOfPatientIDQualifiersSequence X
0038,0061 IssuerOfServiceEpisodeID X
0040,2005 IssueTimeOfImagingServiceRequest X
0028,1214 LargePaletteColorLookupTableUID U
0010,21D0 LastMenstrualDate X
0400,0404 MAC X
0002,0003 MediaStorageSOPInstanceUID U
0010,2000 MedicalAlerts X
0010,1090 MedicalRecordLocator X
0010,1080 MilitaryRank X
0400,0550 ModifiedAttributesSequence X
0020,3406 ModifiedImageDescription X
0020,3401 ModifyingDeviceID X
0020,3404 ModifyingDeviceManufacturer X
0008,1060 NameOfPhysiciansReadingStudy X
0040,1010 NamesOfIntendedRecipientsOfResults X
0040,A032 ObservationDateTime X/D
0040,A171 ObservationUID U
0010,2180 Occupation X
0008,1072 OperatorIdentificationSequence X/D
0008,1070 OperatorsName X/Z/D
0040,2010 OrderCallbackPhoneNumber X
0040,2008 OrderEnteredBy X
0040,2009 OrderEntererLocation X
0400,0561 OriginalAttributesSequence X
0010,1000 OtherPatientIDs X
0010,1002 OtherPatientIDsSequence X
0010,1001 OtherPatientNames X
0008,0024 OverlayDate X
0008,0034 OverlayTime X
0028,1199 PaletteColorLookupTableUID U
0040,A07A ParticipantSequence X
0010,1010 PatientAge X
0010,1040 PatientAddress X
0010,0035 PatientAlternativeCalendar X
0010,0030 PatientBirthDate Z
0010,0033 PatientBirthDateInAlternativeCalendar X
0010,1005 PatientBirthName X
0010,0032 PatientBirthTime X
0010,4000 PatientComments X
0010,0034 PatientDeathDateInAlternativeCalendar X
0010,0020 PatientID Z
0038,0400 PatientInstitutionResidence X
0010,0050 PatientInsurancePlanCodeSequence X
0010,1060 PatientMotherBirthName X
0010,0010 PatientName Z
0010,0101 PatientPrimaryLanguageCodeSequence X
0010,0102 PatientPrimaryLanguageModifierCodeSequence X
0010,21F0 PatientReligiousPreference X
0010,0040 PatientSex Z
0010,2203 PatientSexNeutered X/Z
0010,1020 PatientSize X
0038,0500 PatientState X
0010,2155 PatientTelecomInformation X
0010,2154 PatientTelephoneNumbers X
0040,1004 PatientTransportArrangements X
0010,1030 PatientWeight X
0040,0243 PerformedLocation X
0040,0250 PerformedProcedureStepEndDate X
0040,0251 PerformedProcedureStepEndTime X
0040,0254 PerformedProcedureStepDescription X
0040,0253 PerformedProcedureStepID X
0040,0244 PerformedProcedureStepStartDate X
0040,0245 PerformedProcedureStepStartTime X
0040,0241 PerformedStationAETitle X
0040,4030 PerformedStationGeographicLocationCodeSequence X
0040,0242 PerformedStationName X
0040,4028 PerformedStationNameCodeSequence X
0008,1052 PerformingPhysicianIdentificationSequence X
0008,1050 PerformingPhysicianName X
0040,1102 PersonAddress X
0040,1101 PersonIdentificationCodeSequence D
0040,A123 PersonName D
0040,1104 PersonTelecomInformation X
0040,1103 PersonTelephoneNumbers X
4008,0114 PhysicianApprovingInterpretation X
0008,1048 PhysiciansOfRecord X
0008,1049 PhysiciansOfRecordIdentificationSequence X
0008,1062 PhysiciansReadingStudyIdentificationSequence X
0040,2016 PlacerOrderNumberImagingServiceRequest Z
0018,1004 PlateID X
0040,0012 PreMedication X
0010,21C0 PregnancyStatus X
0018,1030 ProtocolName X/D
0008,0019 PyramidUID U
0040,2001 ReasonForTheImagingServiceRequest X
0032,1030 ReasonForStudy X
0400,0402 ReferencedDigitalSignatureSequence X
3006,0024 ReferencedFrameOfReferenceUID U
0040,4023 ReferencedGeneralPurposeScheduledProcedureStepTransactionUID U
0008,1140 ReferencedImageSequence X/Z/U*
0038,0004 ReferencedPatientAliasSequence X
0010,1100 ReferencedPatientPhotoSequence X
0008,1120 ReferencedPatientSequence X
0008,1111 ReferencedPerformedProcedureStepSequence X/Z/D
0400,0403 ReferencedSOPInstanceMACSequence X
0008,1155 ReferencedSOPInstanceUID U
0004,1511 ReferencedSOPInstanceUIDInFile U
0008,1110 ReferencedStudySequence X/Z
0008,0092 ReferringPhysicianAddress X
0008,0096 ReferringPhysicianIdentificationSequence X
0008,0090 ReferringPhysicianName Z
0008,0094 ReferringPhysicianTelephoneNumbers X
0010,2152 RegionOfResidence X
3006,00C2 RelatedFrameOfReferenceUID U
0040,0275 RequestAttributesSequence X
0032,1070 RequestedContrastAgent X
0040,1400 RequestedProcedureComments X
0032,1060 RequestedProcedureDescription X/Z
0040,1001 RequestedProcedureID X
0040,1005 RequestedProcedureLocation X
0032,1032 RequestingPhysician X
0032,1033 RequestingService X
0010,2299 ResponsibleOrganization X
0010,2297 ResponsiblePerson X
4008,4000 ResultsComments X
4008,0118 ResultsDistributionListSequence X
4008,0042 ResultsIDIssuer X
300E,0008 ReviewerName X/Z
0038,001A ScheduledAdmissionDate X
0038,001B ScheduledAdmissionTime X
0038,001C ScheduledDischargeDate X
0038,001D ScheduledDischargeTime X
0040,4034 ScheduledHumanPerformersSequence X
0038,001E ScheduledPatientInstitutionResidence X
0040,000B ScheduledPerformingPhysicianIdentificationSequence X
0040,0006 ScheduledPerformingPhysicianName X
0040,0007 ScheduledProcedureStepDescription X
0040,0004 ScheduledProcedureStepEndDate X
0040,0005 ScheduledProcedureStepEndTime X
0040,0009 ScheduledProcedureStepID X
0040,0011 ScheduledProcedureStepLocation X
0040,0002 ScheduledProcedureStepStartDate X
0040,0003 ScheduledProcedureStepStartTime X
0040,0001 ScheduledStationAETitle X
0040,4027 ScheduledStationGeographicLocationCodeSequence X
0040,0010 ScheduledStationName X
0040,4025 ScheduledStationNameCodeSequence X
0032,1020 ScheduledStudyLocation X
0032,1021 ScheduledStudyLocationAETitle X
0032,1000 ScheduledStudyStartDate X
0032,1001 ScheduledStudyStartTime X
0032,1010 ScheduledStudyStopDate X
0032,1011 ScheduledStudyStopTime X
0008,0021 SeriesDate X/D
0008,103E SeriesDescription X
0020,000E SeriesInstanceUID U
0008,0031 SeriesTime X/D
0038,0062 ServiceEpisodeDescription X
0038,0060 ServiceEpisodeID X
0010,21A0 SmokingStatus X
0008,0018 SOPInstanceUID U
0008,2112 SourceImageSequence X/Z/U*
0010,0026 SourcePatientGroupIdentificationSequence X
0038,0050 SpecialNeeds X
0018,9516 StartAcquisitionDateTime X/D
0008,1010 StationName X/Z/D
0088,0140 StorageMediaFileSetUID U
0032,1040 StudyArrivalDate X
0032,1041 StudyArrivalTime X
0032,4000 StudyComments X
0032,1050 StudyCompletionDate X
0032,1051 StudyCompletionTime X
0008,0020 StudyDate Z
0008,1030 StudyDescription X
0020,0010 StudyID Z
0032,0012 StudyIDIssuer X
0020,000D StudyInstanceUID U
0032,0034 StudyReadDate X
0032,0035 StudyReadTime X
0008,0030 StudyTime Z
0032,0032 StudyVerifiedDate X
0032,0033 StudyVerifiedTime X
0020,0200 SynchronizationFrameOfReferenceUID U
0040,DB0D TemplateExtensionCreatorUID U
0040,DB0C TemplateExtensionOrganizationUID U
4000,4000 TextComments X
2030,0020 TextString X
0040,A122 Time D
0018,1201 TimeOfLastCalibration X
0018,1014 TimeOfSecondaryCapture X
0008,0201 TimezoneOffsetFromUTC X
0088,0910 TopicAuthor X
0088,0912 TopicKeywords X
0088,0906 TopicSubject X
0088,0904 TopicTitle X
0008,1195 TransactionUID U
0018,100A UDISequence X
0040,A124 UID U
0018,1009 UniqueDeviceIdentifier X
0040,A030 VerificationDateTime D
0040,A088 VerifyingObserverIdentificationCodeSequence Z
0040,A075 VerifyingObserverName D
0040,A073 VerifyingObserverSequence D
0040,A027 VerifyingOrganization X
0038,4000 VisitComments X
"""

# Repeating groups: curves (50xx) are removed whole; overlay data and comments (60xx,3000 / 60xx,4000)
# are removed, and with them the rest of the overlay group, which is meaningless without its data.
_REMOVED_GROUP_RANGES = ((0x5000, 0x50FF), (0x6000, 0x60FF))

# Dates that are never kept, not even shifted (the modified-dates option does not cover them).
_NEVER_RETAIN = frozenset(
    Tag(t)
    for t in (
        0x00100030,  # PatientBirthDate
        0x00100032,  # PatientBirthTime
        0x00100033,  # PatientBirthDateInAlternativeCalendar
        0x00100034,  # PatientDeathDateInAlternativeCalendar
        0x001021D0,  # LastMenstrualDate
        0x00080201,  # TimezoneOffsetFromUTC
    )
)

_FILE_META_REMOVED = frozenset(
    Tag(t)
    for t in (
        0x00020016,  # SourceApplicationEntityTitle
        0x00020017,  # SendingApplicationEntityTitle
        0x00020018,  # ReceivingApplicationEntityTitle
        0x00020100,  # PrivateInformationCreatorUID
        0x00020102,  # PrivateInformation
    )
)

_DUMMY_TEXT = "ANONYMIZED"
_DUMMY_BY_VR = {
    "PN": "ANONYMOUS",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "IS": "0",
    "DS": "0",
    "AS": "000D",
}
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT", "UR"})
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})


def _parse_table(text: str) -> dict[BaseTag, tuple[str, str]]:
    table: dict[BaseTag, tuple[str, str]] = {}
    for line in text.strip().splitlines():
        tag_text, keyword, action = line.split()
        group, element = tag_text.split(",")
        table[Tag(int(group, 16), int(element, 16))] = (keyword, action)
    return table


BASIC_PROFILE: dict[BaseTag, tuple[str, str]] = _parse_table(_TABLE)
"""The Basic Profile table: tag -> (keyword, action code as written in PS3.15 Table E.1-1)."""


def _resolve(action: str) -> str:
    """One concrete action for a compound code, for an image IOD.

    Z is preferred where the standard allows it (it keeps Type 2 attributes present but empty), X
    over D (no invented values), and U* (sequences of references) recurses into the items so the
    referenced UIDs are remapped consistently.
    """
    if action in ("X/Z", "Z/D", "X/Z/D"):
        return "Z"
    if action == "X/D":
        return "X"
    if action == "X/Z/U*":
        return "U"
    return action


_ACTIONS: dict[BaseTag, str] = {tag: _resolve(action) for tag, (_, action) in BASIC_PROFILE.items()}


class DeidentificationError(ValueError):
    """A dataset or value that cannot be de-identified safely (the message says why and what to do)."""


class Deidentifier:
    """Keyed, deterministic de-identification: UID remap, pseudonyms, date shift, Basic Profile.

    The same key always gives the same outputs, so repeated ingestions of one study link up; a
    different key gives unrelated outputs. The key is never printed (``repr`` shows a fingerprint).
    """

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError(f"Deidentifier key must be bytes, got {type(key).__name__}")
        if len(key) < MIN_KEY_BYTES:
            raise DeidentificationError(
                f"Deidentifier key is {len(key)} bytes; at least {MIN_KEY_BYTES} are required. "
                "Use load_or_create_key() to get a random 32-byte key."
            )
        self._key = bytes(key)
        self._uid_cache: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Deidentifier(key_id={self.key_id!r})"

    @property
    def key_id(self) -> str:
        """A short public fingerprint of the key (safe to record in metadata; reveals nothing)."""
        return hashlib.sha256(b"medcore-deid-key-id\0" + self._key).hexdigest()[:12]

    def _digest(self, domain: str, value: str) -> bytes:
        return hmac.new(self._key, domain.encode() + b"\0" + value.encode("utf-8"), hashlib.sha256).digest()

    # --- identifiers ---------------------------------------------------------------------------
    def uid(self, uid: str) -> str:
        """Remap a UID to ``2.25.<decimal of 128 keyed-hash bits>`` (at most 44 characters).

        Standard UIDs (``1.2.840.10008.*``: SOP classes, transfer syntaxes) identify no one and are
        returned unchanged so the output stays valid DICOM.
        """
        uid = str(uid).strip().rstrip("\0").strip()
        if not uid:
            return ""
        if uid.startswith(STANDARD_UID_ROOT):
            return uid
        cached = self._uid_cache.get(uid)
        if cached is None:
            number = int.from_bytes(self._digest("uid", uid)[:16], "big")
            cached = f"2.25.{number or 1}"
            if len(self._uid_cache) < 1_000_000:
                self._uid_cache[uid] = cached
        return cached

    def subject(self, patient_id: str) -> str:
        """A stable pseudonym for a patient: ``sub-`` + 10 hex characters."""
        return "sub-" + self._digest("subject", str(patient_id).strip()).hex()[:10]

    def session(self, study_uid: str) -> str:
        """A stable label for a study: ``ses-`` + 10 hex characters."""
        return "ses-" + self._digest("session", str(study_uid).strip()).hex()[:10]

    # --- dates ---------------------------------------------------------------------------------
    def date_shift_days(self, patient_id: str) -> int:
        """The per-patient shift in days, in ``-SHIFT_RANGE_DAYS..-1`` (always into the past)."""
        number = int.from_bytes(self._digest("date-shift", str(patient_id).strip())[:8], "big")
        return -(number % SHIFT_RANGE_DAYS) - 1

    def shift_date(self, value: str, patient_id: str) -> str:
        """Shift a DA (``YYYYMMDD``) or DT (``YYYYMMDD[HHMMSS[.F]]``) string by the patient's days.

        The time of day is kept; a UTC offset suffix is dropped (it locates the site). Partial dates
        (``YYYY`` or ``YYYYMM``) are completed with the first day before shifting. Several values
        separated by backslashes are shifted one by one.
        """
        text = str(value).strip()
        if "\\" in text:
            return "\\".join(self.shift_date(part, patient_id) for part in text.split("\\"))
        if not text:
            return ""
        days = self.date_shift_days(patient_id)
        match = _DATE_RE.fullmatch(text)
        if match is None:
            raise DeidentificationError(
                f"cannot shift date value {_redact(text)!r}: expected DA 'YYYYMMDD' or DT "
                "'YYYYMMDDHHMMSS.FFFFFF'; fix or remove the attribute before de-identifying"
            )
        year, month, day, rest = match.group("y", "m", "d", "rest")
        try:
            date = _dt.date(int(year), int(month or 1), int(day or 1))
        except ValueError as exc:
            raise DeidentificationError(
                f"cannot shift date value {_redact(text)!r}: {exc}; fix or remove the attribute"
            ) from exc
        shifted = date + _dt.timedelta(days=days)
        rest = re.split(r"[+-]", rest or "", maxsplit=1)[0]
        return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}{rest}"

    # --- datasets ------------------------------------------------------------------------------
    def patient_key(self, ds: Dataset) -> str:
        """The identity the pseudonym and date shift are derived from: PatientID, else name, else study."""
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID"):
            value = str(ds.get(keyword, "") or "").strip()
            if value:
                return value
        return ""

    def dataset(self, ds: Dataset) -> Dataset:
        """A de-identified copy of ``ds`` (the input is not modified; pixel data is shared, not copied).

        PatientName and PatientID become the subject pseudonym, UIDs are remapped with :meth:`uid`,
        dates shifted with :meth:`shift_date`, and every Basic Profile attribute gets its action.
        Raises :class:`DeidentificationError` for BurnedInAnnotation=YES, which no header edit fixes.
        """
        if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
            raise DeidentificationError(
                "BurnedInAnnotation is YES: identifying text is burned into the pixels and the Basic "
                "Profile cannot remove it; exclude this image or clean its pixels first"
            )
        patient = self.patient_key(ds)
        out = self._clean(ds, patient)
        pseudonym = self.subject(patient)
        out.PatientName = pseudonym
        out.PatientID = pseudonym
        out.PatientIdentityRemoved = "YES"
        out.LongitudinalTemporalInformationModified = "MODIFIED"
        out.DeidentificationMethod = METHOD_TEXT
        out.DeidentificationMethodCodeSequence = Sequence(
            [_code("113100", "Basic Application Confidentiality Profile"),
             _code("113107", "Retain Longitudinal Temporal Information Modified Dates Option")]
        )
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            out.file_meta = self._clean_file_meta(meta, out)
        return out

    def _clean(self, ds: Dataset, patient: str) -> Dataset:
        out = Dataset()
        for tag in list(ds.keys()):
            try:
                elem = ds[tag]
            except Exception:  # a value that cannot be parsed cannot be checked: leave it out
                continue
            new = self._element(elem, patient)
            if new is not None:
                out.add(new)
        return out

    def _element(self, elem: DataElement, patient: str) -> DataElement | None:
        tag = elem.tag
        if tag.is_private or tag.group == 0x0002:
            return None
        if any(lo <= tag.group <= hi for lo, hi in _REMOVED_GROUP_RANGES):
            return None
        vr = elem.VR
        action = _ACTIONS.get(tag)
        if vr == "UN" and action is None:  # an unknown public attribute: its content cannot be vetted
            return None
        if tag in _NEVER_RETAIN:
            return _zeroed(elem) if action == "Z" else None
        if vr == "SQ":
            if action == "X":
                return None
            if action == "Z":
                return DataElement(tag, "SQ", Sequence())
            return DataElement(tag, "SQ", Sequence([self._clean(item, patient) for item in elem.value or []]))
        if vr in ("DA", "DT"):
            return self._shifted(elem, patient)
        if vr == "TM":  # kept with shifted dates (modified-dates option); times alone identify no one
            return DataElement(tag, vr, elem.value)
        if action == "X":
            return None
        if vr == "UI":
            return DataElement(tag, vr, _map_values(elem.value, self.uid))
        if vr == "PN":  # any person name, listed or not
            return DataElement(tag, vr, "ANONYMOUS" if action == "D" else "")
        if action is None or action == "K":
            return DataElement(tag, vr, elem.value)
        if action == "U":  # a UID-bearing attribute not stored as UI: nothing safe to keep
            return None
        if action == "Z":
            return _zeroed(elem)
        if action == "D":
            return _dummy(elem)
        return None  # C (clean) without a cleaner for it: removing is the safe choice

    def _shifted(self, elem: DataElement, patient: str) -> DataElement | None:
        if elem.value in (None, ""):
            return DataElement(elem.tag, elem.VR, elem.value)
        values = elem.value if _is_multi(elem.value) else [elem.value]
        try:
            shifted = [self.shift_date(str(v), patient) for v in values]
        except DeidentificationError:
            return None  # an unreadable date cannot be shifted; drop it rather than leak it
        return DataElement(elem.tag, elem.VR, shifted if len(shifted) > 1 else shifted[0])

    def _clean_file_meta(self, meta: Dataset, out: Dataset) -> FileMetaDataset:
        new = FileMetaDataset()
        for elem in meta:
            if elem.tag in _FILE_META_REMOVED or elem.tag.is_private:
                continue
            value = elem.value
            if elem.tag == 0x00020003:
                value = out.get("SOPInstanceUID", self.uid(str(value)))
            new.add(DataElement(elem.tag, elem.VR, value))
        return new


_DATE_RE = re.compile(
    r"(?P<y>\d{4})\.?(?:(?P<m>\d{2})\.?(?:(?P<d>\d{2})(?P<rest>\d{0,6}(?:\.\d{1,6})?(?:[+-]\d{4})?)?)?)?"
)


def _redact(text: str) -> str:
    """Show only the shape of a bad value in an error message (digits become 9, letters X)."""
    return re.sub(r"[A-Za-z]", "X", re.sub(r"\d", "9", text))[:32]


def _is_multi(value: object) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _map_values(value: Any, func) -> object:
    if value is None or value == "":
        return value
    if _is_multi(value):
        return [func(str(v)) for v in value]
    return func(str(value))


def _zeroed(elem: DataElement) -> DataElement:
    return DataElement(elem.tag, elem.VR, None if elem.VR in _NUMERIC_VRS else "")


def _dummy(elem: DataElement) -> DataElement | None:
    vr = elem.VR
    if vr in _DUMMY_BY_VR:
        return DataElement(elem.tag, vr, _DUMMY_BY_VR[vr])
    if vr in _TEXT_VRS:
        return DataElement(elem.tag, vr, _DUMMY_TEXT)
    if vr in _NUMERIC_VRS:
        return DataElement(elem.tag, vr, 0)
    return None  # binary or unknown VR: no meaningful dummy, remove it


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


# --- the key ---------------------------------------------------------------------------------------
def default_key_path() -> Path:
    """``$XDG_CONFIG_HOME/medcore/deid.key`` (``~/.config/medcore/deid.key`` when unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "medcore" / "deid.key"


def _parse_hex_key(text: str, source: str) -> bytes:
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise DeidentificationError(
            f"de-identification key from {source} is not hexadecimal; "
            f"store {MIN_KEY_BYTES * 2}+ hex digits, e.g. from `python -c \"import secrets; "
            "print(secrets.token_hex(32))\"`"
        ) from exc
    if len(key) < MIN_KEY_BYTES:
        raise DeidentificationError(
            f"de-identification key from {source} has {len(key)} bytes; at least {MIN_KEY_BYTES} "
            "are required (64 hex digits recommended)"
        )
    return key


def _check_outside(path: Path, forbidden_roots: Iterable[str | os.PathLike]) -> None:
    resolved = path.expanduser().resolve()
    for root in forbidden_roots:
        root_path = Path(root).expanduser().resolve()
        if resolved == root_path or root_path in resolved.parents:
            raise DeidentificationError(
                f"de-identification key file {resolved} lies inside the data/output tree {root_path}; "
                f"keep the key elsewhere (default {default_key_path()}) or set ${KEY_ENV}"
            )


def load_or_create_key(
    path: str | os.PathLike | None = None, *, forbidden_roots: Iterable[str | os.PathLike] = ()
) -> bytes:
    """The de-identification key: ``$MEDCORE_DEID_KEY`` (hex) if set, else the key file.

    The key file (default :func:`default_key_path`) holds hex text with mode 0600; it is created
    with a fresh random 32-byte key when missing. A key file readable by group or others, or lying
    inside any of ``forbidden_roots`` (pass the input and output trees), is refused.
    """
    env = os.environ.get(KEY_ENV, "").strip()
    if env:
        return _parse_hex_key(env, f"${KEY_ENV}")
    key_path = Path(path).expanduser() if path is not None else default_key_path()
    _check_outside(key_path, forbidden_roots)
    if not key_path.exists():
        _create_key_file(key_path)
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        raise DeidentificationError(
            f"de-identification key file {key_path} has mode {mode:o}; it must be private: "
            f"run `chmod 600 {key_path}`"
        )
    return _parse_hex_key(key_path.read_text(encoding="ascii", errors="replace"), str(key_path))


def _create_key_file(key_path: Path) -> None:
    """Write a new random key with mode 0600; if another process won the race, keep theirs."""
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".deid.key.", dir=key_path.parent)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, key_path)  # fails if the file appeared meanwhile: never overwrite a key
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)

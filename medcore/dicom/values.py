"""DICOM element values as plain Python: numbers, text, times, image types and the acquisition header.

Every helper accepts a pydicom value or a :mod:`medcore.dicom.rawheader` value, and returns None
(or an empty result) for a value that is absent or cannot be parsed; none of them raises.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from medcore.dicom import rawheader

#: ImageType words marking a localizer (scout) image.
LOCALIZER_WORDS = frozenset({"LOCALIZER", "SCOUT", "SCANOGRAM", "TOPOGRAM", "SURVEY", "LOCALISER"})

#: Acquisition physics copied into ``Frame.header`` (no free text, no identifiers, no dates).
HEADER_KEYWORDS = (
    "Modality", "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
    "MagneticFieldStrength", "ImagingFrequency", "ImagedNucleus", "RepetitionTime", "EchoTime",
    "InversionTime", "FlipAngle", "EchoTrainLength", "PixelBandwidth", "ScanningSequence",
    "SequenceVariant", "ScanOptions", "MRAcquisitionType", "SequenceName", "AcquisitionMatrix",
    "InPlanePhaseEncodingDirection", "PercentPhaseFieldOfView", "PercentSampling",
    "NumberOfAverages", "SliceThickness", "SpacingBetweenSlices", "KVP", "ConvolutionKernel",
    "ExposureTime", "XRayTubeCurrent", "Exposure", "ReconstructionDiameter",
    "SpiralPitchFactor", "GantryDetectorTilt", "TableHeight", "BodyPartExamined",
    "PatientPosition", "ReceiveCoilName", "TransmitCoilName", "PhotometricInterpretation",
    "BitsStored", "RescaleType", "ImageType",
)


def _is_multi(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def first(value: Any) -> Any:
    """First item of a multi-valued element, or the value itself."""
    if value is None:
        return None
    if _is_multi(value):
        return value[0] if len(value) else None
    return value


def as_float(value: Any) -> float | None:
    """A DS/FD/IS value (or its first item) as float, None when absent or unparsable."""
    value = first(value)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def as_int(value: Any) -> int | None:
    """An IS/US value (or its first item) as int, None when absent or unparsable."""
    value = first(value)
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def as_floats(value: Any, n: int) -> tuple[float, ...] | None:
    """Exactly ``n`` finite floats from a multi-valued element, else None."""
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(np.isfinite(out)):
        return None
    return out


def as_text(value: Any) -> str:
    """A value as stripped text; ``""`` when absent."""
    if value is None:
        return ""
    return str(value).strip()


def json_value(value: Any) -> Any:
    """A pydicom value as a JSON-friendly scalar or list (None when not representable)."""
    if value is None or value == "":
        return None
    if isinstance(value, (bytes, bytearray)):
        return None
    if _is_multi(value):
        items = [json_value(v) for v in value]
        return items if all(i is not None for i in items) else None
    if isinstance(value, (int, float, str)):
        if isinstance(value, float) or type(value).__name__ in ("DSfloat", "DSdecimal"):
            return float(value)
        if type(value).__name__ == "IS" or isinstance(value, int):
            return int(value)
        return str(value).strip()
    try:  # PersonName and similar never belong here; other types become strings
        return str(value).strip()
    except Exception:  # pragma: no cover - defensive
        return None


def acquisition_header(ds: Any) -> dict[str, Any]:
    """The non-PHI acquisition attributes of ``ds`` (see :data:`HEADER_KEYWORDS`)."""
    out = {}
    for kw in HEADER_KEYWORDS:
        value = json_value(ds.get(kw))
        if value is not None:
            out[kw] = value
    return out


_HEADER_TAGS: frozenset[int] = frozenset()


class LazyHeader(Mapping[str, Any]):
    """:func:`acquisition_header` of a fast-read header, computed on first use.

    Converting ~40 values per file is a fifth of a header scan, yet conversion reads the
    header of one frame per series. Only the raw elements of :data:`HEADER_KEYWORDS` are kept
    (no identifiers); a pickled copy (a worker's result) is the computed plain dict.
    """

    __slots__ = ("_source", "_data")

    def __init__(self, source: rawheader.RawHeader) -> None:
        global _HEADER_TAGS
        if not _HEADER_TAGS:
            _HEADER_TAGS = frozenset(rawheader.tag(kw) for kw in HEADER_KEYWORDS)
        self._source: rawheader.RawHeader | None = source.subset(_HEADER_TAGS)
        self._data: dict[str, Any] | None = None

    def _dict(self) -> dict[str, Any]:
        if self._data is None:
            self._data = acquisition_header(self._source)
            self._source = None
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return repr(self._dict())

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (self._dict(),)


def image_type(value: Any) -> tuple[str, ...]:
    """ImageType (or FrameType) values, upper case."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split("\\")
    return tuple(as_text(v).upper() for v in value)


def is_localizer(image_type: tuple[str, ...]) -> bool:
    """True when an ImageType word marks a localizer (scout, topogram, survey ...)."""
    return any(w in LOCALIZER_WORDS for w in image_type)


def time_only(value: Any) -> str | None:
    """HHMMSS.FFFFFF from a TM or DT value, dropping any date (dates may identify a patient)."""
    text = as_text(value)
    if not text:
        return None
    if len(text) >= 14 and text[:8].isdigit():  # DT: YYYYMMDDHHMMSS...
        text = text[8:]
    return text.split("+")[0].split("-")[0] or None


def private_number(elem: Any) -> Any:
    """Value of a private numeric element that may be stored as raw bytes (UN)."""
    value = elem.value
    if isinstance(value, bytes):
        text = value.decode("latin-1").strip("\x00 ")
        if text and all(ch in "0123456789+-.eE\\ " for ch in text):
            return as_float(text.split("\\")[0])
        if elem.VR in ("UN", "OB") and len(value) in (4, 8):
            fmt = "<i" if len(value) == 4 else "<d"
            try:
                return struct.unpack(fmt, value)[0]
            except struct.error:
                return None
        try:
            return float(value.decode("ascii", "ignore").strip("\x00 ").split("\\")[0])
        except ValueError:
            return None
    return value


def private_float(elem: Any) -> float | None:
    """A private FL/FD element, also when stored as raw bytes (implicit VR, unknown to the dictionary)."""
    value = elem.value
    if isinstance(value, bytes):
        if len(value) in (4, 8):
            return float(struct.unpack("<f" if len(value) == 4 else "<d", value)[0])
        return None
    return as_float(value)


def private_numbers(elem: Any) -> Any:
    """Values of a private multi-valued FD element that may be stored as raw bytes (UN)."""
    value = elem.value
    if isinstance(value, bytes):
        if len(value) % 8 == 0 and len(value) >= 24:
            return tuple(np.frombuffer(value, "<f8").tolist())
        return None
    return value


#: Enhanced image storage SOP classes (functional groups describe every frame).
ENHANCED_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET
    "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume
    "1.2.840.10008.5.1.4.1.1.12.1.1",  # Enhanced XA
    "1.2.840.10008.5.1.4.1.1.12.2.1",  # Enhanced XRF
})
#: Legacy Converted Enhanced CT, MR and PET: classic images repackaged as one multi-frame object.
LEGACY_ENHANCED_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.2.2", "1.2.840.10008.5.1.4.1.1.4.4", "1.2.840.10008.5.1.4.1.1.128.1",
})


def sop_family(sop_class_uid: str) -> str:
    """``"enhanced"``, ``"legacy_enhanced"`` or ``"classic"``: how a SOP class stores an acquisition.

    A scanner may export one acquisition in several families under one SeriesInstanceUID; the
    copies are never merged.
    """
    if sop_class_uid in ENHANCED_SOP_CLASSES:
        return "enhanced"
    if sop_class_uid in LEGACY_ENHANCED_SOP_CLASSES:
        return "legacy_enhanced"
    return "classic"


def uid_problem(text: str) -> str | None:
    """Why ``text`` breaks the DICOM UI value rules (PS3.5 9.1), or None when it is a valid UID.

    At most 64 characters; components of digits separated by single dots; no component starts
    with 0 unless it is 0. An empty value is not judged here (absent is not corrupt).
    """
    if not text:
        return None
    if len(text) > 64:
        return f"is {len(text)} characters long (at most 64)"
    for part in text.split("."):
        if not part:
            return "has an empty component"
        if not (part.isascii() and part.isdigit()):
            return "holds characters other than digits and dots"
        if len(part) > 1 and part[0] == "0":
            return "has a component with a leading zero"
    return None


def non_finite(value: Any) -> bool:
    """True when a present numeric value (or any item of it) is not a finite number."""
    if value is None or value == "":
        return False
    items = value if _is_multi(value) else [value]
    for item in items:
        try:
            if not np.isfinite(float(item)):
                return True
        except (TypeError, ValueError):
            return True
    return False

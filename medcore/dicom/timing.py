"""BIDS timing and phase-encoding fields of an MR series, as dcm2niix derives them.

``SliceTiming`` (seconds, one per output slice in the volume's slice order) comes from the
Siemens mosaic CSA ``MosaicRefAcqTimes`` or from the per-slice acquisition times of Siemens
files (enhanced per-frame times, classic AcquisitionTime). ``PhaseEncodingDirection`` needs the
phase axis (InPlanePhaseEncodingDirection) and its polarity (Siemens ``PhaseEncodingDirection
Positive``); medcore volumes keep DICOM's row order, so the polarity is not flipped as in
dcm2niix's row-flipped images. ``TotalReadoutTime`` is the effective echo spacing times
(ReconMatrixPE - 1), the spacing from Siemens' BandwidthPerPixelPhaseEncode or GE's effective echo
spacing. A field that cannot be derived is absent, and :func:`timing_fields` says why.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from medcore.dicom import mosaic
from medcore.dicom.frame import Frame
from medcore.dicom.values import as_float, as_floats, as_int, as_text

_CSA_NAMES = frozenset({"MosaicRefAcqTimes", "PhaseEncodingDirectionPositive", "BandwidthPerPixelPhaseEncode"})
_SIEMENS_BWPPPE = (0x00191028, 0x00211153)  # classic private header, XA enhanced per-frame group
_SIEMENS_PE_POSITIVE = 0x0021111C
_GE_ECHO_SPACING = 0x0043102C  # microseconds
_GE_ASSET = 0x00431083
_PHASE_AXIS = 0x00181312


def find(ds: Any, tag: int, depth: int = 2) -> Any:
    """Value of ``tag`` in ``ds`` or in the first item of its sequences (functional groups), or None."""
    if ds is None:
        return None
    if tag in ds:
        return ds[tag].value
    if depth == 0:
        return None
    for elem in ds:
        if elem.VR == "SQ" and elem.value:
            found = find(elem.value[0], tag, depth - 1)
            if found is not None:
                return found
    return None


def _siemens_csa(ds: Any) -> dict[str, list[str]]:
    raw = find(ds, 0x00291010, 0)
    try:
        return mosaic.parse_csa(raw, _CSA_NAMES) if raw is not None else {}
    except (ValueError, struct.error):
        return {}


def _seconds(hhmmss: str | None) -> float | None:
    """Seconds since midnight of an HHMMSS.FFFFFF time."""
    if not hhmmss or len(hhmmss) < 6 or not hhmmss[:6].isdigit():
        return None
    try:
        return int(hhmmss[:2]) * 3600 + int(hhmmss[2:4]) * 60 + float(hhmmss[4:])
    except ValueError:
        return None


def _phase_axis(header: Mapping[str, Any], ds: Any) -> str | None:
    """'i' (phase along a row) or 'j' (along a column) in medcore's (column, row, slice) voxel axes."""
    text = as_text(header.get("InPlanePhaseEncodingDirection") or find(ds, _PHASE_AXIS)).upper()
    return {"ROW": "i", "COL": "j", "COLUMN": "j"}.get(text)


def _volume_times(volume: Sequence[Frame], csa: Mapping[str, list[str]]) -> list[float] | str:
    """Acquisition time (s) of each slice of one volume, or why there is none."""
    if volume[0].is_mosaic:
        times = csa.get("MosaicRefAcqTimes") or []
        if len(times) < max(f.frame_index for f in volume) + 1:
            return "the Siemens mosaic has no MosaicRefAcqTimes for every slice in its CSA header"
        return [float(times[f.frame_index]) / 1000.0 for f in volume]
    seconds = [_seconds(f.acquisition_time) for f in volume]
    if any(s is None for s in seconds):
        return "a slice has no acquisition time"
    out = [float(s or 0.0) for s in seconds]
    if max(out) - min(out) > 43200:  # the volume straddles midnight
        out = [s + 86400 if s < 43200 else s for s in out]
    return out


def slice_timing(volumes: Sequence[Sequence[Frame]], vendor: str, csas: Sequence[Mapping[str, list[str]]],
                 repetition_time: float | None) -> tuple[list[float] | None, str]:
    """Seconds per output slice (relative to the first excitation), or None and the reason.

    As dcm2niix does, the first volume's times are used unless they look wrong (no spread, longer
    than TR, or a spread unlike the second volume's, which Siemens gets right more often); then
    the second volume's times are used when they look right.
    """
    if "SIEMENS" not in vendor.upper():
        return None, (f"{vendor or 'this scanner'} stores no per-slice acquisition times that medcore reads "
                      "(dcm2niix infers them from the vendor's protocol data, or does not report them)")
    found = [_volume_times(v, c) for v, c in zip(volumes, csas)]
    times = [t for t in found if not isinstance(t, str)]
    if not times or isinstance(found[0], str):
        return None, found[0] if isinstance(found[0], str) else "no slice times"
    tr = repetition_time if repetition_time is not None else float("inf")

    def spread(t: list[float]) -> float:
        return max(t) - min(t)

    def plausible(t: list[float]) -> bool:
        return 0.0 < spread(t) <= tr

    first = times[0]
    second = times[1] if len(times) > 1 else None
    chosen = first
    if second is not None and (not plausible(first) or abs(spread(first) - spread(second)) > 1e-4):
        chosen = second if plausible(second) else first
    if not plausible(chosen):
        return None, "the slice acquisition times have no spread or span more than one repetition time"
    start = min(chosen)
    return [round(t - start, 6) for t in chosen], ""


def total_readout_time(first: Frame, vendor: str, ds: Any, csa: Mapping[str, list[str]],
                       axis: str | None) -> tuple[float | None, str]:
    """(TotalReadoutTime in seconds, "") or (None, reason)."""
    if axis is None:
        return None, "the phase-encoding axis is not known"
    recon_pe = first.rows if axis == "j" else first.cols
    if "SIEMENS" in vendor.upper():
        bw = next((as_float(v) for v in (find(ds, t) for t in _SIEMENS_BWPPPE) if v is not None), None)
        if bw is None and csa.get("BandwidthPerPixelPhaseEncode"):
            bw = as_float(csa["BandwidthPerPixelPhaseEncode"][0])
        if not bw or bw <= 0:
            return None, "no BandwidthPerPixelPhaseEncode in the Siemens header"
        return round((recon_pe - 1) / (bw * recon_pe), 7), ""
    if vendor.upper().startswith("GE"):
        spacing = as_float(find(ds, _GE_ECHO_SPACING))
        asset = as_floats(find(ds, _GE_ASSET), 2)
        if not spacing or spacing <= 0:
            return None, "no effective echo spacing (0043,102C) in the GE header"
        if asset is not None and any(a not in (0.0, 1.0) for a in asset):
            return None, "GE ASSET acceleration is on; its effect on the echo spacing is not validated here"
        return round(spacing * 1e-6 * (recon_pe - 1), 7), ""
    return None, f"{vendor or 'this scanner'} stores no echo spacing that medcore reads"


def timing_fields(volumes: Sequence[Sequence[Frame]], datasets: Sequence[Any],
                  resampled: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """(BIDS fields, {field: why absent}) from the first (and second) volume's frames in output slice order.

    ``datasets[v]`` is the pydicom header of the first file of ``volumes[v]`` (private and nested
    elements are read from it). Only MR series get these fields; anything else gets an empty pair.
    """
    volume, ds = volumes[0], datasets[0]
    first = volume[0]
    header = first.header or {}
    if first.modality != "MR":
        return {}, {}
    fields: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    vendor = as_text(header.get("Manufacturer"))
    csas = [_siemens_csa(d) if "SIEMENS" in vendor.upper() else {} for d in datasets]
    csa = csas[0]
    three_d = as_text(header.get("MRAcquisitionType")).upper() == "3D"
    tr = as_float(header.get("RepetitionTime"))
    tr_s = tr / 1000.0 if tr else None
    if three_d:
        reasons["SliceTiming"] = "3D acquisition: slices are not excited at separate times"
    elif len(volume) < 2:
        reasons["SliceTiming"] = "a single slice"
    elif resampled:
        reasons["SliceTiming"] = "the stack was resampled along the slice axis, so slices are not acquired slices"
    else:
        times, why = slice_timing(volumes, vendor, csas, tr_s)
        if times is None:
            reasons["SliceTiming"] = why
        else:
            fields["SliceTiming"] = times
    axis = _phase_axis(header, ds)
    if three_d and (as_int(header.get("EchoTrainLength")) or 1) <= 1:
        reasons["PhaseEncodingDirection"] = "3D acquisition without an echo train"
    elif axis is None:
        reasons["PhaseEncodingDirection"] = "InPlanePhaseEncodingDirection is not in the header"
    else:
        positive = as_int(find(ds, _SIEMENS_PE_POSITIVE))
        if positive is None and csa.get("PhaseEncodingDirectionPositive"):
            positive = as_int(csa["PhaseEncodingDirectionPositive"][0])
        if positive in (0, 1):
            fields["PhaseEncodingDirection"] = axis + ("" if positive == 1 else "-")
        else:
            fields["PhaseEncodingAxis"] = axis
            reasons["PhaseEncodingDirection"] = ("the polarity of phase encoding is not stored (only Siemens "
                                                 "headers give it); PhaseEncodingAxis is written instead")
    trt, why = total_readout_time(first, vendor, ds, csa, axis)
    if trt is None:
        reasons["TotalReadoutTime"] = why
    else:
        fields["TotalReadoutTime"] = trt
    return fields, reasons

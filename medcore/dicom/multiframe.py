"""Multi-frame files expanded into one Frame per frame.

Enhanced objects (Enhanced MR/CT/PET, ...) describe each frame with functional group macros:
a per-frame item overrides the shared one. Classic multi-frame objects without functional groups
place frames along the normal (NM SliceVector, RT GridFrameOffsetVector) or in time.
"""

from __future__ import annotations

import numpy as np

from medcore.dicom.frame import Frame, UnsupportedDicomError, with_changes
from medcore.dicom.values import (
    HEADER_KEYWORDS,
    as_float,
    as_floats,
    as_int,
    image_type,
    is_localizer,
    json_value,
    non_finite,
    time_only,
)

PLANE_POSITION = 0x00209113
PLANE_ORIENTATION = 0x00209116
PIXEL_MEASURES = 0x00289110
PIXEL_VALUE_TRANSFORMATION = 0x00289145
MR_ECHO = 0x00189114
FRAME_CONTENT = 0x00209111
MR_DIFFUSION = 0x00189117
CARDIAC_SYNC = 0x00189118
FRAME_TYPE_SEQUENCES = (0x00189226, 0x00189329, 0x00189751, 0x00189412, 0x00189504)
PHILIPS_PER_FRAME = 0x2005140F
GRID_FRAME_OFFSET = 0x3004000C
SLICE_VECTOR = 0x00540080


def is_multiframe(ds) -> bool:
    """True for files holding more than one frame, or any enhanced (functional group) object."""
    return (as_int(ds.get("NumberOfFrames")) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds


def _item(seq_elem):
    """First item of a sequence element, or None."""
    if seq_elem is None:
        return None
    value = seq_elem.value if hasattr(seq_elem, "value") else seq_elem
    try:
        return value[0] if len(value) else None
    except TypeError:
        return None


def _macro(per, shared, tag):
    """The macro item for ``tag``: per-frame first, then shared."""
    for group in (per, shared):
        if group is not None and tag in group:
            item = _item(group[tag])
            if item is not None:
                return item
    return None


def _shared_header(shared) -> dict:
    """Acquisition attributes nested one level inside the shared functional groups."""
    out: dict = {}
    if shared is None:
        return out
    for elem in shared:
        if elem.VR != "SQ":
            continue
        item = _item(elem)
        if item is None:
            continue
        for kw in HEADER_KEYWORDS:
            if kw in item and kw not in out:
                value = json_value(item.get(kw))
                if value is not None:
                    out[kw] = value
    return out


def _geometry(item, keyword: str, n: int, base: dict) -> tuple[float, ...] | None:
    """IPP or IOP of a functional group item; values that are not finite numbers are damage."""
    value = item.get(keyword)
    if non_finite(value):
        raise UnsupportedDicomError(
            base["path"], f"a frame's {keyword} holds values that are not finite numbers: the file is damaged; "
            "re-export or re-copy it", "corrupt_identity")
    return as_floats(value, n)


def _frame_fields(per, shared, base: dict) -> dict:
    """Frame fields that the functional groups of one frame override."""
    f: dict = {}
    item = _macro(per, shared, PLANE_POSITION)
    if item is not None:
        f["ipp"] = _geometry(item, "ImagePositionPatient", 3, base)
    item = _macro(per, shared, PLANE_ORIENTATION)
    if item is not None:
        f["iop"] = _geometry(item, "ImageOrientationPatient", 6, base)
    item = _macro(per, shared, PIXEL_MEASURES)
    if item is not None:
        f["pixel_spacing"] = as_floats(item.get("PixelSpacing"), 2) or base["pixel_spacing"]
        thick = as_float(item.get("SliceThickness"))
        f["slice_thickness"] = thick if thick is not None else base["slice_thickness"]
        sbs = as_float(item.get("SpacingBetweenSlices"))
        f["spacing_between_slices"] = sbs if sbs is not None else base["spacing_between_slices"]
    item = _macro(per, shared, PIXEL_VALUE_TRANSFORMATION)
    if item is not None:
        slope, intercept = as_float(item.get("RescaleSlope")), as_float(item.get("RescaleIntercept"))
        f["slope"] = 1.0 if slope is None or slope == 0.0 else slope
        f["intercept"] = 0.0 if intercept is None else intercept
    item = _macro(per, shared, MR_ECHO)
    if item is not None:
        te = as_float(item.get("EffectiveEchoTime"))
        if te is not None:
            f["echo_time"] = te
    item = _macro(per, shared, FRAME_CONTENT)
    if item is not None:
        tpi = as_int(item.get("TemporalPositionIndex"))
        if tpi is not None:
            f["temporal_position"] = tpi
        acq = as_int(item.get("FrameAcquisitionNumber"))
        if acq is not None:
            f["acquisition_number"] = acq
        when = time_only(item.get("FrameAcquisitionDateTime"))
        if when:
            f["acquisition_time"] = when
        div = item.get("DimensionIndexValues")
        if div is not None:
            try:
                f["dimension_index"] = tuple(int(v) for v in (div if hasattr(div, "__len__") else [div]))
            except (TypeError, ValueError):
                pass
    item = _macro(per, shared, MR_DIFFUSION)
    if item is not None:
        b = as_float(item.get("DiffusionBValue"))
        if b is not None:
            f["diffusion_bvalue"] = b
        grad = _item(item.get("DiffusionGradientDirectionSequence"))
        if grad is not None:
            f["diffusion_gradient"] = as_floats(grad.get("DiffusionGradientOrientation"), 3)
        elif b is not None and b == 0:
            f["diffusion_gradient"] = None
    item = _macro(per, shared, CARDIAC_SYNC)
    if item is not None:
        delay = as_float(item.get("NominalCardiacTriggerDelayTime"))
        if delay is not None:
            f["trigger_time"] = delay
    for tag in FRAME_TYPE_SEQUENCES:
        item = _macro(per, shared, tag)
        if item is not None and "FrameType" in item:
            f["image_type"] = image_type(item.get("FrameType"))
            f["is_localizer"] = is_localizer(f["image_type"])
            break
    philips = _macro(per, None, PHILIPS_PER_FRAME)
    if philips is not None:
        echo = as_int(philips.get("EchoNumbers"))
        if echo is not None:
            f["echo_number"] = echo
    return f


def expand(ds, base: dict) -> list[Frame]:
    """One :class:`Frame` per stored frame of a multi-frame file."""
    n = as_int(ds.get("NumberOfFrames")) or 1
    shared = _item(ds.get("SharedFunctionalGroupsSequence"))
    per_seq = ds.get("PerFrameFunctionalGroupsSequence")
    per_items = list(per_seq) if per_seq is not None else []
    if per_items and len(per_items) != n:
        raise UnsupportedDicomError(
            base["path"],
            f"NumberOfFrames is {n} but PerFrameFunctionalGroupsSequence has {len(per_items)} items",
            "inconsistent_frames",
        )
    fields = dict(base, number_of_frames=n)
    if shared is not None or per_items:
        header = dict(base["header"])
        for k, v in _shared_header(shared).items():
            header.setdefault(k, v)
        fields["header"] = header
        proto = Frame(**fields)
        out = []
        for i in range(n):
            f = _frame_fields(per_items[i] if per_items else None, shared, base)
            if "echo_time" in f:
                f["header"] = dict(header, EchoTime=f["echo_time"])
            out.append(with_changes(proto, frame_index=i, **f))
        return out
    return _classic(ds, fields, n)


def _classic(ds, fields: dict, n: int) -> list[Frame]:
    """Frames of a multi-frame object without functional groups."""
    proto = Frame(**fields)
    iop, ipp = proto.iop, proto.ipp
    pointers = ds.get("FrameIncrementPointer")
    if pointers is None:
        pointers = []
    elif not isinstance(pointers, (list, tuple)) and type(pointers).__name__ != "MultiValue":
        pointers = [pointers]
    pointers = {int(t) for t in pointers}
    offsets = None
    if GRID_FRAME_OFFSET in ds and iop is not None and ipp is not None:
        offsets = [float(v) for v in ds[GRID_FRAME_OFFSET].value]
        # Relative offsets start at 0; absolute ones start at the first frame's position.
        offsets = [o - offsets[0] for o in offsets]
    elif SLICE_VECTOR in pointers and iop is not None and ipp is not None:
        step = proto.spacing_between_slices or proto.slice_thickness
        if step:
            offsets = [i * step for i in range(n)]
    out = []
    if offsets is not None and len(offsets) == n and iop is not None and ipp is not None:
        normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
        normal /= np.linalg.norm(normal)
        for i in range(n):
            pos = tuple(float(v) for v in np.asarray(ipp) + offsets[i] * normal)
            out.append(with_changes(proto, frame_index=i, ipp=pos))
        return out
    # Frames in time at one position (cine, dynamic): number them as temporal positions.
    return [with_changes(proto, frame_index=i, temporal_position=i + 1) for i in range(n)]

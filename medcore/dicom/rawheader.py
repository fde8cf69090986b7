"""A fast, read-only header parser for the common case of ``read_frames``.

It walks the top-level data elements of little-endian files (explicit or implicit VR; native or
encapsulated pixel data) up to the pixel data element, keeping only the wanted tags, and records
where the pixel data value starts. It returns None for anything unusual (big endian, deflate,
enhanced multi-frame, odd encodings, damage), and the caller then uses pydicom. The object it
returns answers the small part of pydicom's ``Dataset`` interface that the frame readers use.
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.datadict import dictionary_VR, tag_for_keyword

_EXPLICIT_LONG = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_VALID_VR = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
    b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US", b"SV", b"UV",
} | _EXPLICIT_LONG
_VR_TEXT = {vr: vr.decode("ascii") for vr in _VALID_VR}
_TEXT_SINGLE = {"LT", "ST", "UT", "UR"}
_NUMERIC = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "AT": "I", "SV": "q", "UV": "Q"}
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
#: Syntaxes whose data set is explicit VR little endian (all but implicit, big endian, deflate).
_IMPLICIT = "1.2.840.10008.1.2"
_FALLBACK_SYNTAXES = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
_UNDEFINED = 0xFFFFFFFF
_EXPLICIT_HEADER = struct.Struct("<HH2sH")
_IMPLICIT_HEADER = struct.Struct("<HHI")
_LONG = struct.Struct("<I")
FIRST_CHUNK = 16384


class _Skip(Exception):
    """The file needs the full pydicom reader."""


class Truncated(Exception):
    """The file ends inside a data element before any pixel data: it was cut short."""


class RawElement:
    """A data element: ``tag``, ``VR`` and the converted ``value``."""

    __slots__ = ("tag", "VR", "_raw", "_value", "_done")

    def __init__(self, tag: int, vr: str, raw: bytes):
        self.tag, self.VR, self._raw, self._done = tag, vr, raw, False

    @property
    def value(self):
        if not self._done:
            self._value, self._done = _convert(self.VR, self._raw), True
        return self._value


def _convert(vr: str, raw: bytes):
    """Bytes of one element converted the way pydicom would (numbers, strings, lists)."""
    if vr in _NUMERIC:
        fmt = _NUMERIC[vr]
        size = struct.calcsize(fmt)
        n = len(raw) // size
        if n == 0:
            return None
        values = struct.unpack(f"<{n}{fmt}", raw[: n * size])
        return values[0] if n == 1 else list(values)
    if vr in ("OB", "OW", "UN", "OF", "OD", "OL", "OV", "SQ"):
        return raw
    text = raw.decode("utf-8", "replace") if vr in ("LO", "SH", "PN", "LT", "ST", "UT", "UC") else raw.decode("latin-1")
    text = text.rstrip("\x00 ").lstrip() if vr not in _TEXT_SINGLE else text.rstrip("\x00 ")
    if vr in _TEXT_SINGLE:
        return text
    parts = [p.strip() for p in text.split("\\")] if "\\" in text else [text.strip()]
    if vr == "DS":
        parts = [_num(p, float) for p in parts]
    elif vr == "IS":
        parts = [_num(p, int) for p in parts]
    if len(parts) == 1:
        return parts[0]
    return parts


def _num(text: str, kind):
    if text == "":
        return None
    try:
        return kind(text) if kind is float else int(float(text))
    except ValueError:
        return text


class RawHeader:
    """The wanted elements of one file's top-level data set, keyed by tag."""

    def __init__(self, elements: dict[int, RawElement], tsuid: str):
        self._elements = elements
        self.transfer_syntax_uid = tsuid

    def __contains__(self, key) -> bool:
        return tag(key) in self._elements

    def __getitem__(self, key) -> RawElement:
        return self._elements[tag(key)]

    def get(self, key, default=None):
        """Keyword -> value (like pydicom); integer tag -> element."""
        number = _KEYWORD_TAGS.get(key)  # the hot path: a known keyword
        if number is None:
            if isinstance(key, int):
                return self._elements.get(key, default)
            number = tag(key)
        elem = self._elements.get(number)
        if elem is None:
            return default
        return elem._value if elem._done else elem.value

    def __iter__(self):
        return iter(self._elements.values())

    def subset(self, tags: frozenset[int]) -> RawHeader:
        """A header holding only the elements of ``tags`` that this one has."""
        return RawHeader({t: e for t, e in self._elements.items() if t in tags}, self.transfer_syntax_uid)


_KEYWORD_TAGS: dict[str, int] = {}


def tag(key: int | str) -> int:
    """The integer tag of a keyword (-1 when unknown); integers are returned as they are."""
    if isinstance(key, int):
        return key
    number = _KEYWORD_TAGS.get(key)
    if number is None:
        number = tag_for_keyword(key) or -1
        _KEYWORD_TAGS[key] = number
    return number


_VR_CACHE: dict[int, str] = {}


def _dictionary_vr(tag: int) -> str:
    vr = _VR_CACHE.get(tag)
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
        if vr not in _NUMERIC and len(vr) != 2:  # ambiguous such as "US or SS"
            vr = vr.split(" ")[0] if " " in vr else "UN"
        _VR_CACHE[tag] = vr
    return vr


def _skip_undefined(buf: bytes, pos: int, implicit: bool) -> int:
    """Position just after an undefined-length value (sequence or encapsulated) at ``pos``."""
    while True:
        if pos + 8 > len(buf):
            raise _Skip("undefined-length value runs past the chunk")
        group, elem, length = struct.unpack_from("<HHI", buf, pos)
        tag = group << 16 | elem
        pos += 8
        if tag == 0xFFFEE0DD:  # sequence delimiter
            return pos
        if tag != 0xFFFEE000:
            raise _Skip(f"unexpected tag {tag:08X} inside a sequence")
        if length != _UNDEFINED:
            pos += length
            continue
        pos = _skip_item(buf, pos, implicit)


def _skip_item(buf: bytes, pos: int, implicit: bool) -> int:
    """Position after an undefined-length item starting at ``pos`` (its first element)."""
    while True:
        if pos + 8 > len(buf):
            raise _Skip("item runs past the chunk")
        group, elem = struct.unpack_from("<HH", buf, pos)
        tag = group << 16 | elem
        if tag == 0xFFFEE00D:  # item delimiter
            return pos + 8
        _, _, length, pos = _element_header(buf, pos, implicit)
        if length == _UNDEFINED:
            pos = _skip_undefined(buf, pos, implicit)
        else:
            pos += length


def _element_header(buf: bytes, pos: int, implicit: bool):
    """(tag, vr, length, value position) of the element at ``pos``."""
    group, elem = struct.unpack_from("<HH", buf, pos)
    tag = group << 16 | elem
    if implicit or group == 0xFFFE:
        (length,) = struct.unpack_from("<I", buf, pos + 4)
        return tag, None, length, pos + 8
    vr = buf[pos + 4 : pos + 6]
    if vr in _EXPLICIT_LONG:
        (length,) = struct.unpack_from("<I", buf, pos + 8)
        return tag, vr, length, pos + 12
    if vr not in _VALID_VR:
        raise _Skip(f"invalid VR {vr!r}")
    (length,) = struct.unpack_from("<H", buf, pos + 6)
    return tag, vr, length, pos + 8


def parse(path: Path, wanted: frozenset[int], fallback_tags: frozenset[int]):
    """``(RawHeader, pixel, size)`` for a plain little-endian file, or None to use pydicom.

    Raises :class:`Truncated` when the file ends inside its header.

    ``pixel`` is ``(tag, value offset, length)`` or None when the file has no pixel data.
    Seeing any tag of ``fallback_tags`` (e.g. functional group sequences) returns None.
    """
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(0)
            return parse_open(fh, fh.read(FIRST_CHUNK), size, wanted, fallback_tags)
    except OSError:
        return None


def parse_open(fh, first: bytes, size: int, wanted: frozenset[int], fallback_tags: frozenset[int]):
    """:func:`parse` on an open binary file whose first bytes (``first``) are already read.

    Reads more of ``fh`` only when the header runs past ``first``, so a file is opened once.
    """
    buf = first
    chunk = max(len(first), 1)
    try:
        while True:
            try:
                return _parse(buf, wanted, fallback_tags, size)
            except _NeedMore:
                if len(buf) >= size:
                    return None
                chunk *= 8
                fh.seek(len(buf))
                buf += fh.read(chunk - len(buf))
    except (_Skip, struct.error, OSError, UnicodeDecodeError, ValueError):
        return None


class _NeedMore(Exception):
    pass


def _parse(buf: bytes, wanted, fallback_tags, size: int):
    pos = 132 if buf[128:132] == b"DICM" else 0
    tsuid = ""
    # File meta (always explicit VR little endian).
    while pos + 8 <= len(buf) and buf[pos : pos + 2] == b"\x02\x00":
        tag, vr, length, vpos = _element_header(buf, pos, False)
        if length == _UNDEFINED or vpos + length > len(buf):
            raise _Skip("odd file meta")
        if tag == 0x00020010:
            tsuid = buf[vpos : vpos + length].decode("ascii", "replace").rstrip("\x00 ")
        pos = vpos + length
    if tsuid in _FALLBACK_SYNTAXES:
        raise _Skip("syntax handled by pydicom")
    if not tsuid:
        if pos != 0:
            raise _Skip("meta without a transfer syntax")
        implicit = buf[4:6] not in _VALID_VR
    else:
        implicit = tsuid == _IMPLICIT
    elements: dict[int, RawElement] = {}
    pixel = None
    end = len(buf)
    unpack_explicit = _EXPLICIT_HEADER.unpack_from
    unpack_implicit = _IMPLICIT_HEADER.unpack_from
    unpack_long = _LONG.unpack_from
    while True:
        if pos + 8 > end:
            if end < size:
                raise _NeedMore
            if pos < end:
                raise Truncated(f"the file ends inside an element header at byte {pos} of {size}")
            break  # clean end of file: no pixel data
        if implicit:
            group, elem, length = unpack_implicit(buf, pos)
            vr = None
            vpos = pos + 8
        else:
            group, elem, vr, length = unpack_explicit(buf, pos)
            if vr in _EXPLICIT_LONG:
                if pos + 12 > end:
                    if end < size:
                        raise _NeedMore
                    raise Truncated(f"the file ends inside an element header at byte {pos} of {size}")
                (length,) = unpack_long(buf, pos + 8)
                vpos = pos + 12
            elif vr in _VALID_VR:
                vpos = pos + 8
            elif group == 0xFFFE:
                raise _Skip("item tag at top level")
            else:
                raise _Skip(f"invalid VR {vr!r}")
        tag = group << 16 | elem
        if group == 0x7FE0 and tag in _PIXEL_TAGS:
            pixel = (tag, vpos, length)
            break
        if tag in fallback_tags:
            raise _Skip("needs the full reader")
        if length == _UNDEFINED:
            try:
                pos = _skip_undefined(buf, vpos, implicit)
            except _Skip as exc:
                if end < size:
                    raise _NeedMore from exc
                if "past the chunk" in str(exc):
                    raise Truncated(f"the file ends inside a sequence that starts at byte {pos}") from exc
                raise
            continue
        pos = vpos + length
        if pos > end:
            if end < size:
                raise _NeedMore
            raise Truncated(
                f"element ({group:04X},{elem:04X}) needs {length} bytes at byte {vpos} but the file has {size}"
            )
        if tag in wanted:
            vr_text = _VR_TEXT[vr] if vr is not None else _dictionary_vr(tag)
            if vr_text == "UN" and not implicit:
                vr_text = _dictionary_vr(tag) if tag >> 16 & 1 == 0 else "UN"
            elements[tag] = RawElement(tag, vr_text, buf[vpos:pos])
    if not elements:
        raise _Skip("no wanted elements")
    return RawHeader(elements, tsuid), pixel, size

"""Is a video file cut short? Answered from the container's own structure, before decoding.

A file cut by an interrupted copy or upload often still opens, and decodes up to the cut; its
clips would look complete in the ``clips`` table. So the probe asks the container itself:
every format in ``pipeline.archive.VIDEO_EXTENSIONS`` records sizes (of boxes, elements,
chunks, objects, pages, tags or frames) that a cut file cannot honour. ``check_complete``
raises ``TruncatedError`` when one runs past the end of the file, and says nothing otherwise.

What each check can see (a cut that lands exactly on a boundary the format does not record is
invisible to it, and the file is treated as complete):

==============================  ====================================================  =========
container                       what is checked                                       boundary
==============================  ====================================================  =========
ISO-BMFF (mp4 m4v mov 3gp)      top-level boxes (``moov``, ``mdat``, ``moof``)         none
Matroska / WebM (mkv webm)      Segment size; every top-level element; the blocks     live files
                                of clusters of unknown size (live / MediaRecorder)     at a block
RIFF / AVI                      every RIFF (and OpenDML ``AVIX``) chunk's size        none
ASF (wmv)                       every top-level object's size                         none
MPEG-PS (mpg mpeg vob)          packs and PES packets from the last pack on           a pack
MPEG-TS (ts m2ts)               whole 188 (or 192) byte packets                       a packet
FLV                             the last tag against its trailing back-pointer        none
Ogg (ogv)                       the last page: complete, and flagged end-of-stream    none
YUV4MPEG2 (y4m)                 every frame's header and full picture size            none
==============================  ====================================================  =========

Formats not listed (raw elementary streams such as ``.m2v``/``.h264``) record no sizes.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from pipeline import errors

ISO_BOXES = frozenset(
    {
        b"ftyp",
        b"moov",
        b"mdat",
        b"free",
        b"skip",
        b"wide",
        b"pnot",
        b"uuid",
        b"styp",
        b"sidx",
        b"moof",
        b"meta",
        b"pdin",
    }
)
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_MKV_SEGMENT = 0x18538067
_MKV_CLUSTER = 0x1F43B675
# Elements that may follow a cluster at the segment's level: an unknown-size cluster ends there.
_MKV_SEGMENT_CHILDREN = frozenset(
    {
        0x114D9B74,
        0x1549A966,
        0x1654AE6B,
        _MKV_CLUSTER,
        0x1C53BB6B,
        0x1254C367,
        0x1043A770,
        0x1941A469,
    }
)
_ASF_HEADER = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_PS_PACK = b"\x00\x00\x01\xba"
_TAIL = 1 << 17  # bytes searched at the end for the last MPEG-PS pack / Ogg page (pages <= 64 KiB)


def check_complete(f: BinaryIO, size: int) -> None:
    """Raise ``TruncatedError`` if the container in ``f`` (``size`` bytes) is cut short.

    Args:
        f: the file, opened for binary reading and seekable; its position is left anywhere.
        size: its length in bytes.

    Raises:
        TruncatedError: a structure recorded in the file runs past its end.
    """
    f.seek(0)
    head = f.read(512)
    if head[4:8] in ISO_BOXES:
        _check_iso(f, size)
    elif head.startswith(_EBML_MAGIC):
        _check_ebml(f, size)
    elif head.startswith(b"RIFF"):
        _check_riff(f, size)
    elif head.startswith(_ASF_HEADER):
        _check_asf(f, size)
    elif head.startswith(_PS_PACK):
        _check_ps(f, size)
    elif is_mpegts(head):
        _check_ts(head, size)
    elif head.startswith(b"FLV"):
        _check_flv(f, size)
    elif head.startswith(b"OggS"):
        _check_ogg(f, size)
    elif head.startswith(b"YUV4MPEG2 "):
        _check_y4m(f, size)


def _cut(what: str, pos: int, needs: int, size: int) -> errors.TruncatedError:
    return errors.TruncatedError(
        f"file cut: {what} at byte {pos} needs {needs} bytes, the file ends at {size}"
    )


def _check_iso(f: BinaryIO, size: int) -> None:
    pos, seen = 0, []
    while pos + 8 <= size:
        f.seek(pos)
        header = f.read(16)
        box_size, kind = struct.unpack(">I4s", header[:8])
        if box_size == 1 and len(header) == 16:
            box_size = struct.unpack(">Q", header[8:16])[0]
        elif box_size == 0:  # "extends to the end of the file"
            box_size = size - pos
        if box_size < 8:  # not a box: leave the verdict to FFmpeg
            return
        name = kind.decode("latin-1")
        if pos + box_size > size:
            # Junk after a complete index and media is tolerated; a cut media or index is not.
            if kind in (b"mdat", b"moov", b"moof") or "moov" not in seen:
                raise errors.TruncatedError(
                    f"file cut: MP4 box {name!r} at byte {pos} needs {box_size} bytes, the "
                    f"file ends at {size} (complete boxes before it: {', '.join(seen) or 'none'})"
                )
            return
        seen.append(name)
        pos += box_size


def _vint(f: BinaryIO, keep_marker: bool) -> tuple[int, int, bool] | None:
    """An EBML variable-length integer: (value, its length, all value bits set = "unknown")."""
    first = f.read(1)
    if not first:
        return None
    b0 = first[0]
    length = 9 - b0.bit_length() if b0 else 0
    if not 1 <= length <= 8:
        return None
    rest = f.read(length - 1)
    if len(rest) < length - 1:
        return None
    value = b0 if keep_marker else b0 & ((1 << (8 - length)) - 1)
    for byte in rest:
        value = (value << 8) | byte
    unknown = not keep_marker and value == (1 << (7 * length)) - 1
    return value, length, unknown


def _ebml_element(f: BinaryIO, pos: int, size: int) -> tuple[int, int, int | None] | None:
    """(id, data start, data size or None if unknown) of the element at ``pos``; None when the
    bytes there are not an element header (then the walk stops: nothing to judge)."""
    f.seek(pos)
    ident, size_of = _vint(f, keep_marker=True), None
    if ident is not None:
        size_of = _vint(f, keep_marker=False)
    if ident is None or size_of is None:
        if pos + 12 > size:  # a header itself cut off by the end of the file
            raise _cut("Matroska element header", pos, 12, size - pos)
        return None
    start = pos + ident[1] + size_of[1]
    return ident[0], start, None if size_of[2] else size_of[0]


def _check_ebml(f: BinaryIO, size: int) -> None:
    header = _ebml_element(f, 0, size)
    if header is None or header[2] is None:
        return
    pos = header[1] + header[2]
    segment = _ebml_element(f, pos, size) if pos < size else None
    if segment is None or segment[0] != _MKV_SEGMENT:
        return
    ident, start, length = segment
    if length is not None and start + length > size:
        raise _cut("Matroska Segment", pos, start + length - pos, size)
    end = start + length if length is not None else size
    pos = start
    while pos < end:
        element = _ebml_element(f, pos, size)
        if element is None:
            return
        ident, start, length = element
        if length is None:
            if ident != _MKV_CLUSTER:
                return
            pos = _walk_open_cluster(f, start, end, size)
            continue
        if start + length > end:
            raise _cut(f"Matroska element 0x{ident:X}", pos, start + length - pos, size)
        pos = start + length


def _walk_open_cluster(f: BinaryIO, pos: int, end: int, size: int) -> int:
    """Walk a cluster of unknown size (live writers) block by block; the position after it."""
    while pos < end:
        element = _ebml_element(f, pos, size)
        if element is None or element[0] in _MKV_SEGMENT_CHILDREN:
            return pos if element is not None else end
        ident, start, length = element
        if length is None:
            return end
        if start + length > end:
            raise _cut(f"Matroska block element 0x{ident:X}", pos, start + length - pos, size)
        pos = start + length
    return pos


def _check_riff(f: BinaryIO, size: int) -> None:
    pos = 0
    while pos + 12 <= size:
        f.seek(pos)
        kind, length, form = struct.unpack("<4sI4s", f.read(12))
        if kind != b"RIFF" or length in (0, 0xFFFFFFFF):  # not RIFF, or a size never written
            return
        needs = 8 + length + (length & 1)
        if pos + 8 + length > size:
            raise _cut(f"RIFF chunk {form.decode('latin-1')!r}", pos, needs, size)
        pos += needs


def _check_asf(f: BinaryIO, size: int) -> None:
    pos = 0
    while pos + 24 <= size:
        f.seek(pos)
        _, length = struct.unpack("<16sQ", f.read(24))
        if length < 24:  # a live (broadcast) data object records no size
            return
        if pos + length > size:
            raise _cut("ASF object", pos, length, size)
        pos += length


def _check_ps(f: BinaryIO, size: int) -> None:
    start = max(0, size - _TAIL)
    f.seek(start)
    tail = f.read()
    at = tail.find(_PS_PACK)
    if at < 0:
        return
    pos = start + at
    while pos + 4 <= size:
        f.seek(pos)
        head = f.read(16)
        if head[:3] != b"\x00\x00\x01":
            return  # not a start code: nothing more to judge
        code = head[3]
        if code == 0xB9:  # program end
            pos += 4
            continue
        if code == 0xBA:
            if len(head) < 14:
                raise _cut("MPEG-PS pack header", pos, 14, size)
            length = 14 + (head[13] & 7) if head[4] >> 6 == 1 else 12  # MPEG-2 / MPEG-1
        elif code >= 0xBB:
            if len(head) < 6:
                raise _cut("MPEG-PS packet header", pos, 6, size)
            length = 6 + struct.unpack(">H", head[4:6])[0]
        else:
            return
        if pos + length > size:
            raise _cut(f"MPEG-PS packet 0x{code:02X}", pos, length, size)
        pos += length


def is_mpegts(head: bytes) -> bool:
    """Whether ``head`` (the first 512 bytes or more) starts an MPEG-TS (or M2TS) stream."""
    return _is_ts(head, 188) or _is_ts(head, 192)


def _is_ts(head: bytes, packet: int) -> bool:
    sync = packet - 188  # 192-byte M2TS packets carry a 4-byte timecode before the sync byte
    return len(head) > 2 * packet + sync and all(head[sync + k * packet] == 0x47 for k in range(3))


def _check_ts(head: bytes, size: int) -> None:
    packet = 188 if _is_ts(head, 188) else 192
    if size % packet:
        raise errors.TruncatedError(
            f"file cut: MPEG-TS of {packet}-byte packets ends {size % packet} bytes into a "
            f"packet (file size {size})"
        )


def _check_flv(f: BinaryIO, size: int) -> None:
    if size < 13 + 4:
        raise _cut("FLV header", 0, 13, size)
    f.seek(size - 4)
    last = struct.unpack(">I", f.read(4))[0]  # every tag is followed by its own size
    tag = size - 4 - last
    if last < 11 or tag < 13:
        raise errors.TruncatedError(
            f"file cut: the last 4 bytes of the FLV file ({last}) are not the size of a tag"
        )
    f.seek(tag)
    kind, length = struct.unpack(">B3s", f.read(4))
    if kind & 0x1F not in (8, 9, 18) or 11 + int.from_bytes(length, "big") != last:
        raise errors.TruncatedError("file cut: the FLV file does not end with a whole tag")


def _check_ogg(f: BinaryIO, size: int) -> None:
    start = max(0, size - _TAIL)
    f.seek(start)
    tail = f.read()
    at = tail.rfind(b"OggS")
    while at >= 0 and tail[at + 4 : at + 5] not in (b"\x00", b""):
        at = tail.rfind(b"OggS", 0, at)  # "OggS" inside a payload: version byte is not 0
    if at < 0:
        return
    pos = start + at
    if pos + 27 > size:
        raise _cut("Ogg page header", pos, 27, size)
    flags, segments = tail[at + 5], tail[at + 26]
    table = tail[at + 27 : at + 27 + segments]
    length = 27 + segments + sum(table)
    if len(table) < segments or pos + length > size:
        raise _cut("Ogg page", pos, length, size)
    if not flags & 0x04:
        raise errors.TruncatedError("file cut: the last Ogg page does not end the stream")


_Y4M_LAYOUTS = ("444alpha", "mono", "420", "422", "444")  # longest prefix first


def _check_y4m(f: BinaryIO, size: int) -> None:
    f.seek(0)
    line = f.read(256).split(b"\n", 1)[0]
    fields = {t[:1]: t[1:] for t in line.split(b" ")[1:] if t}
    try:
        width, height = int(fields[b"W"]), int(fields[b"H"])
    except (KeyError, ValueError):
        return
    colour = fields.get(b"C", b"420jpeg").decode("latin-1")
    deep = "p" in colour.replace("paldv", "") and colour.split("p")[-1].isdigit()
    base = next((k for k in _Y4M_LAYOUTS if colour.startswith(k)), None)
    if base is None:
        return
    cw, ch = (width + 1) // 2, (height + 1) // 2
    chroma = {
        "420": 2 * cw * ch,
        "422": 2 * cw * height,
        "444": 2 * width * height,
        "mono": 0,
        "444alpha": 3 * width * height,
    }[base]
    picture = (width * height + chroma) * (2 if deep else 1)
    pos = len(line) + 1
    while pos < size:
        f.seek(pos)
        frame_line = f.read(256).split(b"\n", 1)
        if not frame_line[0].startswith(b"FRAME") or len(frame_line) < 2:
            raise _cut("YUV4MPEG2 frame header", pos, 6, size)
        needs = len(frame_line[0]) + 1 + picture
        if pos + needs > size:
            raise _cut("YUV4MPEG2 frame", pos, needs, size)
        pos += needs

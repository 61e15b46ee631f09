"""A video track's rotation read from an ISO-BMFF (mp4, mov, 3gp) header, without decoding.

Phones record portrait video as landscape pictures plus a display matrix in the track header
(``tkhd``) saying how to turn them. FFmpeg hands that matrix over only with decoded frames, and
decoding a frame costs the probe 40 ms at 1080p (ten times its header work), so for ISO-BMFF --
where nearly all rotated video lives -- the probe reads the matrix here instead. Other
containers that carry a rotation (Matroska) are left to the decoder (``pipeline.probe``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from typing import BinaryIO

_MAX_MOOV = 256 << 20  # a header larger than this is read by FFmpeg, not here


def iso_rotation(f: BinaryIO, size: int) -> int | None:
    """Clockwise degrees (0, 90, 180, 270) that show the first video track upright; None when
    the file has no readable ``moov`` with a video track (ask the decoder instead)."""
    moov = _top_level_box(f, size, b"moov")
    if moov is None:
        return None
    for kind, trak in _boxes(moov):
        if kind != b"trak":
            continue
        children = dict(_boxes(trak))
        mdia = dict(_boxes(children.get(b"mdia", b"")))
        hdlr = mdia.get(b"hdlr", b"")
        if hdlr[8:12] != b"vide" or b"tkhd" not in children:
            continue
        return _matrix_rotation(children[b"tkhd"])
    return None


def _matrix_rotation(tkhd: bytes) -> int | None:
    # version 0: 4 (version, flags) + 5 x 4 (times, track id, reserved, duration); version 1
    # widens the times and duration to 8 bytes; then 8 reserved + 4 x 2 (layer, group, volume,
    # reserved) before the 3x3 matrix (a b u / c d v / x y w, 16.16 fixed point).
    offset = 4 + (32 if tkhd[:1] == b"\x01" else 20) + 16
    if len(tkhd) < offset + 36:
        return None
    a, b = struct.unpack(">2i", tkhd[offset : offset + 8])
    if a == b == 0:
        return None
    return round(math.degrees(math.atan2(b, a)) / 90) % 4 * 90


def _top_level_box(f: BinaryIO, size: int, want: bytes) -> bytes | None:
    pos = 0
    while pos + 8 <= size:
        f.seek(pos)
        header = f.read(16)
        box_size, kind = struct.unpack(">I4s", header[:8])
        start = 8
        if box_size == 1 and len(header) == 16:
            box_size, start = struct.unpack(">Q", header[8:16])[0], 16
        elif box_size == 0:
            box_size = size - pos
        if box_size < start:
            return None
        if kind == want:
            if box_size > _MAX_MOOV:
                return None
            f.seek(pos + start)
            return f.read(box_size - start)
        pos += box_size
    return None


def _boxes(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, payload) of the boxes packed in ``data``; stops at the first malformed one."""
    pos = 0
    while pos + 8 <= len(data):
        box_size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        start = 8
        if box_size == 1 and pos + 16 <= len(data):
            box_size, start = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif box_size == 0:
            box_size = len(data) - pos
        if box_size < start or pos + box_size > len(data):
            return
        yield kind, data[pos + start : pos + box_size]
        pos += box_size

"""Probing a video's container header (PyAV): duration, fps, frame count, size, codec.

The probe reads headers (and, when the header has no frame count, as in mkv, counts the video
stream's packets by demuxing) but never decodes. It is the gate before decoding; what it
rejects gets a specific ``error_type``:

- zero bytes -> ``EmptyFile``; bytes no demuxer recognises (random data, text) ->
  ``UnrecognizedFormat``; a recognised container signature that FFmpeg cannot parse ->
  ``CorruptVideo``;
- an ISO-BMFF file (mp4/mov/m4v/3gp) whose top-level boxes run past the end of the file ->
  ``Truncated``, checked BEFORE opening, so a faststart mp4 (``moov`` first) cut inside ``mdat``
  -- which FFmpeg opens happily and decodes up to the cut -- is rejected as a whole (the
  truncation policy in ``pipeline.decode``);
- no video stream -> ``NoVideoStream``; no decoder for its codec -> ``UnsupportedCodec``.
"""

from __future__ import annotations

import io
import os
import struct

import av

from pipeline import errors
from pipeline.records import VideoProbe
from pipeline.source import Source

# Signatures of containers FFmpeg reads (first bytes), to tell "a damaged video" from "not a video".
_SIGNATURES = (b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"\x00\x00\x01\xba",
               b"\x00\x00\x01\xb3", b"0&\xb2u", b"YUV4MPEG2")
_ISO_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid",
                        b"styp", b"sidx", b"moof", b"meta", b"pdin"})


def probe_video(src: Source) -> VideoProbe:
    """Read stream metadata without decoding frames.

    Raises:
        EmptyFileError: zero bytes.
        UnrecognizedFormatError: no container format matches the bytes.
        TruncatedError: an ISO-BMFF box runs past the end of the file.
        CorruptVideoError: a recognised container that cannot be parsed, or has no frames.
        NoVideoStreamError: the container holds no video stream (e.g. audio only).
        UnsupportedCodecError: FFmpeg has no decoder for the stream's codec.
    """
    head, size = _head(src)
    if size == 0:
        raise errors.EmptyFileError("zero-byte file")
    if head[4:8] in _ISO_BOXES:
        _check_iso_boxes(src, size)
    try:
        container = av.open(src, "r")
    except av.error.FFmpegError as err:
        raise _open_error(head, err) from None
    finally:
        _rewind(src)
    try:
        return _probe_container(container)
    except av.error.FFmpegError as err:
        raise errors.CorruptVideoError(f"cannot read the container: {err}") from None
    finally:
        container.close()
        _rewind(src)


def _probe_container(container) -> VideoProbe:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise errors.NoVideoStreamError(f"no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None or not ctx.name:
        raise errors.UnsupportedCodecError("no decoder for the video stream's codec")
    if not ctx.width or not ctx.height:
        raise errors.CorruptVideoError("video stream has no frame size")
    fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    else:
        duration = (container.duration or 0) / 1e6
    num_frames = int(stream.frames or 0)
    if num_frames <= 0:
        # No count in the header (mkv, webm, ts): count packets -- a demux, no decoding. Duration
        # x rate would be wrong for VFR, where mkv's rate is nominal (24 for a 10-30 fps video).
        num_frames = sum(1 for p in container.demux(stream) if p.size)
    if num_frames <= 0:
        raise errors.CorruptVideoError("the video stream holds no frames")
    if fps <= 0:
        fps = num_frames / duration if duration > 0 else 25.0
    return VideoProbe(duration_s=duration or num_frames / fps, fps=fps, num_frames=num_frames,
                      width=int(ctx.width), height=int(ctx.height), codec=ctx.name)


def _head(src: Source, n: int = 4096) -> tuple[bytes, int]:
    if isinstance(src, io.BytesIO):
        return src.getbuffer()[:n].tobytes(), src.getbuffer().nbytes
    with open(src, "rb") as f:
        return f.read(n), os.fstat(f.fileno()).st_size


def _rewind(src: Source) -> None:
    if isinstance(src, io.BytesIO):
        src.seek(0)


def _open_error(head: bytes, err: Exception) -> errors.VideoError:
    if head[4:8] in _ISO_BOXES or head.startswith(_SIGNATURES):
        return errors.CorruptVideoError(f"a damaged video container: {err}")
    what = "a text file" if _looks_like_text(head) else "binary data of no known container format"
    return errors.UnrecognizedFormatError(f"not a video: {what} ({err})")


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def _check_iso_boxes(src: Source, size: int) -> None:
    """Walk the top-level ISO-BMFF boxes; raise ``TruncatedError`` if one runs past the end."""
    f = src if isinstance(src, io.BytesIO) else open(src, "rb")
    try:
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
                        f"file ends at {size} (complete boxes before it: {', '.join(seen) or 'none'})")
                return
            seen.append(name)
            pos += box_size
    finally:
        if f is not src:
            f.close()
        _rewind(src)

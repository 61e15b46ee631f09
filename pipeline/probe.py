"""Probing a video's container header (PyAV): duration, fps, frame count, size, codec.

The probe reads headers (and, when the header has no frame count, as in mkv, counts the video
stream's packets by demuxing) and decodes at most ONE frame: outside ISO-BMFF (whose track
header ``pipeline.orientation`` reads) the display matrix (rotation) is attached to decoded
frames, not readable from the stream, in the FFmpeg that PyAV ships. The
size it reports is the displayed one (coded size turned by the rotation and stretched by the
sample aspect ratio; see docs/MEDIA.md). It is the gate before decoding; what it rejects gets
a specific ``error_type``:

- zero bytes -> ``EmptyFile``; bytes no demuxer recognises (random data, text) ->
  ``UnrecognizedFormat``; a recognised container signature that FFmpeg cannot parse ->
  ``CorruptVideo``;
- a file whose container structure runs past the end of the file -> ``Truncated``
  (``pipeline.truncation``, every container the archive lists), checked BEFORE opening, so a
  faststart mp4 (``moov`` first) or a Matroska file cut part way -- which FFmpeg opens happily
  and decodes up to the cut -- is rejected as a whole (the truncation policy in
  ``pipeline.decode``);
- no video stream -> ``NoVideoStream``; no decoder for its codec -> ``UnsupportedCodec``.

A first frame that does not decode is NOT a probe error (rotation is then taken as 0): the
decode stage owns that verdict (``UndecodableStream``), with the backend fallback it allows.
"""

from __future__ import annotations

import io
import logging
import os

import av

from pipeline import errors
from pipeline.orientation import iso_rotation
from pipeline.records import VideoProbe
from pipeline.source import Source
from pipeline.truncation import ISO_BOXES as _ISO_BOXES
from pipeline.truncation import check_complete

log = logging.getLogger(__name__)

# Signatures of containers FFmpeg reads (first bytes), to tell "a damaged video" from "not a video".
_SIGNATURES = (
    b"\x1a\x45\xdf\xa3",
    b"RIFF",
    b"OggS",
    b"FLV",
    b"\x00\x00\x01\xba",
    b"\x00\x00\x01\xb3",
    b"0&\xb2u",
    b"YUV4MPEG2",
)


def probe_video(src: Source) -> VideoProbe:
    """Read stream metadata without decoding frames.

    Raises:
        EmptyFileError: zero bytes.
        UnrecognizedFormatError: no container format matches the bytes.
        TruncatedError: the container's structure runs past the end of the file.
        CorruptVideoError: a recognised container that cannot be parsed, or has no frames.
        NoVideoStreamError: the container holds no video stream (e.g. audio only).
        UnsupportedCodecError: FFmpeg has no decoder for the stream's codec.
    """
    head, size = _head(src)
    if size == 0:
        raise errors.EmptyFileError("zero-byte file")
    rotation = _read_structure(src, size, iso=head[4:8] in _ISO_BOXES)
    try:
        container = av.open(src, "r")
    except av.error.FFmpegError as err:
        _rewind(src)
        raise _open_error(head, err) from None
    # No rewind here: FFmpeg reads on from where it stopped, and formats it never seeks in
    # (YUV4MPEG2) would read their header again as frame data.
    try:
        return _probe_container(container, rotation)
    except av.error.FFmpegError as err:
        raise errors.CorruptVideoError(f"cannot read the container: {err}") from None
    finally:
        container.close()
        _rewind(src)


def _probe_container(container, rotation: int | None) -> VideoProbe:
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
    # No count in the header (mkv, webm, ts): count packets -- a demux, no decoding. Duration
    # x rate would be wrong for VFR, where mkv's rate is nominal (24 for a 10-30 fps video).
    rotation, counted, span = _scan(container, stream, rotation, count=num_frames <= 0)
    if num_frames <= 0:
        num_frames = counted
        # Headers of index-less streams estimate the duration (MPEG-PS from its bitrate); the
        # packets' presentation times say it.
        duration = span or duration
    if num_frames <= 0:
        raise errors.CorruptVideoError("the video stream holds no frames")
    if fps <= 0:
        fps = num_frames / duration if duration > 0 else 25.0
    sar = float(stream.sample_aspect_ratio or ctx.sample_aspect_ratio or 1) or 1.0
    width, height = display_size(int(ctx.width), int(ctx.height), rotation, sar)
    return VideoProbe(
        duration_s=duration or num_frames / fps,
        fps=fps,
        num_frames=num_frames,
        width=width,
        height=height,
        codec=_codec_name(ctx),
        rotation=rotation,
        coded_width=int(ctx.width),
        coded_height=int(ctx.height),
        sample_aspect=sar,
    )


def display_size(
    coded_width: int, coded_height: int, rotation: int, sample_aspect: float
) -> tuple[int, int]:
    """``(width, height)`` a player shows: pixels stretched horizontally by the sample aspect
    ratio (PAL 720x576 at 16:15 shows as 768x576), then turned by ``rotation``."""
    width = max(1, round(coded_width * sample_aspect))
    return (coded_height, width) if rotation in (90, 270) else (width, coded_height)


def _codec_name(ctx) -> str:
    """The codec (``av1``), not the decoder FFmpeg picked for it (``libdav1d``)."""
    codec = ctx.codec
    return getattr(codec, "canonical_name", None) or codec.name or ctx.name


def _scan(container, stream, rotation: int | None, count: bool) -> tuple[int, int, float]:
    """One pass over the stream's packets: the rotation, unless known (from the first frame that
    decodes), and, if ``count``, the number of packets holding data and the seconds their times
    span. Reads nothing when neither is needed."""
    packets, first, last = 0, None, None
    if rotation is not None and not count:
        return rotation, 0, 0.0
    for packet in container.demux(stream):
        if packet.size:
            packets += 1
            if packet.pts is not None:
                first = packet.pts if first is None else min(first, packet.pts)
                end = packet.pts + (packet.duration or 0)
                last = end if last is None else max(last, end)
        if rotation is None:
            rotation = _rotation(packet)
        elif not count:
            break
    span = (
        float((last - first) * stream.time_base) if first is not None and stream.time_base else 0.0
    )
    return rotation or 0, packets, max(span, 0.0)


def _rotation(packet) -> int | None:
    """Clockwise degrees that show a stored frame upright, from a decoded frame's display matrix;
    None until a frame comes out, 0 when the stream does not decode (decoding will say why)."""
    try:
        frames = packet.decode()
    except (av.error.FFmpegError, ValueError) as err:
        log.debug("the first frame does not decode while probing: %s", err)
        return 0
    if not frames:
        return None if packet.size else 0  # the flush packet ends the stream
    ccw = getattr(frames[0], "rotation", 0) or 0  # FFmpeg's angle is counter-clockwise
    return round(-ccw / 90) % 4 * 90


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


def _read_structure(src: Source, size: int, iso: bool) -> int | None:
    """Check the container is whole (``TruncatedError`` if not); the rotation when an ISO-BMFF
    track header records it, else None."""
    f = src if isinstance(src, io.BytesIO) else open(src, "rb")  # noqa: SIM115 (closed below)
    try:
        check_complete(f, size)
        return iso_rotation(f, size) if iso else None
    finally:
        if f is not src:
            f.close()
        _rewind(src)

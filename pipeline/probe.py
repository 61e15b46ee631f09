"""Probing a video's container header (PyAV): duration, fps, frame count, size, codec."""

from __future__ import annotations

import io

import av

from pipeline import errors
from pipeline.records import VideoProbe
from pipeline.source import Source


def probe_video(src: Source) -> VideoProbe:
    """Read stream metadata without decoding frames.

    Raises:
        CorruptVideoError: not a parseable container.
        NoVideoStreamError: the container holds no video stream (e.g. audio only).
        UnsupportedCodecError: FFmpeg has no decoder for the stream's codec.
    """
    if isinstance(src, io.BytesIO):
        src.seek(0)
    try:
        container = av.open(src, "r")
    except av.error.FFmpegError as err:
        raise errors.CorruptVideoError(f"not a readable video container: {err}") from None
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise errors.NoVideoStreamError(f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None or not ctx.name:
            raise errors.UnsupportedCodecError("no decoder for the video stream's codec")
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (container.duration or 0) / 1e6
        num_frames = int(stream.frames or 0)
        if num_frames <= 0 and fps > 0:
            num_frames = int(round(duration * fps))
        if fps <= 0:
            fps = num_frames / duration if duration > 0 else 25.0
        if not ctx.width or not ctx.height:
            raise errors.CorruptVideoError("video stream has no frame size")
        return VideoProbe(duration_s=duration or num_frames / fps, fps=fps, num_frames=num_frames,
                          width=int(ctx.width), height=int(ctx.height), codec=ctx.name)
    finally:
        container.close()
        if isinstance(src, io.BytesIO):
            src.seek(0)

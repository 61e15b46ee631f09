"""Encoding frames to MP4 and writing media files atomically to any fsspec URL.

Generative models (frame interpolation, quality enhancement, inpainting) produce frames that the
job stores next to its tables as one MP4 per clip; ``clip_media_uri`` names that file and
``encode_clip`` writes it. The demo archive (``pipeline.demo_archive``) uses the same encoder.

Odd frame sizes: H.264 in 4:2:0 (``yuv420p``, the only layout every player and browser decodes)
stores chroma at half resolution and so needs even width and height; the SPS crop window cannot
remove a single row either. ``encode_clip`` therefore pads an odd-sized clip by ONE replicated
edge row/column (bottom, right) and the decoded clip is up to 1 pixel larger than the input;
the content of the original pixels is unchanged. Pass ``pix_fmt="yuv444p"`` instead to keep the
exact size and full chroma at the cost of compatibility (High 4:4:4 profile: ffmpeg, decord and
VLC read it; browsers and most hardware decoders do not).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import av
import numpy as np

from pipeline.uris import join, redact_uri, write_bytes_atomic

logger = logging.getLogger(__name__)

# Encoders that take a constant-rate-factor quality setting, and the pixel layouts we allow.
_CRF_CODECS = ("libx264", "libx265")
_PIX_FMTS = ("yuv420p", "yuv444p")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class MediaEncodeError(RuntimeError):
    """The encoder or the muxer rejected the clip (the message names the codec and the URI)."""


def encode_mp4_bytes(
    frames: np.ndarray,
    fps: float,
    *,
    codec: str = "libx264",
    crf: int = 18,
    pix_fmt: str = "yuv420p",
    preset: str = "medium",
) -> bytes:
    """Encode RGB frames to an in-memory MP4.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB, ``T >= 1``.
        fps: constant frame rate written to the stream (fractional rates such as 30000/1001 are
            kept exact to 1/100000).
        codec: ``libx264`` or ``libx265``.
        crf: constant rate factor, 0 (lossless for libx264 with yuv444p) to 51.
        pix_fmt: ``yuv420p`` (odd sizes padded by edge replication, see the module docstring) or
            ``yuv444p`` (exact size).
        preset: x264/x265 speed preset. The output is deterministic for fixed arguments.

    Returns:
        The MP4 file's bytes (``moov`` at the front, so it streams from object storage).

    Raises:
        ValueError: bad shape, dtype, fps, codec, crf or pix_fmt.
        MediaEncodeError: the encoder failed.
    """
    frames = _check_frames(frames)
    if codec not in _CRF_CODECS:
        raise ValueError(f"codec must be one of {_CRF_CODECS}, got {codec!r}")
    if pix_fmt not in _PIX_FMTS:
        raise ValueError(f"pix_fmt must be one of {_PIX_FMTS}, got {pix_fmt!r}")
    if not (isinstance(crf, (int, np.integer)) and 0 <= crf <= 51):
        raise ValueError(f"crf must be an integer in [0, 51], got {crf!r}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    if pix_fmt == "yuv420p":
        frames = pad_to_even(frames)

    # +faststart rewrites the file to move `moov` to the front, which needs a real (seekable,
    # re-openable) file rather than a BytesIO.
    with tempfile.TemporaryDirectory(prefix="vmb-encode-") as tmp:
        tmp_path = os.path.join(tmp, "clip.mp4")
        _encode_to_file(frames, tmp_path, fps, codec, crf, pix_fmt, preset)
        with open(tmp_path, "rb") as f:
            return f.read()


def _encode_to_file(
    frames: np.ndarray, path: str, fps: float, codec: str, crf: int, pix_fmt: str, preset: str
) -> None:
    _, height, width, _ = frames.shape
    try:
        with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(100_000))
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            stream.options = {"crf": str(int(crf)), "preset": preset}
            if codec == "libx265":
                stream.options["x265-params"] = "log-level=error"
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    except (av.FFmpegError, ValueError) as err:
        raise MediaEncodeError(f"{codec} failed on a {frames.shape} clip: {err}") from err


def encode_clip(
    frames: np.ndarray,
    uri: str,
    fps: float,
    storage_options: Mapping[str, Any] | None = None,
    codec: str = "libx264",
    crf: int = 18,
    *,
    pix_fmt: str = "yuv420p",
) -> int:
    """Encode a clip to MP4 and write it to ``uri`` atomically.

    Readers never see a partial file: local and other path-based filesystems get a temporary
    sibling that is renamed over ``uri``; object stores (s3, gcs, azure, memory) get one PUT,
    which is atomic there. An existing file at ``uri`` is replaced, so re-running a clip is
    idempotent.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB.
        uri: destination, any fsspec URL or local path; parent folders are created.
        fps: frame rate of the clip (the source's fps divided by the sampling interval).
        storage_options: fsspec options for ``uri`` (credentials, endpoint).
        codec: ``libx264`` (default) or ``libx265``.
        crf: constant rate factor (18 is visually lossless for H.264).
        pix_fmt: ``yuv420p`` (default; odd sizes padded by one replicated edge pixel) or
            ``yuv444p`` (exact size, less widely playable).

    Returns:
        Number of bytes written.

    Raises:
        ValueError: bad frames or encoder settings.
        MediaEncodeError: the encoder failed.
        OSError: the filesystem refused the write.
    """
    data = encode_mp4_bytes(frames, fps, codec=codec, crf=crf, pix_fmt=pix_fmt)
    write_bytes_atomic(uri, data, storage_options)
    logger.debug("wrote %d bytes (%d frames) to %s", len(data), len(frames), redact_uri(uri))
    return len(data)


def clip_media_uri(output_uri: str, model: str, video_id: str, clip_index: int) -> str:
    """Where a generative model's output for one clip goes.

    Layout: ``{output_uri}/media/{model}/{video_id}/{clip_index:06d}.mp4``. The model name is
    made path-safe (runs of characters other than letters, digits, ``.``, ``_``, ``-`` become
    ``_``; all-dot pieces and leading dots are dropped), so ``"rife/ifnet@v4"`` becomes
    ``"rife_ifnet_v4"`` and ``"../x"`` becomes ``"x"``.

    Raises:
        ValueError: empty model or video id, a video id that is not a single path segment, or a
            negative clip index.
    """
    if not video_id or "/" in video_id or "\\" in video_id or video_id in (".", ".."):
        raise ValueError(f"video_id must be one non-empty path segment, got {video_id!r}")
    is_int = isinstance(clip_index, (int, np.integer)) and not isinstance(clip_index, bool)
    if not is_int or clip_index < 0:
        raise ValueError(f"clip_index must be a non-negative integer, got {clip_index!r}")
    model_dir = safe_path_segment(model)
    return join(output_uri, "media", model_dir, video_id, f"{int(clip_index):06d}.mp4")


def safe_path_segment(name: str) -> str:
    """``name`` as one portable path segment (see ``clip_media_uri``).

    Raises:
        ValueError: nothing usable is left of ``name``.
    """
    # Drop pieces made only of dots, so "../x" cannot climb out of the media folder.
    parts = [p for p in _SAFE_NAME.split(name) if p.strip(".")]
    safe = "_".join(parts).lstrip(".")
    if not safe:
        raise ValueError(f"cannot make a path segment of {name!r}")
    return safe


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Pad ``(T, H, W, C)`` frames to even H and W by replicating the last row/column."""
    _, height, width, _ = frames.shape
    pad_h, pad_w = height % 2, width % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _check_frames(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[:3]) < 1:
        raise ValueError(f"frames must have shape (T, H, W, 3), T, H, W >= 1, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    return np.ascontiguousarray(frames)

"""Tiny synthetic videos, archives and manifests for the test-suite (no committed media).

Every video is generated from ``synth_frames``, so a test can compare what it decodes with what
was encoded. Patterns:

- ``"moving"``: a horizontal colour gradient scrolling 2 px per frame under a white square that
  moves diagonally (``square_box`` gives its position); every frame differs from the last.
- ``"index"``: a 4x4 grid of black/white cells spelling the frame index in binary (16 bits,
  row-major, most significant first). ``frame_index_of`` reads it back from a decoded frame,
  robustly to lossy codecs and to resizing at decode, so a test can tell WHICH frames a sampler
  or decoder returned.
- ``"static"``: the same gradient on every frame (zero motion).
- ``"photo"``: scikit-image's cat photo with a slow pan and zoom
  (``pipeline.demo_archive.ken_burns``),
  for classifiers.

Codecs and containers (chosen by the path's suffix):

==========  =================  ===============================================================
codec       containers         pixel format
==========  =================  ===============================================================
libx264     .mp4 .mkv          yuv420p; yuv444p when width or height is odd (4:2:0 needs even)
mpeg4       .mp4 .avi .mkv     yuv420p (the encoder accepts odd sizes)
mjpeg       .avi .mkv          yuvj420p (full-range JPEG)
ffv1        .mkv .avi          bgr0: bit-exact RGB (lossless)
==========  =================  ===============================================================

Observed with decord 0.6.0 / PyAV 18.1 (FFmpeg 8) on these files (tests/pipeline/
test_videos_helpers.py checks each):

- decord decodes all four codecs, also mjpeg in .avi and odd sizes, with the right frame count
  and ``get_avg_fps``. ``.mkv`` stores no frame count: PyAV's ``stream.frames`` is 0 there, so
  a prober must count or estimate from the duration.
- decord 0.6.0 returns frames of the WRONG SHAPE for a few widths (``(H, W, 4)`` or garbage
  channel counts, and ``get_batch`` then raises ``DECORDError``): widths 1, 2, 3, 4, 6, 8, 12,
  16, 24, 48 and 72 (all widths 1-199 and even ones up to 1298 tried; FFmpeg pads rgb24
  rows, decord divides the padded row by the width). ``DECORD_BAD_WIDTHS`` lists them; use
  other widths, also as decode-time resize targets (and note that padding 47 to even gives 48).
- VFR (``make_vfr_video``, frames alternating 1/30 s and 1/10 s): decord's ``len(vr)`` is the
  true frame count, ``vr[i]`` is the i-th frame and ``get_frame_timestamp`` gives the real,
  uneven times, in mp4, mkv and avi alike. ``get_avg_fps`` is NOT a usable rate: frames /
  duration for mp4 (15.57 here), the container's nominal rate for mkv (24, never the real one)
  and 1000 for avi, which cannot store VFR and instead writes 1 ms ticks with empty "dropped"
  frames -- its header then claims 1542 frames (PyAV ``stream.frames``) for 24 real ones.
  Index by timestamps, and count frames by decoding or by decord's ``len``, not from headers.
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction

import av
import numpy as np

PATTERNS = ("moving", "index", "static", "photo")
CODEC_CONTAINERS: dict[str, tuple[str, ...]] = {
    "libx264": (".mp4", ".mkv"),
    "mpeg4": (".mp4", ".avi", ".mkv"),
    "mjpeg": (".avi", ".mkv"),
    "ffv1": (".mkv", ".avi"),
}
_PIX_FMT = {"libx264": "yuv420p", "mpeg4": "yuv420p", "mjpeg": "yuvj420p", "ffv1": "bgr0"}
# Widths for which decord 0.6.0 returns mis-shaped frames (see the module docstring).
DECORD_BAD_WIDTHS = frozenset({1, 2, 3, 4, 6, 8, 12, 16, 24, 48, 72})
_INDEX_GRID = 4  # 4x4 cells = 16 bits
_FF_QP2LAMBDA = 118  # FFmpeg's quantiser -> lambda scale


def synth_frames(
    num_frames: int, size: tuple[int, int] = (64, 48), pattern: str = "moving", seed: int = 0
) -> np.ndarray:
    """The frames ``make_video`` encodes: ``(num_frames, H, W, 3)`` uint8 for ``size=(W, H)``."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    width, height = size
    if pattern == "photo":
        from pipeline.demo_archive import SAMPLES, ken_burns, load_photo

        cat = SAMPLES[0]
        return ken_burns(
            load_photo(cat),
            num_frames,
            size,
            center=cat.center,
            zoom=cat.zoom,
            pan=cat.pan,
            seed=seed,
        )
    if pattern == "index":
        if num_frames > 2 ** (_INDEX_GRID * _INDEX_GRID):
            raise ValueError(f"the index pattern encodes at most 65536 frames, got {num_frames}")
        return np.stack([_index_frame(i, width, height) for i in range(num_frames)])

    rng = np.random.default_rng(seed)
    colour_a, colour_b = rng.integers(0, 160, 3), rng.integers(0, 160, 3)
    phase = int(rng.integers(0, width))
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    xs = np.arange(width)
    for i in range(num_frames):
        shift = 0 if pattern == "static" else 2 * i
        ramp = ((xs + phase + shift) % width) / max(width - 1, 1)  # (W,)
        row = colour_a[None, :] * (1 - ramp[:, None]) + colour_b[None, :] * ramp[:, None]  # (W, 3)
        frames[i] = row[None].astype(np.uint8)
        if pattern == "moving":
            x0, y0, x1, y1 = square_box(i, num_frames, size)
            frames[i, y0:y1, x0:x1] = 255
    return frames


def square_box(index: int, num_frames: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the white square in frame ``index`` of the ``"moving"`` pattern."""
    width, height = size
    side = max(2, min(width, height) // 4)
    t = index / (num_frames - 1) if num_frames > 1 else 0.0
    x0 = round(t * (width - side))
    y0 = round(t * (height - side))
    return x0, y0, x0 + side, y0 + side


def frame_index_of(frame: np.ndarray) -> int:
    """The frame index spelled by an ``"index"``-pattern frame ``(H, W, 3)`` (any decoded size)."""
    height, width = frame.shape[:2]
    grey = frame.astype(np.float32).mean(axis=2)
    value = 0
    for cell in range(_INDEX_GRID * _INDEX_GRID):
        r, c = divmod(cell, _INDEX_GRID)
        # Sample the middle half of each cell, away from blurred edges.
        y0, y1 = (4 * r + 1) * height // 16, (4 * r + 3) * height // 16
        x0, x1 = (4 * c + 1) * width // 16, (4 * c + 3) * width // 16
        bit = grey[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)].mean() > 127
        value = (value << 1) | int(bit)
    return value


def make_video(
    path: str | os.PathLike,
    num_frames: int = 24,
    size: tuple[int, int] = (64, 48),
    fps: float = 12.0,
    codec: str = "libx264",
    pattern: str = "moving",
    seed: int = 0,
    gop: int | None = None,
) -> str:
    """Write a constant-frame-rate video of ``synth_frames(num_frames, size, pattern, seed)``.

    Args:
        path: output file; its suffix picks the container (see ``CODEC_CONTAINERS``).
        num_frames: frames written (and decoded back by decord and PyAV).
        size: ``(width, height)``.
        fps: frame rate.
        codec: ``libx264``, ``mpeg4``, ``mjpeg`` or ``ffv1``.
        pattern: see the module docstring.
        seed: varies the colours (and the photo's path).
        gop: frames from one keyframe to the next (None: the encoder's default, 250 for libx264,
            12 for mpeg4); libx264 keeps its B-frames and closed GOPs.

    Returns:
        ``str(path)``.
    """
    path = str(path)
    frames = synth_frames(num_frames, size, pattern, seed)
    rate = Fraction(fps).limit_denominator(100_000)
    pts = [i for i in range(num_frames)]
    _write(path, frames, codec, time_base=1 / rate, pts=pts, rate=rate, gop=gop)
    return path


def make_vfr_video(
    path: str | os.PathLike,
    num_frames: int = 24,
    size: tuple[int, int] = (64, 48),
    frame_durations: Sequence[float] = (1 / 30, 1 / 10),
    codec: str = "libx264",
    pattern: str = "index",
    seed: int = 0,
) -> str:
    """Write a variable-frame-rate video: frame ``i`` lasts ``frame_durations[i % len]`` seconds.

    Timestamps are explicit pts in milliseconds (``vfr_timestamps`` gives them), so with the
    defaults the frame rate alternates between 30 and 10 fps. The default ``"index"`` pattern
    lets a test check which frame a decoder returned for a given time.

    Returns:
        ``str(path)``.
    """
    path = str(path)
    if not frame_durations or min(frame_durations) < 0.001:
        raise ValueError(f"frame_durations must be >= 1 ms each, got {frame_durations}")
    frames = synth_frames(num_frames, size, pattern, seed)
    pts = [round(t * 1000) for t in vfr_timestamps(num_frames, frame_durations)]
    _write(path, frames, codec, time_base=Fraction(1, 1000), pts=pts, rate=None)
    return path


def vfr_timestamps(
    num_frames: int, frame_durations: Sequence[float] = (1 / 30, 1 / 10)
) -> list[float]:
    """Presentation times (seconds, rounded to ms) of ``make_vfr_video``'s frames."""
    times, t = [], 0.0
    for i in range(num_frames):
        times.append(round(t, 3))
        t += frame_durations[i % len(frame_durations)]
    return times


def make_tar(path: str | os.PathLike, members: Mapping[str, bytes | str | os.PathLike]) -> str:
    """Write an (uncompressed, or gzip for ``.tar.gz``/``.tgz``) tar of ``members``.

    Args:
        path: the archive.
        members: member name (may contain ``/``) -> content bytes or a local file to copy.

    Returns:
        ``str(path)``.
    """
    path = str(path)
    mode = "w:gz" if path.endswith((".tar.gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for name, content in members.items():
            data = _member_bytes(content)
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(
    path: str | os.PathLike,
    members: Mapping[str, bytes | str | os.PathLike],
    compression: int = zipfile.ZIP_STORED,
) -> str:
    """Write a zip of ``members`` (name -> bytes or local file); stored (uncompressed) by default,
    as video archives usually are.

    Returns:
        ``str(path)``.
    """
    path = str(path)
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, content in members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, _member_bytes(content), compress_type=compression)
    return path


def make_manifest(
    path: str | os.PathLike,
    uris: Iterable[str],
    labels: Iterable[str] | None = None,
    fmt: str = "csv",
) -> str:
    """Write a manifest of video URIs.

    Args:
        path: the manifest file.
        uris: video URIs or paths.
        labels: optional label per URI (csv/parquet only: a ``label`` column).
        fmt: ``"csv"`` (header ``uri[,label]``), ``"parquet"`` (columns ``uri[, label]``) or
            ``"txt"`` (one URI per line).

    Returns:
        ``str(path)``.
    """
    path, uris = str(path), [str(u) for u in uris]
    labels = None if labels is None else [str(v) for v in labels]
    if labels is not None and len(labels) != len(uris):
        raise ValueError(f"{len(labels)} labels for {len(uris)} uris")
    if fmt == "txt":
        if labels is not None:
            raise ValueError("a txt manifest cannot hold labels")
        with open(path, "w") as f:
            f.write("".join(f"{u}\n" for u in uris))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["uri"] if labels is None else ["uri", "label"])
            writer.writerows(([u] for u in uris) if labels is None else zip(uris, labels))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {"uri": pa.array(uris, pa.string())}
        if labels is not None:
            columns["label"] = pa.array(labels, pa.string())
        pq.write_table(pa.table(columns), path)
    else:
        raise ValueError(f"fmt must be 'csv', 'parquet' or 'txt', got {fmt!r}")
    return path


def _write(
    path: str,
    frames: np.ndarray,
    codec: str,
    *,
    time_base: Fraction,
    pts: list[int],
    rate: Fraction | None,
    gop: int | None = None,
) -> None:
    if codec not in CODEC_CONTAINERS:
        raise ValueError(f"codec must be one of {sorted(CODEC_CONTAINERS)}, got {codec!r}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in CODEC_CONTAINERS[codec]:
        raise ValueError(f"{codec} goes in {CODEC_CONTAINERS[codec]}, not {suffix!r}")
    _, height, width, _ = frames.shape
    pix_fmt = _PIX_FMT[codec]
    if codec == "libx264" and (width % 2 or height % 2):
        pix_fmt = "yuv444p"
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=rate) if rate else container.add_stream(codec)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = time_base
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "veryfast"}
        elif codec in ("mpeg4", "mjpeg"):
            # Fixed quantiser 2 (ffmpeg -q:v 2: high quality), so decoded content is predictable.
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = 2 * _FF_QP2LAMBDA
        if gop is not None:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                stream.options = {**stream.options, "keyint_min": str(gop), "sc_threshold": "0"}
        for frame_pts, frame in zip(pts, frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = frame_pts, time_base
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _index_frame(index: int, width: int, height: int) -> np.ndarray:
    frame = np.zeros((height, width, 3), np.uint8)
    bits = _INDEX_GRID * _INDEX_GRID
    for cell in range(bits):
        if (index >> (bits - 1 - cell)) & 1:
            r, c = divmod(cell, _INDEX_GRID)
            frame[
                r * height // _INDEX_GRID : (r + 1) * height // _INDEX_GRID,
                c * width // _INDEX_GRID : (c + 1) * width // _INDEX_GRID,
            ] = 255
    return frame


def _member_bytes(content: bytes | str | os.PathLike) -> bytes:
    if isinstance(content, bytes):
        return content
    with open(content, "rb") as f:
        return f.read()

"""Frame decoding behind one interface: decord (default) or PyAV, resized at decode.

``open_reader(backend, src, probe, size, resize, threads)`` returns a ``FrameReader`` whose
``iter_frames(indices)`` yields ``(index, frame (H, W, 3) uint8)`` for sorted unique indices.
Runs of nearby frames are decoded sequentially (decord's ``next()`` is about twice as fast as
``get_batch`` over every frame); a gap longer than ``SEEK_GAP`` frames is crossed by an
accurate seek, so sparse sampling costs what the needed frames cost, never more than a full
sequential decode.

Policies for bad input (each failure is a typed ``pipeline.errors`` error, recorded as the
video's ``videos`` row by the workers; never a crash):

- **Truncated videos are errors, and none of their clips are written.** A file cut short
  (an interrupted copy or upload) is ``status = error, error_type = Truncated``. For MP4/MOV the
  probe detects the cut from the box structure before any decoding, so even a faststart file
  (``moov`` first) cut inside ``mdat`` -- decodable up to the cut -- yields no clips: partial
  results from a file that is known to be incomplete would look complete in the ``clips``
  table. Where the cut only shows while decoding (the decoder runs out of frames before the
  frame count the index promised, other containers), ``iter_clips`` raises ``TruncatedError``
  and the failed segment's clips are dropped with it.
- A decoder that cannot open the stream or fails on its first frame (corrupt codec private
  data such as a damaged SPS) raises ``UndecodableStream``; a decoder error after some frames
  raises ``CorruptVideo`` naming the frame.
- **Clip times (``start_s``/``end_s``) are the decoder's presentation timestamps**, so they are
  right for variable-frame-rate video: ``start_s`` is when the clip's first frame is shown,
  ``end_s`` when its last frame stops being shown (the next frame's timestamp; for the last
  frame of a video, its own timestamp plus its duration). The probe's ``fps`` (frames /
  duration for VFR mp4, a nominal rate for mkv) is only the planning rate: it sizes segments
  and is the fallback (``frame / fps``) when a reader gives no timestamps.
- Frames are resized inside the decoder (decord's ``width``/``height``, FFmpeg's swscale for
  PyAV), so a 4K video never exists as a full-size array in Python: memory per decode actor is
  the decoder's own reference frames plus small resized clips.
- Widths decord 0.6 mis-decodes (``DECORD_BAD_WIDTHS``: it returns frames of the wrong shape)
  are never requested: the reader decodes one pixel wider and the centre crop takes it off.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
from typing import Iterator, Protocol

import numpy as np

from pipeline import errors
from pipeline.records import ClipPlan, VideoProbe
from pipeline.source import Source

log = logging.getLogger(__name__)

SEEK_GAP = 48
# Decode widths for which decord 0.6.0 returns frames of the wrong shape (FFmpeg pads rgb24 rows
# and decord divides the padded row by the width); measured in tests/videos.py.
DECORD_BAD_WIDTHS = frozenset({1, 2, 3, 4, 6, 8, 12, 16, 24, 48, 72})


class FrameReader(Protocol):
    num_frames: int

    def iter_frames(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]: ...

    def frame_span(self, index: int) -> tuple[float, float] | None:
        """``(shown at, shown until)`` in seconds of frame ``index``, if known (after it was
        yielded by ``iter_frames``), else None."""
        ...


def decode_size(probe: VideoProbe, size: tuple[int, int], resize: str) -> tuple[int, int]:
    """(height, width) to decode at: exact ``size`` for "stretch"; for "crop", the size whose
    short side covers ``size`` with the aspect kept (a centre crop to ``size`` follows)."""
    out_h, out_w = size
    if resize == "stretch":
        return out_h, out_w
    scale = max(out_h / probe.height, out_w / probe.width)
    return max(out_h, round(probe.height * scale)), max(out_w, round(probe.width * scale))


def centre_crop(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = frame.shape[:2]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return frame[top:top + size[0], left:left + size[1]]


def _runs(indices: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i in indices:
        if runs and i - runs[-1][-1] <= SEEK_GAP:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


class DecordReader:
    """decord ``VideoReader`` resized at decode."""

    def __init__(self, src: Source, height: int, width: int, threads: int):
        import decord

        while width in DECORD_BAD_WIDTHS:
            width += 1  # iter_clips' centre crop removes the extra column
        self.shape = (height, width, 3)
        try:
            self._vr = decord.VideoReader(src, ctx=decord.cpu(0), width=width, height=height,
                                          num_threads=threads)
        except decord.DECORDError as err:
            raise _classify_decord_error(err) from None
        self.num_frames = len(self._vr)
        self._pos = 0
        self._decoded = 0

    def frame_span(self, index: int) -> tuple[float, float] | None:
        import decord

        try:
            start = float(self._vr.get_frame_timestamp(index)[0])
            if index + 1 < self.num_frames:
                end = float(self._vr.get_frame_timestamp(index + 1)[0])
            else:
                end = float(self._vr.get_frame_timestamp(index)[1])
        except (decord.DECORDError, IndexError):
            return None
        return (start, end) if end > start else None

    def iter_frames(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        import decord

        try:
            for run in _runs(indices):
                if run[0] != self._pos:
                    self._vr.seek_accurate(run[0])
                    self._pos = run[0]
                wanted = set(run)
                while self._pos <= run[-1]:
                    frame = self._vr.next()
                    self._decoded += 1
                    if self._pos in wanted:
                        array = frame.asnumpy()
                        if array.shape != self.shape:
                            raise errors.CorruptVideoError(
                                f"decoder returned a frame of shape {array.shape} at frame "
                                f"{self._pos}, expected {self.shape}")
                        yield self._pos, array
                    self._pos += 1
        except StopIteration:
            raise errors.TruncatedError(
                f"the stream ends at frame {self._pos}, its index promises {self.num_frames}") from None
        except decord.DECORDError as err:
            if not self._decoded:
                raise errors.UndecodableStreamError(
                    f"no frame decodes: {_first_line(err)}") from None
            raise errors.CorruptVideoError(
                f"decoding failed at frame {self._pos}: {_first_line(err)}") from None


class PyAVReader:
    """PyAV decode, frames reformatted (resized) by FFmpeg's swscale."""

    def __init__(self, src: Source, height: int, width: int, threads: int, probe: VideoProbe):
        import av

        if isinstance(src, io.BytesIO):
            src.seek(0)
        try:
            self._container = av.open(src, "r")
        except av.error.FFmpegError as err:
            raise errors.CorruptVideoError(f"cannot open: {err}") from None
        if not self._container.streams.video:
            raise errors.NoVideoStreamError("no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        if threads:
            self._stream.thread_count = threads
        self._size = (width, height)
        self.num_frames = probe.num_frames
        self._spans: dict[int, tuple[float, float]] = {}

    def frame_span(self, index: int) -> tuple[float, float] | None:
        return self._spans.get(index)

    def iter_frames(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        import av

        wanted = set(indices)
        last = indices[-1] if indices else -1
        pos = -1
        held: tuple[int, np.ndarray] | None = None  # yielded once the next frame fixes its end time
        try:
            for pos, frame in enumerate(self._container.decode(self._stream)):
                self._record_span(pos, frame)
                if held is not None:
                    yield held
                    held = None
                if pos > last:
                    return
                if pos in wanted:
                    held = (pos, frame.to_ndarray(format="rgb24", width=self._size[0],
                                                  height=self._size[1]))
        except av.error.FFmpegError as err:
            if held is not None and held[0] == last:  # every wanted frame decoded: not our problem
                yield held
                return
            if pos < 0:
                raise errors.UndecodableStreamError(f"no frame decodes: {err}") from None
            raise errors.CorruptVideoError(f"decoding failed after frame {pos}: {err}") from None
        if held is not None:
            yield held

    def _record_span(self, pos: int, frame) -> None:
        shown = frame.time
        if shown is None:
            return
        before = self._spans.get(pos - 1)
        if before is not None and shown > before[0]:
            self._spans[pos - 1] = (before[0], shown)  # a frame shows until the next one does
        tb = frame.time_base or self._stream.time_base
        duration = float(frame.duration * tb) if frame.duration and tb else 0.0
        self._spans[pos] = (shown, shown + duration)


def _first_line(err: Exception) -> str:
    """The first line of ``err``, without decord's ``[hh:mm:ss] /build/path.cc:123: `` prefix."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", text.splitlines()[0])


def _classify_decord_error(err: Exception) -> errors.VideoError:
    msg = _first_line(err)
    low = str(err).lower()
    if "codec" in low and ("not found" in low or "unsupported" in low or "decoder" in low):
        return errors.UnsupportedCodecError(msg)
    if "avcodec_open2" in low:
        return errors.UndecodableStreamError(f"the decoder cannot open the stream: {msg}")
    if "stream" in low and "video" in low:
        return errors.NoVideoStreamError(msg)
    return errors.CorruptVideoError(msg)


def open_reader(backend: str, src: Source, probe: VideoProbe, size: tuple[int, int],
                resize: str = "crop", threads: int = 1) -> FrameReader:
    """A reader for ``src`` decoding at the size ``decode_size`` gives."""
    height, width = decode_size(probe, size, resize)
    if isinstance(src, io.BytesIO):
        src.seek(0)
    if backend == "decord":
        return DecordReader(src, height, width, threads)
    if backend == "pyav":
        return PyAVReader(src, height, width, threads, probe)
    raise ValueError(f"unknown decode backend {backend!r}; expected 'decord' or 'pyav'")


def iter_clips(reader: FrameReader, clips: list[ClipPlan], size: tuple[int, int]
               ) -> Iterator[tuple[ClipPlan, np.ndarray]]:
    """Yield ``(clip, frames (T, H, W, 3) uint8)`` in clip order, holding only frames still needed.

    Every planned clip is yielded, or a typed error is raised: a caller counting clips never
    waits for one that silently went missing. Frame indices beyond what the decoder finds
    (headers can over-count) are clamped to the last decodable frame. The yielded clip carries
    the decoder's timestamps as ``start_s``/``end_s`` when the reader has them (see the module
    docstring).

    Raises:
        TruncatedError: the stream ended before a planned frame.
        CorruptVideoError, UndecodableStreamError: from the reader.
    """
    last = reader.num_frames - 1
    if last < 0:
        raise errors.CorruptVideoError("decoder found no frames")
    plans = [(c, [min(i, last) for i in c.frame_indices]) for c in clips]
    needed = sorted({i for _, idx in plans for i in idx})
    cache: dict[int, np.ndarray] = {}
    pending = list(plans)
    for index, frame in reader.iter_frames(needed):
        if frame.shape[:2] != size:
            frame = centre_crop(frame, size)
        cache[index] = frame
        while pending and max(pending[0][1]) <= index:
            clip, idx = pending.pop(0)
            yield _with_times(clip, idx, reader), np.stack([cache[i] for i in idx])  # (T, H, W, 3)
            keep_from = min(pending[0][1]) if pending else index + 1
            for i in [i for i in cache if i < keep_from]:
                del cache[i]
    if pending:
        raise errors.TruncatedError(
            f"the stream ends before frame {max(pending[0][1])} of the {reader.num_frames} "
            "its index promises")


def _with_times(clip: ClipPlan, indices: list[int], reader: FrameReader) -> ClipPlan:
    first, last = reader.frame_span(indices[0]), reader.frame_span(max(indices))
    if first is None or last is None or last[1] <= first[0]:
        return clip
    return dataclasses.replace(clip, start_s=first[0], end_s=last[1])

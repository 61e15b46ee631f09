"""Frame decoding behind one interface: decord (default) or PyAV, resized at decode, upright.

``decode_clips(src, probe, clips, size, backend=..., threads=..., resize=...)`` is what the
decode worker calls: it yields ``(clip, frames, backend)`` and falls back to the other backend
when the first cannot open or decode the file (before the first clip only; see its docstring
and docs/MEDIA.md). Underneath, ``open_reader(backend, src, probe, size, resize, threads)``
returns a ``FrameReader`` whose ``iter_frames(indices)`` yields ``(index, frame (H, W, 3)
uint8)`` for sorted unique indices, upright (the probe's ``rotation`` applied) at the probe's
displayed aspect; ``iter_clips`` crops those frames straight into each clip's ``(T, H, W, 3)``
array.

What decord decodes (``DecordReader``): the needed frames with ``next()`` (sequential
``next()`` is about twice as fast as ``get_batch`` over every frame); frames no clip needs are
skipped -- decoded, since later frames depend on them, but never converted to RGB, resized or
copied, which is 20-40 % of a frame's cost (the more, the smaller the source). A gap is crossed
by a seek only when a keyframe more than ``SEEK_GAP`` frames ahead lies inside it (the seek then
saves decoding everything up to that keyframe). So sparse sampling costs what the needed frames
and the frames they depend on cost, never more than a full sequential decode, and a dense plan
decodes exactly like the sequential loop. Frames are handed over without a copy (a read-only
view of decord's buffer): the one copy is the centre crop into the clip array.

Policies for bad input (each failure is a typed ``pipeline.errors`` error, recorded as the
video's ``videos`` row by the workers; never a crash):

- **Truncated videos are errors, and none of their clips are written.** A file cut short
  (an interrupted copy or upload) is ``status = error, error_type = Truncated``. For every
  container the archive lists, the probe detects the cut from the container's structure before
  any decoding (``pipeline.truncation``), so even a faststart MP4 (``moov`` first) or a
  Matroska file cut part way -- decodable up to the cut -- yields no clips: partial
  results from a file that is known to be incomplete would look complete in the ``clips``
  table. Where the cut only shows while decoding (the decoder runs out of frames before the
  frame count the index promised, other containers), ``iter_clips`` raises ``TruncatedError``
  and the failed segment's clips are dropped with it.
- A decoder that cannot open the stream or fails on its first frame (corrupt codec private
  data such as a damaged SPS) raises ``UndecodableStream``; a decoder error after some frames
  raises ``CorruptVideo`` naming the frame.
- **Clip times (``start_s``/``end_s``) are the frames' presentation times** in seconds from
  the stream's first frame (``pipeline.timeline``: decord's table when whole, else the
  packets' times), so they are right for variable-frame-rate video, B-frames, MPEG-PS/TS
  clock offsets and AVI: ``start_s`` is when the clip's first frame is shown, ``end_s`` when
  its last frame stops being shown (the next frame's time; for the last frame of a video, its
  own time plus its duration). The probe's ``fps`` (frames / duration for VFR mp4, a nominal
  rate for mkv) is only the planning rate: it sizes segments and is the fallback
  (``frame / fps``) when a stream records no times.
- Frames are resized inside the decoder (decord's ``width``/``height``, FFmpeg's swscale for
  PyAV), so a 4K video never exists as a full-size array in Python: memory per decode actor is
  the decoder's own reference frames plus small resized clips.
- Widths decord 0.6 mis-decodes (``DECORD_BAD_WIDTHS``: it returns frames of the wrong shape)
  are never requested: the reader decodes one pixel wider and the centre crop takes it off.
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import logging
import re
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from pipeline import errors
from pipeline.records import ClipPlan, VideoProbe
from pipeline.source import Source
from pipeline.timeline import Timeline, from_decord_table, read_timeline
from pipeline.truncation import ISO_BOXES, is_mpegts

log = logging.getLogger(__name__)

# A gap between needed frames is crossed by a seek only when a keyframe more than this many
# frames ahead lies inside it. Below that, decoding through (without converting) costs about as
# much as the seek, and stays exactly the sequential decode even for open-GOP streams, whose
# leading pictures decode differently after a seek.
SEEK_GAP = 48
# Decode widths for which decord 0.6.0 returns frames of the wrong shape (FFmpeg pads rgb24 rows
# and decord divides the padded row by the width); measured in tests/videos.py.
DECORD_BAD_WIDTHS = frozenset({1, 2, 3, 4, 6, 8, 12, 16, 24, 48, 72})
BACKENDS = ("decord", "pyav")


class FrameReader(Protocol):
    num_frames: int

    def iter_frames(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]: ...

    def frame_span(self, index: int) -> tuple[float, float] | None:
        """``(shown at, shown until)`` in seconds of frame ``index``, if known (after it was
        yielded by ``iter_frames``), else None."""
        ...


def decode_size(probe: VideoProbe, size: tuple[int, int], resize: str) -> tuple[int, int]:
    """(height, width) to decode at, upright: exact ``size`` for "stretch"; for "crop", the size
    whose short side covers ``size`` with the DISPLAYED aspect kept (``probe.width``/``height``:
    rotation and sample aspect ratio applied; a centre crop to ``size`` follows)."""
    out_h, out_w = size
    if resize == "stretch":
        return out_h, out_w
    scale = max(out_h / probe.height, out_w / probe.width)
    return max(out_h, round(probe.height * scale)), max(out_w, round(probe.width * scale))


def stored_size(height: int, width: int, rotation: int) -> tuple[int, int]:
    """(height, width) of a stored frame that shows as ``height`` x ``width`` once turned."""
    return (width, height) if rotation in (90, 270) else (height, width)


def upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """``frame`` turned ``rotation`` degrees clockwise: a view, not a copy (the clip's centre crop
    is the one copy)."""
    return np.rot90(frame, k=-(rotation // 90)) if rotation else frame


def centre_crop(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = frame.shape[:2]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return frame[top : top + size[0], left : left + size[1]]


class DecordReader:
    """decord ``VideoReader`` resized at decode, frames upright.

    ``iter_frames`` yields read-only views of decord's frame buffers (each view keeps its
    buffer alive), so a frame is never copied before its centre crop lands in a clip.

    Rotation: decord's FFmpeg (4.1) reads the display matrix of ISO-BMFF files only (mp4, mov,
    3gp), and then turns the frame itself before scaling it to the requested size; for other
    containers it hands over the stored frame, which is decoded at the stored orientation's
    size and turned here (``upright``: a view). MPEG-TS is refused (``UndecodableStream``, so
    ``decode_clips`` decodes it with PyAV): decord silently returns the wrong frames there.
    """

    def __init__(
        self,
        src: Source,
        height: int,
        width: int,
        threads: int,
        rotation: int = 0,
        fps: float = 0.0,
    ):
        import decord

        head = _head(src)
        if is_mpegts(head):
            # Measured: decord 0.6 starts MPEG-2 TS at the second keyframe, repeating the last
            # frame to make up the count, and fails on H.264 TS at the end of the stream.
            raise errors.UndecodableStreamError("decord does not read MPEG-TS reliably")
        self._rotation = 0 if head[4:8] in ISO_BOXES else rotation
        out_h, out_w = stored_size(height, width, self._rotation)
        while out_w in DECORD_BAD_WIDTHS:
            out_w += 1  # iter_clips' centre crop removes the extra column
        self._decoded_shape = (out_h, out_w, 3)
        self.shape = (*stored_size(out_h, out_w, self._rotation), 3)
        try:
            self._vr = decord.VideoReader(
                src, ctx=decord.cpu(0), width=out_w, height=out_h, num_threads=threads
            )
            self._keys = sorted(int(k) for k in self._vr.get_key_indices())
        except (decord.DECORDError, AssertionError, RuntimeError) as err:
            raise _classify_decord_error(err) from None
        self.num_frames = len(self._vr)
        self._pos = 0  # the frame decord's next() returns
        self._decoded = 0  # frames decoded or skipped so far: zero means the stream never decoded
        self._src, self._fps = src, fps
        self._timeline: Timeline | None = None

    def frame_span(self, index: int) -> tuple[float, float] | None:
        """From decord's frame index (every packet's pts, read when the file was opened) when it
        is whole, else from a demux of the file (``pipeline.timeline``)."""
        if self._timeline is None:
            self._timeline = self._read_timeline()
        return self._timeline.span(index)

    def _read_timeline(self) -> Timeline:
        import decord

        try:
            table = self._vr.get_frame_timestamp(range(self.num_frames))  # (N, 2) float32 seconds
        except (decord.DECORDError, IndexError):
            table = np.empty((0, 2), np.float32)
        timeline = from_decord_table(table)
        if timeline is None:
            log.debug("decord's frame times are unset; reading them from the packets")
            timeline = read_timeline(self._src, self._fps)  # decord holds its own copy of src
        return timeline

    def iter_frames(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        import decord

        try:
            for index in indices:
                if index != self._pos:
                    self._move_to(index)
                array = np.from_dlpack(_DLPackFrame(self._vr.next()))  # a view, not a copy
                self._decoded += 1
                self._pos = index + 1
                if array.shape != self._decoded_shape:
                    raise errors.CorruptVideoError(
                        f"decoder returned a frame of shape {array.shape} at frame {index}, "
                        f"expected {self._decoded_shape}"
                    )
                yield index, upright(array, self._rotation)
        except StopIteration:
            raise errors.TruncatedError(
                f"the stream ends at frame {self._pos}, its index promises {self.num_frames}"
            ) from None
        except decord.DECORDError as err:
            if not self._decoded:
                raise errors.UndecodableStreamError(
                    f"no frame decodes: {_first_line(err)}"
                ) from None
            raise errors.CorruptVideoError(
                f"decoding failed at frame {self._pos}: {_first_line(err)}"
            ) from None

    def _move_to(self, target: int) -> None:
        """Make ``target`` the frame ``next()`` returns, decoding as little as the stream allows.

        decord's ``seek_accurate`` to a frame in the current GOP skips to it (decodes without
        converting); across a keyframe it seeks, checks where it landed, and skips. Its
        ``skip_frames`` would also seek, unchecked, whenever a skip reaches a keyframe, so a gap
        decoded through a keyframe stops one frame short of it and ``next()``s that frame.
        """
        keys = self._keys
        while self._pos != target:
            after = bisect.bisect_right(keys, self._pos)  # the first keyframe past the position
            crossing = self._pos < target and after < len(keys) and keys[after] <= target
            needs = keys[bisect.bisect_right(keys, target) - 1] if crossing else 0  # target's key
            if crossing and needs - self._pos <= SEEK_GAP:
                stop = keys[after] - 1
                if stop > self._pos:
                    self._vr.seek_accurate(stop)  # a skip within the GOP
                self._vr.next()
                stop += 1
            else:
                self._vr.seek_accurate(target)  # a skip within the GOP, a far seek, or backwards
                stop = target
            self._decoded += abs(stop - self._pos)
            self._pos = stop


class _DLPackFrame:
    """Hands a decord NDArray to ``np.from_dlpack``: numpy holds decord's buffer (no copy) and
    releases it when the array goes."""

    __slots__ = ("_nd",)

    def __init__(self, nd):
        self._nd = nd

    def __dlpack__(self, **_):
        return self._nd.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU: decord decodes on ctx=cpu(0)


class PyAVReader:
    """PyAV decode, frames reformatted (resized) by FFmpeg's swscale at the stored orientation,
    then turned upright (a view).

    Frame times come from the packets (``pipeline.timeline.read_timeline``, read before decoding
    starts), not from decoded frames: FFmpeg guesses those from decode order where the container
    stores none (H.264 in AVI), and they may then run backwards.
    """

    def __init__(self, src: Source, height: int, width: int, threads: int, probe: VideoProbe):
        import av

        try:
            self._timeline = read_timeline(src, probe.fps)
            self._container = av.open(src, "r")
        except av.error.FFmpegError as err:
            raise errors.CorruptVideoError(f"cannot open: {err}") from None
        except IndexError:
            raise errors.NoVideoStreamError("no video stream") from None
        if not self._container.streams.video:
            raise errors.NoVideoStreamError("no video stream")
        self._stream = self._container.streams.video[0]
        if self._stream.codec_context is None:
            raise errors.UnsupportedCodecError("PyAV's FFmpeg has no decoder for the stream")
        self._stream.thread_type = "AUTO"
        if threads:
            self._stream.thread_count = threads
        self._rotation = probe.rotation
        out_h, out_w = stored_size(height, width, probe.rotation)
        self._size = (out_w, out_h)
        self.num_frames = probe.num_frames

    def frame_span(self, index: int) -> tuple[float, float] | None:
        return self._timeline.span(index)

    def iter_frames(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        import av

        wanted = set(indices)
        last = indices[-1] if indices else -1
        pos = -1
        try:
            for pos, frame in enumerate(self._container.decode(self._stream)):
                if pos > last:
                    return
                if pos in wanted:
                    array = frame.to_ndarray(
                        format="rgb24", width=self._size[0], height=self._size[1]
                    )
                    yield pos, upright(array, self._rotation)
                    if pos == last:  # an error past the last wanted frame is not our problem
                        return
        except av.error.FFmpegError as err:
            if pos < 0:
                raise errors.UndecodableStreamError(f"no frame decodes: {err}") from None
            raise errors.CorruptVideoError(f"decoding failed after frame {pos}: {err}") from None


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
    if "cannot find video stream" in low:
        # The probe found the video stream; decord's FFmpeg (4.1) finds none it has a decoder
        # for (AV1, for one), which is what this means.
        return errors.UnsupportedCodecError(f"decord has no decoder for the video stream: {msg}")
    if "stream" in low and "video" in low:
        return errors.NoVideoStreamError(msg)
    return errors.CorruptVideoError(msg)


def _head(src: Source, n: int = 1024) -> bytes:
    if isinstance(src, io.BytesIO):
        return src.getbuffer()[:n].tobytes()
    with open(src, "rb") as f:
        return f.read(n)


def open_reader(
    backend: str,
    src: Source,
    probe: VideoProbe,
    size: tuple[int, int],
    resize: str = "crop",
    threads: int = 1,
) -> FrameReader:
    """A reader for ``src`` decoding at the size ``decode_size`` gives."""
    height, width = decode_size(probe, size, resize)
    if isinstance(src, io.BytesIO):
        src.seek(0)
    if backend == "decord":
        return DecordReader(src, height, width, threads, probe.rotation, probe.fps)
    if backend == "pyav":
        return PyAVReader(src, height, width, threads, probe)
    raise ValueError(f"unknown decode backend {backend!r}; expected one of {BACKENDS}")


def decode_clips(
    src: Source,
    probe: VideoProbe,
    clips: list[ClipPlan],
    size: tuple[int, int],
    *,
    backend: str = "decord",
    threads: int = 1,
    resize: str = "crop",
) -> Iterator[tuple[ClipPlan, np.ndarray, str]]:
    """Decode ``clips`` of ``src`` with ``backend``, falling back to the other backend.

    The decode worker's one entry point. Yields ``(clip, frames, backend)`` per planned clip, in
    order: the clip with its presentation times (``start_s``/``end_s``, seconds from the
    stream's start), its frames ``(T, H, W, 3)`` uint8 upright at ``size`` (``resize`` "crop"
    or "stretch", see ``decode_size``), and the name of the backend that decoded it.

    Fallback rule: the probe has found a video stream, so a backend that cannot open or decode it
    (a codec its FFmpeg lacks, a stream without duration or index, a decoder-specific failure)
    is a fact about that backend, not the file; the other backend then decodes it, from the
    start (``src`` is rewound). This happens only before the first clip is yielded -- after
    that, clips already handed on cannot be taken back, and an error propagates as from
    ``iter_clips``. When every backend fails, the error raised is the one of the backend tried
    last, unless an earlier one was more telling (``UnsupportedCodec`` is raised only when no
    backend has a decoder).

    Raises:
        ValueError: an unknown ``backend``.
        VideoError: (typed, see ``pipeline.errors``) no backend decodes the file.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; expected one of {BACKENDS}")
    order = [backend, *(b for b in BACKENDS if b != backend)]
    failures: list[errors.VideoError] = []
    for name in order:
        try:
            reader = open_reader(name, src, probe, size, resize, threads)
            produced = iter_clips(reader, clips, size)
            first = next(produced, None)
        except errors.VideoError as err:
            log.info(
                "%s cannot decode the video (%s: %s)%s",
                name,
                err.error_type,
                err,
                "" if name == order[-1] else "; trying the next backend",
            )
            failures.append(err)
            continue
        if failures:
            log.info("decoded with %s after %s failed", name, order[0])
        if first is None:
            return
        yield (*first, name)
        for clip, frames in produced:
            yield clip, frames, name
        return
    raise _verdict(failures)


def _verdict(failures: list[errors.VideoError]) -> errors.VideoError:
    """The error to record when no backend decodes: the last backend's, unless it merely says it
    has no decoder while another had one and failed for a reason of the file's."""
    last = failures[-1]
    if isinstance(last, errors.UnsupportedCodecError):
        telling = [e for e in failures if not isinstance(e, errors.UnsupportedCodecError)]
        if telling:
            return telling[-1]
    return last


def iter_clips(
    reader: FrameReader, clips: list[ClipPlan], size: tuple[int, int]
) -> Iterator[tuple[ClipPlan, np.ndarray]]:
    """Yield ``(clip, frames (T, H, W, 3) uint8)`` in clip order, holding one clip at a time.

    Every planned clip is yielded, or a typed error is raised: a caller counting clips never
    waits for one that silently went missing. Frame indices beyond what the decoder finds
    (headers can over-count) are clamped to the last decodable frame. The yielded clip carries
    the decoder's timestamps as ``start_s``/``end_s`` when the reader has them (see the module
    docstring).

    Frames are cropped straight into the array of the clip to be yielded next. A frame that a
    later clip needs too (overlapping clips, frames out of order) is also held -- the decoder's
    frame itself, not a copy -- until that clip is next; so memory holds one clip plus the frames
    that clips share, and a frame is copied once per clip it appears in.

    Raises:
        TruncatedError: the stream ended before a planned frame.
        CorruptVideoError, UndecodableStreamError: from the reader.
    """
    last = reader.num_frames - 1
    if last < 0:
        raise errors.CorruptVideoError("decoder found no frames")
    plans = [(c, [min(i, last) for i in c.frame_indices]) for c in clips]
    slots: dict[int, list[tuple[int, int]]] = {}  # frame index -> [(plan number, position)]
    for p, (_, idx) in enumerate(plans):
        for t, i in enumerate(idx):
            slots.setdefault(i, []).append((p, t))
    ends = [max(idx) for _, idx in plans]
    held: dict[int, list] = {}  # frame index -> [frame, positions in later clips still to fill]
    head, frames = 0, None  # the next clip to yield and its (T, H, W, 3) array, once started
    for index, frame in reader.iter_frames(sorted(slots)):
        if frame.shape[:2] != size:
            frame = centre_crop(frame, size)
        later = 0
        for p, t in slots.pop(index):
            if p != head:
                later += 1
                continue
            if frames is None:
                frames = np.empty((len(plans[p][1]), *size, 3), np.uint8)
            frames[t] = frame
        if later:
            held[index] = [frame, later]
        while head < len(plans) and ends[head] <= index:
            clip, idx = plans[head]
            yield _with_times(clip, idx, reader), frames
            head += 1
            frames = _start_clip(plans[head][1], held, size) if head < len(plans) else None
    if head < len(plans):
        raise errors.TruncatedError(
            f"the stream ends before frame {ends[head]} of the {reader.num_frames} "
            "its index promises"
        )


def _start_clip(
    indices: list[int], held: dict[int, list], size: tuple[int, int]
) -> np.ndarray | None:
    """The array of the clip that is now next, with the frames already decoded for it (taken
    from ``held``, which lets go of each frame once no clip still needs it); None if none is."""
    frames = None
    for t, i in enumerate(indices):
        entry = held.get(i)
        if entry is None:
            continue
        if frames is None:
            frames = np.empty((len(indices), *size, 3), np.uint8)
        frames[t] = entry[0]
        entry[1] -= 1
        if not entry[1]:
            del held[i]
    return frames


def _with_times(clip: ClipPlan, indices: list[int], reader: FrameReader) -> ClipPlan:
    first, last = reader.frame_span(indices[0]), reader.frame_span(max(indices))
    if first is None or last is None or last[1] <= first[0]:
        return clip
    return dataclasses.replace(clip, start_s=first[0], end_s=last[1])

"""When each frame of a video is shown: presentation times in seconds from the stream's start.

Clip times (``start_s``/``end_s``) come from here, for every container. Two sources:

- ``from_decord_table``: decord's per-frame table (read with the file's index, free once the
  reader is open), used as is when it is whole. decord leaks FFmpeg's "no timestamp" value
  (``AV_NOPTS_VALUE`` x time base: -1.0e14 s for MPEG-PS, -3.7e17 s for AVI holding B-frames),
  so a table with any such value is refused.
- ``read_timeline``: the video packets' presentation times, read by a demux (no decoding) with
  PyAV and sorted, which is presentation order whatever the decode order (B-frames). Packets
  without a presentation time use their decode time (AVI stores neither: FFmpeg counts frames
  there); a stream with neither gets ``index / fps``.

Either way times are shifted so the first frame shows at 0: MPEG-PS/TS streams start at an
arbitrary clock value (0.54 s, 1.4 s, hours for a broadcast capture), which is no time in the
video.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from pipeline.source import Source

# |time| above this is an unset timestamp that leaked, not a time (no video runs 30 years).
_MAX_SECONDS = 1e9


@dataclass(frozen=True)
class Timeline:
    """Frame ``i`` shows from ``starts[i]`` until ``starts[i + 1]`` (the last one until ``end``)."""

    starts: tuple[float, ...]
    end: float

    def __post_init__(self) -> None:
        if self.starts and self.end < self.starts[-1]:
            raise ValueError(f"timeline ends at {self.end} before its last frame {self.starts[-1]}")

    def __len__(self) -> int:
        return len(self.starts)

    def span(self, index: int) -> tuple[float, float] | None:
        """``(shown at, shown until)`` of frame ``index``; None outside the timeline."""
        if not 0 <= index < len(self.starts):
            return None
        end = self.starts[index + 1] if index + 1 < len(self.starts) else self.end
        return (self.starts[index], end) if end > self.starts[index] else None

    def __repr__(self) -> str:
        return f"Timeline({len(self.starts)} frames, 0-{self.end:.3f}s)"


def from_decord_table(table: np.ndarray) -> Timeline | None:
    """A timeline from decord's ``get_frame_timestamp`` table ``(N, 2)`` of ``[start, end]``
    seconds; None when it holds unset timestamps or is out of presentation order."""
    if table.ndim != 2 or not len(table):
        return None
    starts, stops = table[:, 0].astype(np.float64), table[:, 1].astype(np.float64)
    if not (np.isfinite(table).all() and np.abs(table).max() < _MAX_SECONDS):
        return None
    if len(starts) > 1 and not (np.diff(starts) > 0).all():
        return None
    origin = float(starts[0])
    end = max(float(stops[-1]), float(starts[-1])) - origin
    return Timeline(tuple((starts - origin).tolist()), end)


def read_timeline(src: Source, fps: float) -> Timeline:
    """The presentation times of ``src``'s first video stream, from a demux (no decoding).

    ``fps`` (the probe's planning rate) fills in what a stream does not record: the last
    frame's duration when its packet has none, and every time when no packet has one.
    """
    import av

    if isinstance(src, io.BytesIO):
        src.seek(0)
    times: list[tuple[float | None, float]] = []  # (presentation time, duration) per packet
    try:
        with av.open(src, "r") as container:
            stream = container.streams.video[0]
            tb = float(stream.time_base or 0)
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                stamp = packet.pts if packet.pts is not None else packet.dts
                times.append(
                    (None if stamp is None or not tb else stamp * tb, (packet.duration or 0) * tb)
                )
    finally:
        if isinstance(src, io.BytesIO):
            src.seek(0)
    step = 1.0 / fps if fps > 0 else 0.04
    if not times or any(t is None or not math.isfinite(t) for t, _ in times):
        starts, last_duration = [i * step for i in range(len(times))], step
    else:
        ordered = sorted(times)
        starts = [t - ordered[0][0] for t, _ in ordered]
        last_duration = ordered[-1][1]
    end = (starts[-1] + (last_duration if last_duration > 0 else step)) if starts else 0.0
    return Timeline(tuple(starts), end)

"""Typed records that flow through the pipeline: video tasks, probes, clip plans, segment tasks."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any


def make_video_id(archive_uri: str, member: str, size: int) -> str:
    """Stable id: hash of archive URI + member path + size, so re-runs are idempotent. The URI is
    taken without credentials or signing parameters (see ``uris.canonical_uri``)."""
    from pipeline.uris import canonical_uri

    digest = hashlib.sha256(f"{canonical_uri(archive_uri)}\0{member}\0{size}".encode()).hexdigest()
    return digest[:20]


@dataclass(frozen=True)
class VideoTask:
    """One input video as listed from the archive.

    ``source`` is the file holding the bytes; ``member`` the path inside a tar/zip container
    (``container``), or None for a plain file. ``data_offset`` locates a tar member's bytes.
    """

    video_id: str
    video_uri: str
    source: str
    size: int
    container: str | None = None
    member: str | None = None
    data_offset: int | None = None
    label: str | None = None
    problem: str | None = None  # an error found while listing (e.g. an unsafe member name)

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> VideoTask:
        return cls(**{k: row.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class VideoProbe:
    """What the probe learnt about a video's first video stream (plain scalars: one Arrow column
    each via ``asdict``).

    ``width``/``height`` are the DISPLAYED size: the stored (coded) picture turned by
    ``rotation`` and stretched by ``sample_aspect`` (width x sample_aspect), which is what the
    decode readers deliver. ``rotation`` is the clockwise turn, in degrees (0, 90, 180 or 270),
    that shows a stored frame upright. ``codec`` is the codec's name (``h264``, ``av1``), never a
    decoder's (``libdav1d``). ``coded_width``/``coded_height`` are the stored picture's size
    (0 when unknown, as in records made before they existed).
    """

    duration_s: float
    fps: float
    num_frames: int
    width: int
    height: int
    codec: str
    rotation: int = 0
    coded_width: int = 0
    coded_height: int = 0
    sample_aspect: float = 1.0

    def __post_init__(self) -> None:
        if self.num_frames < 0 or self.fps <= 0:
            raise ValueError(f"invalid probe: {self}")
        if self.rotation not in (0, 90, 180, 270):
            raise ValueError(f"rotation must be 0, 90, 180 or 270, got {self.rotation}")
        if self.sample_aspect <= 0:
            raise ValueError(f"sample_aspect must be > 0, got {self.sample_aspect}")


@dataclass(frozen=True)
class ClipPlan:
    """Frames of one clip. ``end_frame`` is the last frame index, inclusive."""

    clip_index: int
    frame_indices: tuple[int, ...]
    start_s: float
    end_s: float

    @property
    def start_frame(self) -> int:
        return self.frame_indices[0]

    @property
    def end_frame(self) -> int:
        return self.frame_indices[-1]

    def __repr__(self) -> str:
        return (
            f"ClipPlan(#{self.clip_index}, frames {self.start_frame}..{self.end_frame} "
            f"x{len(self.frame_indices)}, {self.start_s:.2f}-{self.end_s:.2f}s)"
        )


@dataclass(frozen=True)
class SegmentTask:
    """A contiguous run of one video's clips, decoded by one decode task."""

    video: VideoTask
    segment_index: int
    num_segments: int
    clips: tuple[ClipPlan, ...] = field(default_factory=tuple)

    def to_row(self) -> dict[str, Any]:
        return {
            "video": self.video.to_row(),
            "segment_index": self.segment_index,
            "num_segments": self.num_segments,
            "clips": [
                {
                    "clip_index": c.clip_index,
                    "frame_indices": list(c.frame_indices),
                    "start_s": c.start_s,
                    "end_s": c.end_s,
                }
                for c in self.clips
            ],
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SegmentTask:
        clips = tuple(
            ClipPlan(
                int(c["clip_index"]),
                tuple(int(i) for i in c["frame_indices"]),
                float(c["start_s"]),
                float(c["end_s"]),
            )
            for c in row["clips"]
        )
        return cls(
            VideoTask.from_row(row["video"]),
            int(row["segment_index"]),
            int(row["num_segments"]),
            clips,
        )

    def __repr__(self) -> str:
        return (
            f"SegmentTask({self.video.video_uri!r}, segment {self.segment_index + 1}/"
            f"{self.num_segments}, {len(self.clips)} clips)"
        )

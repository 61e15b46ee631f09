"""The driver's view of the stream: which shards are complete, from the writers' status rows.

State is kept per OPEN shard only (its segments seen so far and its part-file keys) and
dropped when the shard is handed to its commit, so the driver's memory follows the shards in
flight, never the archive. A segment is complete when all its planned clips were seen, or,
once its error row was seen, the clips decoded before the error; a video when all its
segments are; a shard when all the videos this run processes in it are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.rows import SHARD, SHARD_BASE, SHARD_KEY, SHARD_VIDEOS


@dataclass
class _Segment:
    planned: int
    clips: set[int] = field(default_factory=set)
    failed: bool = False
    emitted_before_error: int = 0

    @property
    def complete(self) -> bool:
        return len(self.clips) >= (self.emitted_before_error if self.failed else self.planned)


@dataclass
class OpenShard:
    index: int
    key: str
    videos_expected: int
    merge_with_committed: bool
    parts: set[str] = field(default_factory=set)
    segments: dict[tuple[str, int], _Segment] = field(default_factory=dict)
    num_segments: dict[str, int] = field(default_factory=dict)
    segments_done: dict[str, int] = field(default_factory=dict)
    videos_done: int = 0

    @property
    def complete(self) -> bool:
        return self.videos_done >= self.videos_expected

    def incomplete_videos(self) -> dict[str, str]:
        """Videos seen but not complete: video_id -> what is missing."""
        return {
            vid: f"{n - self.segments_done.get(vid, 0)} of {n} segments never came back "
            "from the workers"
            for vid, n in self.num_segments.items()
            if self.segments_done.get(vid, 0) < n
        }


@dataclass(frozen=True)
class ReadyShard:
    index: int
    key: str
    parts: list[str]
    merge_with_committed: bool
    incomplete: dict[str, str]  # video_id -> message, for shards closed at the end of the stream


class ShardTracker:
    def __init__(self) -> None:
        self.open: dict[int, OpenShard] = {}
        self.closed: set[int] = set()
        self.clips_seen = 0
        self.segments_done = 0
        self.first_clip_at: float | None = None

    def add(self, status: pa.Table) -> list[ReadyShard]:
        """Take one batch of status rows; returns the shards it completed."""
        ready: list[ReadyShard] = []
        for r in status.to_pylist():
            if r[SHARD] in self.closed:
                continue  # repeated by a retried task after the shard was handed to its commit
            shard = self.open.get(r[SHARD])
            if shard is None:
                shard = self.open[r[SHARD]] = OpenShard(
                    r[SHARD], r[SHARD_KEY], r[SHARD_VIDEOS], r[SHARD_BASE]
                )
            shard.parts.update(r["parts"])
            if r["done_at"] is not None:
                self.first_clip_at = min(self.first_clip_at or r["done_at"], r["done_at"])
            vid, seg_index = r["video_id"], r["segment_index"]
            shard.num_segments[vid] = r["num_segments"]
            seg = shard.segments.get((vid, seg_index))
            if seg is None:
                seg = shard.segments[(vid, seg_index)] = _Segment(r["clips_in_segment"])
            elif seg.complete:
                continue  # repeated by a retried task: already counted
            new = set(r["clip_indices"]) - seg.clips
            seg.clips |= new
            self.clips_seen += len(new)
            if r["failed"]:
                seg.failed = True
                seg.emitted_before_error = r["emitted_before_error"]
            if seg.complete:
                self.segments_done += 1
                shard.segments_done[vid] = shard.segments_done.get(vid, 0) + 1
                if shard.segments_done[vid] == shard.num_segments[vid]:
                    shard.videos_done += 1
                    if shard.complete:
                        ready.append(self._close(shard.index, {}))
        return ready

    def _close(self, index: int, incomplete: dict[str, str]) -> ReadyShard:
        shard = self.open.pop(index)
        self.closed.add(index)
        return ReadyShard(
            index, shard.key, sorted(shard.parts), shard.merge_with_committed, incomplete
        )

    def close_all(self) -> list[ReadyShard]:
        """The shards still open when the stream ended (rows lost on the way): committed with
        their missing videos recorded as ``Incomplete``."""
        return [self._close(i, self.open[i].incomplete_videos()) for i in sorted(self.open)]

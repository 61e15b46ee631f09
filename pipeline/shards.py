"""Shards: the unit of work, output and resume.

The archive's listing (streamed, in a deterministic order) is cut into runs of ``shard_size``
videos: shard 0 holds the first ``shard_size`` videos listed, and so on, so the same archive
always gives the same shards. Each shard is published as one Parquet file per table (per model
for ``clips``) and then a small marker, ``_shards/shard-NNNNNN.json``, with its counts. A resume
reads the markers (work in proportion to shards, not videos) and redoes only what they do not
cover.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.records import VideoTask

SHARDS_DIR = "_shards"
STAGING_DIR = "_staging"
DEFAULT_SHARD_SIZE = 1000


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def shard_index(name: str) -> int | None:
    """The index in a name made by :func:`shard_name` (with any suffix), else None."""
    if not name.startswith("shard-") or len(name) < 12 or not name[6:12].isdigit():
        return None
    return int(name[6:12])


def content_key(video_ids: Iterable[str]) -> str:
    """What a shard holds, as a short hash of its video ids in listing order: a resume redoes a
    shard whose archive contents changed since it was committed."""
    digest = hashlib.sha256()
    for vid in video_ids:
        digest.update(vid.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Shard:
    index: int
    tasks: tuple[VideoTask, ...]

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def key(self) -> str:
        return content_key(t.video_id for t in self.tasks)

    def __repr__(self) -> str:
        return f"Shard({self.name}, {len(self.tasks)} videos)"


def iter_shards(tasks: Iterable[VideoTask], shard_size: int) -> Iterator[Shard]:
    """Cut a stream of tasks into shards of ``shard_size``; holds one shard at a time."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    batch: list[VideoTask] = []
    index = 0
    for task in tasks:
        batch.append(task)
        if len(batch) == shard_size:
            yield Shard(index, tuple(batch))
            index += 1
            batch = []
    if batch:
        yield Shard(index, tuple(batch))


@dataclass
class ShardMarker:
    """The committed state of one shard, as ``_shards/shard-NNNNNN.json`` holds it.

    ``retry`` lists the videos whose recorded failure may have been transient (see
    ``RETRY_ON_RESUME``): a resume processes those again and merges them into the shard.
    """

    index: int
    key: str
    videos: int
    clips: int
    statuses: dict[str, int] = field(default_factory=dict)
    failures_by_type: dict[str, int] = field(default_factory=dict)
    retry: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    node_id: str = ""
    committed_at: str = ""
    run: str = ""  # the job invocation that committed it
    counts: dict[str, Any] = field(default_factory=dict)  # what that commit reported

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ShardMarker:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


@dataclass(frozen=True)
class ShardWork:
    """What this run does with one listed shard, given its marker (None: not committed)."""

    todo: tuple[VideoTask, ...]  # videos to process in this run
    merge_with_committed: bool  # True: a partial redo, merged with the shard's committed rows
    skipped_videos: int  # videos already committed and kept as they are


def plan_shard(shard: Shard, marker: ShardMarker | None) -> ShardWork:
    if marker is None or marker.key != shard.key:
        return ShardWork(shard.tasks, False, 0)
    retry = set(marker.retry)
    todo = tuple(t for t in shard.tasks if t.video_id in retry)
    return ShardWork(todo, bool(todo), len(shard.tasks) - len(todo))

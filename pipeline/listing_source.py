"""The first stage of the stream: the archive's listing, cut into shards, as a Ray Data source.

One read task walks the archive (``pipeline.archive.iter_archive``) and yields a shard's task
rows as soon as the shard is full, so the probe and decode stages start on shard 0 while later
shards are still being listed; the driver never holds the listing. (Ray Data merges what the
task yields into blocks of up to ``target_max_block_size`` bytes; ``stream.split_blocks`` cuts
them into the probe's blocks.) Shards already committed (their marker matches what the archive
now holds) yield nothing; a committed shard with videos to retry yields only those. When the
listing ends the task writes its counts to ``_staging/listing-<run>.json`` for the job summary.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline.archive import iter_archive
from pipeline.rows import SHARD, SHARD_BASE, SHARD_KEY, SHARD_VIDEOS, TASK_FIELDS, TASK_SCHEMA
from pipeline.shards import STAGING_DIR, Shard, ShardMarker, iter_shards, plan_shard
from pipeline.uris import join, write_bytes_atomic


def listing_report_uri(output: str, run: str) -> str:
    return join(output, STAGING_DIR, f"listing-{run}.json")


def shard_block(shard: Shard, marker: ShardMarker | None) -> tuple[pa.Table | None, int]:
    """The task rows this run processes for ``shard`` and the count of videos kept as they are."""
    work = plan_shard(shard, marker)
    if not work.todo:
        return None, work.skipped_videos
    columns: dict[str, list[Any]] = {
        name: [getattr(t, name) for t in work.todo] for name in TASK_FIELDS
    }
    columns[SHARD] = [shard.index] * len(work.todo)
    columns[SHARD_VIDEOS] = [len(work.todo)] * len(work.todo)
    columns[SHARD_BASE] = [work.merge_with_committed] * len(work.todo)
    columns[SHARD_KEY] = [shard.key] * len(work.todo)
    return pa.Table.from_pydict(columns, schema=TASK_SCHEMA), work.skipped_videos


def iter_shard_blocks(
    input_uri: str,
    storage_options: Mapping[str, Any],
    shard_size: int,
    markers: Mapping[int, ShardMarker],
    output: str,
    run: str,
) -> Iterator[pa.Table]:
    skipped: Counter[str] = Counter()
    report = {"videos": 0, "shards": 0, "resumed_videos": 0, "resumed_shards": 0}
    for shard in iter_shards(iter_archive(input_uri, storage_options, skipped), shard_size):
        block, kept = shard_block(shard, markers.get(shard.index))
        report["videos"] += len(shard.tasks)
        report["shards"] += 1
        report["resumed_videos"] += kept
        report["resumed_shards"] += block is None
        if block is not None:
            yield block
    report["skipped_files"] = dict(skipped)
    write_bytes_atomic(
        listing_report_uri(output, run), json.dumps(report).encode(), storage_options
    )


class ShardListingDatasource(Datasource):
    """One read task streaming the archive's shards (see the module docstring)."""

    def __init__(
        self,
        *,
        input_uri: str,
        storage_options: Mapping[str, Any],
        shard_size: int,
        markers: Mapping[int, ShardMarker],
        output: str,
        run: str,
    ):
        super().__init__()
        self._args = (input_uri, dict(storage_options), shard_size, dict(markers), output, run)

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        args = self._args
        meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
        return [ReadTask(lambda: iter_shard_blocks(*args), meta, schema=TASK_SCHEMA)]

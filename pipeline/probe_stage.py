"""Stage 2: probe each listed video and plan its clips, fanning long videos out into segments.

Runs as Ray Data tasks inside the stream, a block of the listing each, so shard 0 is decoding
while later shards are still being probed; nothing is probed up front. The probe runs in the
task's killable child process (``pipeline.child_process``): a demuxer that hangs or crashes on a
file costs that file a ``DecodeTimeout`` / ``WorkerCrash`` row, never the job.

Input: task rows (``rows.TASK_SCHEMA``). Output: segment rows (``rows.segment_schema()``): one
per segment of a video that can be decoded, or one row with the video's typed error and no
clips (``num_segments = 1``), so every listed video reaches the writer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa

from pipeline import errors
from pipeline.probe import probe_video
from pipeline.rows import (
    clip_plans_to_arrow,
    probe_columns,
    segment_schema,
    task_from_row,
)
from pipeline.sampling import plan_clips, split_segments
from pipeline.source import read_source
from pipeline.spec import SamplingSpec
from pipeline.uris import redact_uri

log = logging.getLogger(__name__)


def error_fields(err: BaseException) -> dict[str, str]:
    """``status``, ``error_type`` and ``error_message`` of a failure, for its row."""
    if isinstance(err, errors.VideoError):
        return {
            "status": err.status,
            "error_type": err.error_type,
            "error_message": str(err)[:2000],
        }
    return {"status": "error", "error_type": type(err).__name__, "error_message": str(err)[:2000]}


def failed_segment(row: dict[str, Any], err: BaseException, probe=None) -> dict[str, Any]:
    """The one segment row of a video that cannot be decoded."""
    return {
        **row,
        **probe_columns(probe),
        "segment_index": 0,
        "num_segments": 1,
        "clips": [],
        **error_fields(err),
    }


def plan_segments(
    row: dict[str, Any], sampling: dict[str, Any], storage_options: Mapping[str, Any]
) -> Iterator[dict[str, Any]]:
    """Probe the video of task ``row`` and yield its segment rows (runs in the child process)."""
    spec = SamplingSpec.model_validate(sampling)
    task = task_from_row(row)
    try:
        probe = probe_video(read_source(task, storage_options))
    except (errors.VideoError, OSError, ValueError) as err:
        yield failed_segment(row, err)
        return
    try:
        clips = plan_clips(probe.num_frames, probe.fps, spec)
    except errors.VideoError as err:
        yield failed_segment(row, err, probe)
        return
    groups = split_segments(clips, probe.fps, spec.segment_s)
    for i, group in enumerate(groups):
        yield {
            **row,
            **probe_columns(probe),
            "segment_index": i,
            "num_segments": len(groups),
            "clips": clip_plans_to_arrow(group),
            "status": "ok",
            "error_type": "",
            "error_message": "",
        }


def probe_block(
    batch: pa.Table,
    *,
    sampling: dict[str, Any],
    storage_options: Mapping[str, Any],
    timeout_s: float,
    isolated: bool,
) -> pa.Table:
    """Ray Data task: one block of task rows in, its segment rows out (see the module docstring).

    A task, not an actor: it runs in Ray's pooled worker processes, where an actor took a worker
    process of its own per job (a Python start and Ray Data's imports, on the way to the first
    clip). Its child process is a fork, started per block and stopped with it.
    """
    from pipeline.child_process import IsolatedDecoder

    args = (sampling, dict(storage_options))
    child = IsolatedDecoder(plan_segments) if isolated else None
    out: list[dict[str, Any]] = []
    try:
        for row in batch.to_pylist():
            out.extend(_probe(row, args, child, timeout_s))
    finally:
        if child is not None:
            child.close()
    return pa.Table.from_pylist(out, schema=segment_schema())


def _probe(row: dict[str, Any], args: tuple, child, timeout_s: float) -> list[dict[str, Any]]:
    if child is None:
        return list(plan_segments(row, *args))
    try:
        return list(child.run((row, *args), timeout_s))
    except (errors.DecodeTimeoutError, errors.WorkerCrashError) as err:
        log.warning("probing %s: %s", redact_uri(row["video_uri"]), err)
        return [failed_segment(row, err)]

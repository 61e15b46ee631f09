"""Stage 6: commit a finished shard: merge its part files into the shard's table files, then
publish its marker.

Runs as one Ray task per shard, on any node, when the driver has seen every segment of the
shard. It reads only the part files the driver names (those the writers reported, so parts of
a task that died before reporting are never read), drops rows repeated by retried tasks (keyed
by (video_id, clip_index) per model and (video_id, segment, clip_index) in the ledger), drops
the clips of segments that failed, and builds one ``videos`` row per video. With
``merge_with_committed`` (a resume retrying some videos of a committed shard) the shard's
committed rows of the other videos are kept. Files are published before the marker; the
staging folder goes last.
"""

from __future__ import annotations

import io
import json
import logging
import socket
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.archive import iter_archive
from pipeline.output import (
    clips_file,
    marker_file,
    publish,
    read_bytes,
    remove,
    staging_dir,
    videos_file,
)
from pipeline.rows import PROBE_PREFIX
from pipeline.shard_writer import LEDGER, SEGMENT, clips_part_dir, parquet_bytes
from pipeline.shards import ShardMarker, iter_shards
from pipeline.tables import VIDEOS_SCHEMA
from pipeline.uris import filesystem, join, redact_uri

log = logging.getLogger(__name__)

# Failures that say more about the moment than about the video: retried when a job is resumed.
RETRY_ON_RESUME = frozenset({"SourceRead", "WorkerCrash", "Incomplete", "ModelError"})
# Rows per Parquet row group of a shard file: large enough for scans, small enough that a
# reader of one column of one video does not read the whole shard.
ROW_GROUP_ROWS = 65536


def _read_parts(
    folder: str, rels: list[str], storage_options: Mapping[str, Any]
) -> pa.Table | None:
    tables = []
    for rel in rels:
        data = read_bytes(join(folder, rel), storage_options)
        if data is None:
            raise FileNotFoundError(f"part file {redact_uri(join(folder, rel))} is missing")
        tables.append(pq.read_table(io.BytesIO(data)))
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def _read_committed(uri: str, storage_options: Mapping[str, Any]) -> pa.Table | None:
    data = read_bytes(uri, storage_options)
    return None if data is None else pq.read_table(io.BytesIO(data))


def _without_videos(table: pa.Table | None, video_ids: set[str]) -> pa.Table | None:
    if table is None or not video_ids:
        return table
    return table.filter(pc.invert(pc.is_in(table.column("video_id"), pa.array(sorted(video_ids)))))


def _first_per_key(table: pa.Table, keys: list[str]) -> pa.Table:
    """Rows of ``table`` with the first occurrence of each key (repeats come from retries)."""
    seen: set[tuple] = set()
    keep = []
    for _i, key in enumerate(zip(*(table.column(k).to_pylist() for k in keys))):
        keep.append(key not in seen)
        seen.add(key)
    return table.filter(pa.array(keep, pa.bool_()))


def video_rows(ledger: pa.Table) -> tuple[list[dict[str, Any]], set[tuple[str, int]]]:
    """One ``videos`` row per video of the ledger, and the (video, segment) pairs that failed."""
    ledger = _first_per_key(ledger, ["video_id", "segment_index", "clip_index"])
    videos: dict[str, dict[str, Any]] = {}
    seg_error: dict[tuple[str, int], dict[str, str]] = {}
    seg_clips: Counter[tuple[str, int]] = Counter()
    for r in ledger.to_pylist():
        vid, seg = r["video_id"], r["segment_index"]
        v = videos.get(vid)
        if v is None:
            v = videos[vid] = {
                "video_id": vid,
                "video_uri": redact_uri(r["video_uri"]),
                "bytes": r["size"],
                "duration_s": r[PROBE_PREFIX + "duration_s"],
                "fps": r[PROBE_PREFIX + "fps"],
                "num_frames": r[PROBE_PREFIX + "num_frames"],
                "width": r[PROBE_PREFIX + "width"],
                "height": r[PROBE_PREFIX + "height"],
                "codec": r[PROBE_PREFIX + "codec"],
                "rotation": r.get(PROBE_PREFIX + "rotation") or 0,
                "num_clips": 0,
                "decode_s": 0.0,
                "infer_s": 0.0,
                "decode_backend": None,
                "_segments": set(),
            }
        v["_segments"].add(seg)
        v["decode_s"] += r["decode_s"] or 0.0
        v["infer_s"] += r["infer_s"] or 0.0
        if r["decode_backend"]:
            v["decode_backend"] = v["decode_backend"] or r["decode_backend"]
        if not r["ok"]:
            seg_error.setdefault(
                (vid, seg), {k: r[k] for k in ("status", "error_type", "error_message")}
            )
        elif r["model_error"]:
            seg_error.setdefault(
                (vid, seg),
                {"status": "error", "error_type": "ModelError", "error_message": r["model_error"]},
            )
        else:
            seg_clips[(vid, seg)] += 1
    out = []
    for vid, v in videos.items():
        segments = sorted(v.pop("_segments"))
        errs = [seg_error[(vid, s)] for s in segments if (vid, s) in seg_error]
        err = errs[0] if errs else {"status": "ok", "error_type": None, "error_message": None}
        v["num_clips"] = sum(seg_clips[(vid, s)] for s in segments if (vid, s) not in seg_error)
        v.update(
            status=err["status"],
            error_type=err["error_type"] or None,
            error_message=redact_uri(err["error_message"]) if err["error_message"] else None,
        )
        out.append(v)
    return out, set(seg_error)


def _read_marker(output: str, index: int, storage_options: Mapping[str, Any]) -> ShardMarker | None:
    fs, path = filesystem(marker_file(output, index), storage_options)
    return ShardMarker.from_json(json.loads(fs.cat_file(path))) if fs.exists(path) else None


def _relative(output: str, uri: str) -> str:
    return uri[len(output.rstrip("/")) + 1 :]


def _publish_table(uri: str, table: pa.Table | None, storage_options: Mapping[str, Any]) -> bool:
    """Publish ``table`` at ``uri``; an empty table removes a committed file instead."""
    if table is None or table.num_rows == 0:
        remove(uri, storage_options)
        return False
    publish(uri, parquet_bytes(table, ROW_GROUP_ROWS), storage_options)
    return True


def _lost_videos(
    rows: list[dict[str, Any]],
    incomplete: Mapping[str, str],
    relist: Relist,
    index: int,
    expected: set[str] | None,
) -> list[dict[str, Any]]:
    """Mark videos with segments that never came back as ``Incomplete`` (unless they already
    failed), and give a row to each video of the shard that never reached a writer at all
    (found by listing the shard again: only done for a shard the stream left incomplete)."""
    for r in rows:
        if r["video_id"] in incomplete and r["status"] == "ok":
            r.update(
                status="error", error_type="Incomplete", error_message=incomplete[r["video_id"]]
            )
    seen = {r["video_id"] for r in rows}
    for shard in iter_shards(iter_archive(relist.input, relist.storage_options), relist.shard_size):
        if shard.index < index:
            continue
        for task in shard.tasks:
            if task.video_id in seen or (expected is not None and task.video_id not in expected):
                continue
            rows.append(
                {
                    "video_id": task.video_id,
                    "video_uri": redact_uri(task.video_uri),
                    "bytes": task.size,
                    "num_clips": 0,
                    "status": "error",
                    "error_type": "Incomplete",
                    "error_message": "the video never came back from the workers",
                    "decode_s": 0.0,
                    "infer_s": 0.0,
                    "rotation": 0,
                }
            )
        break
    return rows


@dataclass(frozen=True)
class Relist:
    """Where to list a shard's videos again: the job's input, options and shard size."""

    input: str
    storage_options: Mapping[str, Any]
    shard_size: int


def commit_shard(
    *,
    run: str,
    output: str,
    storage_options: Mapping[str, Any],
    index: int,
    key: str,
    parts: list[str],
    models: list[str],
    merge_with_committed: bool,
    incomplete: Mapping[str, str] | None = None,
    relist: Relist | None = None,
) -> dict[str, Any]:
    """Merge shard ``index``'s parts into its files, publish its marker; returns its counts.

    ``incomplete`` (video_id -> message) and ``relist`` are given for a shard the stream ended
    without completing; see :func:`_lost_videos`. Idempotent within a run (``run``): a retry of
    a commit that finished but could not return (its node died) returns what it counted.
    """
    import ray

    committed = _read_marker(output, index, storage_options)
    if committed is not None and committed.run == run and committed.counts:
        return {**committed.counts, "marker": committed.to_json()}
    folder = staging_dir(output, index)
    ledger = _read_parts(folder, [p for p in parts if p.startswith(LEDGER + "/")], storage_options)
    rows, failed = video_rows(ledger) if ledger is not None else ([], set())
    if relist is not None:
        expected = None
        if merge_with_committed:
            old_marker = _read_marker(output, index, storage_options)
            expected = set(old_marker.retry) if old_marker else None
        rows = _lost_videos(rows, incomplete or {}, relist, index, expected)
    redone = {r["video_id"] for r in rows}
    videos = pa.Table.from_pylist(rows, schema=VIDEOS_SCHEMA)
    if merge_with_committed:
        old = _without_videos(_read_committed(videos_file(output, index), storage_options), redone)
        if old is not None:
            videos = pa.concat_tables([old.cast(VIDEOS_SCHEMA), videos])
    files, clips, labels = [], 0, Counter()
    for model in models:
        table = _read_parts(
            folder, [p for p in parts if p.startswith(clips_part_dir(model) + "/")], storage_options
        )
        if table is not None:
            bad = [
                (v, s)
                for v, s in zip(
                    table.column("video_id").to_pylist(), table.column(SEGMENT).to_pylist()
                )
            ]
            table = table.filter(pa.array([pair not in failed for pair in bad], pa.bool_()))
            table = _first_per_key(table, ["video_id", "clip_index"]).drop_columns([SEGMENT])
        if merge_with_committed:
            old = _without_videos(
                _read_committed(clips_file(output, index, model), storage_options), redone
            )
            if old is not None:
                table = old if table is None else pa.concat_tables([old, table.cast(old.schema)])
        if table is not None:
            table = table.sort_by([("video_id", "ascending"), ("clip_index", "ascending")])
            clips += table.num_rows
            labels.update(ls[0] for ls in table.column("labels").to_pylist() if ls)
        if _publish_table(clips_file(output, index, model), table, storage_options):
            files.append(_relative(output, clips_file(output, index, model)))
    videos = videos.sort_by("video_id")
    _publish_table(videos_file(output, index), videos, storage_options)
    statuses = Counter(videos.column("status").to_pylist())
    failures = [
        r
        for r in videos.select(
            ["video_id", "video_uri", "status", "error_type", "error_message"]
        ).to_pylist()
        if r["status"] in ("error", "timeout")
    ]
    counts = {
        "index": index,
        "videos_processed": len(rows),
        "failures": [f for f in failures if f["video_id"] in redone],
        "labels": dict(labels),
        "decode_s": float(sum(r["decode_s"] for r in rows)),
        "infer_s": float(sum(r["infer_s"] for r in rows)),
        "statuses": dict(Counter(r["status"] for r in rows)),
        "clips_new": sum(r["num_clips"] for r in rows),
    }
    marker = ShardMarker(
        run=run,
        counts=counts,
        index=index,
        key=key,
        videos=videos.num_rows,
        clips=clips,
        statuses=dict(statuses),
        failures_by_type=dict(Counter(f["error_type"] for f in failures)),
        retry=sorted(f["video_id"] for f in failures if f["error_type"] in RETRY_ON_RESUME),
        files=files + [_relative(output, videos_file(output, index))],
        node_id=ray.get_runtime_context().get_node_id()
        if ray.is_initialized()
        else socket.gethostname(),
        committed_at=datetime.now(UTC).isoformat(),
    )
    publish(
        marker_file(output, index),
        json.dumps(marker.to_json(), sort_keys=True).encode(),
        storage_options,
    )
    remove(folder, storage_options, recursive=True)
    return {**counts, "marker": marker.to_json()}

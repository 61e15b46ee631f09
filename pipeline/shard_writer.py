"""Stage 5: workers write each batch of results as part files of its shard; the driver gets
only status rows.

For every shard a batch touches, the writer publishes (atomically) under
``_staging/shard-NNNNNN/``:

- ``clips-<model>/part-<uuid>.parquet``: the batch's clip rows of that model, in the ``clips``
  table's schema plus ``_segment`` (used by the commit to drop the clips of failed segments);
- ``ledger/part-<uuid>.parquet``: one row per clip row received (``clip_index = -1`` for a
  segment's error row) with the video's columns, the decode time, the backend and any model
  error: what the commit needs to build the ``videos`` rows.

It returns one status row per (video, segment) in the batch (``rows.STATUS_SCHEMA``): the
clip indices it saw, whether the segment's error row was among them, and the part files'
keys. A retried task writes new parts with the same rows; the commit drops the repeats.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.media import safe_path_segment
from pipeline.rows import (
    PROBE_COLUMNS,
    SHARD,
    SHARD_BASE,
    SHARD_KEY,
    SHARD_VIDEOS,
    STATUS_SCHEMA,
    model_column,
)
from pipeline.shards import STAGING_DIR, shard_name
from pipeline.tables import clips_schema
from pipeline.uris import join, redact_uri, with_retries, write_bytes_atomic

LEDGER = "ledger"
SEGMENT = "_segment"
LEDGER_COLUMNS = (
    "video_id",
    "video_uri",
    "size",
    "label",
    *PROBE_COLUMNS,
    "segment_index",
    "num_segments",
    "clip_index",
    "ok",
    "decode_s",
    "decode_backend",
    "status",
    "error_type",
    "error_message",
)


def clips_part_dir(key: str) -> str:
    return f"clips-{safe_path_segment(key)}"


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=row_group_size)
    return buf.getvalue()


def _redacted(column: pa.ChunkedArray) -> pa.Array:
    return pa.array([redact_uri(u) for u in column.to_pylist()], pa.string())


def clip_rows(part: pa.Table, key: str, job_id: str, version: str) -> pa.Table:
    """The ``clips`` rows of model ``key`` for the ok clips of ``part`` (plus ``_segment``)."""
    keep = pc.and_(part.column("ok"), pc.is_null(part.column(model_column(key, "error"))))
    part = part.filter(keep)
    feature = part.column(model_column(key, "feature"))
    dim = feature.type.list_size if pa.types.is_fixed_size_list(feature.type) else None
    schema = clips_schema(dim)
    n = part.num_rows
    values = {
        "job_id": pa.array([job_id] * n, pa.string()),
        "video_id": part.column("video_id"),
        "video_uri": _redacted(part.column("video_uri")),
        "clip_index": part.column("clip_index"),
        "start_frame": part.column("start_frame"),
        "end_frame": part.column("end_frame"),
        "start_s": part.column("start_s"),
        "end_s": part.column("end_s"),
        "model": pa.array([key] * n, pa.string()),
        "model_version": pa.array([version] * n, pa.string()),
        "labels": part.column(model_column(key, "labels")),
        "scores": part.column(model_column(key, "scores")),
        "feature": feature,
        "metrics": part.column(model_column(key, "metrics")),
        "media_uri": part.column(model_column(key, "media_uri")),
    }
    arrays = [values[f.name].cast(f.type) for f in schema]
    table = pa.Table.from_arrays(arrays, schema=schema)
    return table.append_column(SEGMENT, part.column("segment_index").cast(pa.int32()))


def ledger_rows(part: pa.Table, keys: list[str]) -> pa.Table:
    """One row per clip row of ``part``: what the commit needs to build the ``videos`` rows."""
    table = part.select(list(LEDGER_COLUMNS))
    infer = np.zeros(part.num_rows, np.float64)
    model_error: list[str | None] = [None] * part.num_rows
    for key in keys:
        infer += part.column(model_column(key, "infer_s")).to_numpy(zero_copy_only=False)
        for i, err in enumerate(part.column(model_column(key, "error")).to_pylist()):
            if err and model_error[i] is None:
                model_error[i] = f"{key}: {err}"
    table = table.append_column("infer_s", pa.array(infer, pa.float64()))
    return table.append_column("model_error", pa.array(model_error, pa.string()))


def status_rows(part: pa.Table, parts: list[str], done_at: float | None) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int], dict[str, Any]] = {}
    cols = {
        name: part.column(name).to_pylist()
        for name in (
            "video_id",
            "segment_index",
            "num_segments",
            "clips_in_segment",
            "clip_index",
            "ok",
            "emitted_before_error",
            SHARD,
            SHARD_VIDEOS,
            SHARD_BASE,
            SHARD_KEY,
        )
    }
    for i in range(part.num_rows):
        key = (cols["video_id"][i], cols["segment_index"][i])
        row = groups.get(key)
        if row is None:
            row = groups[key] = {
                SHARD: cols[SHARD][i],
                SHARD_VIDEOS: cols[SHARD_VIDEOS][i],
                SHARD_BASE: cols[SHARD_BASE][i],
                SHARD_KEY: cols[SHARD_KEY][i],
                "video_id": key[0],
                "segment_index": key[1],
                "num_segments": cols["num_segments"][i],
                "clips_in_segment": cols["clips_in_segment"][i],
                "clip_indices": [],
                "failed": False,
                "emitted_before_error": 0,
                "parts": parts,
                "done_at": done_at,
            }
        if cols["ok"][i]:
            row["clip_indices"].append(cols["clip_index"][i])
        else:
            row["failed"] = True
            row["emitted_before_error"] = cols["emitted_before_error"][i]
    return list(groups.values())


def write_parts(
    batch: pa.Table,
    *,
    output: str,
    storage_options: Mapping[str, Any],
    job_id: str,
    models: list[str],
    versions: Mapping[str, str],
) -> pa.Table:
    """The writer stage's function (a Ray Data ``map_batches`` task)."""
    out: list[dict[str, Any]] = []
    last_done = model_column(models[-1], "done_at")
    shards = batch.column(SHARD).to_numpy(zero_copy_only=False)
    for shard in np.unique(shards):
        part = batch.filter(pa.array(shards == shard))
        folder = join(output, STAGING_DIR, shard_name(int(shard)))
        name = f"part-{uuid.uuid4().hex}.parquet"
        parts = []
        tables = [
            (f"{clips_part_dir(k)}/{name}", clip_rows(part, k, job_id, versions.get(k, "")))
            for k in models
        ]
        tables.append((f"{LEDGER}/{name}", ledger_rows(part, models)))
        for rel, table in tables:
            if table.num_rows or rel.startswith(LEDGER):
                data = parquet_bytes(table)
                uri = join(folder, rel)
                with_retries(
                    lambda u=uri, d=data: write_bytes_atomic(u, d, storage_options),
                    f"writing {redact_uri(uri)}",
                )
                parts.append(rel)
        ok = part.column("ok").to_numpy(zero_copy_only=False)
        done = part.column(last_done).to_numpy(zero_copy_only=False)
        done_at = float(done[ok].min()) if ok.any() else None
        out.extend(status_rows(part, parts, done_at))
    return pa.Table.from_pylist(out, schema=STATUS_SCHEMA)

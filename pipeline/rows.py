"""The rows that travel between the stages of a job's stream, named and typed once.

Every stage reads and writes Arrow columns with these names (no pickled objects, no JSON
strings inside rows):

- **task rows** (listing -> probe): the ``VideoTask`` fields, plus the shard the video belongs to;
- **segment rows** (probe -> decode): task and shard columns, the probe as ``probe_*`` scalar
  columns, the segment's place in its video and its planned clips (``clips``, a list of structs);
- **clip rows** (decode -> models): one per decoded clip (``frames`` a (T, H, W, 3) uint8 tensor),
  or one ``ok = False`` row carrying a segment's typed error;
- **model columns** (added by each model stage, see :func:`model_column`): labels, scores,
  feature (fixed-size list), metrics (a map), media URI, the model's error and time;
- **status rows** (shard writer -> driver): one per (video, segment) in a written batch: counts,
  clip indices and the keys of the part files, nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow as pa

from pipeline.records import ClipPlan, VideoProbe, VideoTask

# Shard placement (carried by every row from the listing to the writer).
SHARD = "shard"  # shard index, from 0 in listing order
SHARD_VIDEOS = "shard_videos"  # videos of this shard that this run processes
SHARD_BASE = "shard_base"  # True: merge with the shard's committed files (a partial redo)
SHARD_KEY = "shard_key"  # hash of the shard's listed video ids (``shards.content_key``)
SHARD_COLUMNS = (SHARD, SHARD_VIDEOS, SHARD_BASE, SHARD_KEY)

TASK_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("video_uri", pa.string()),
        ("source", pa.string()),
        ("size", pa.int64()),
        ("container", pa.string()),
        ("member", pa.string()),
        ("data_offset", pa.int64()),
        ("label", pa.string()),
        ("problem", pa.string()),
        (SHARD, pa.int64()),
        (SHARD_VIDEOS, pa.int64()),
        (SHARD_BASE, pa.bool_()),
        (SHARD_KEY, pa.string()),
    ]
)
TASK_FIELDS = tuple(f.name for f in dataclasses.fields(VideoTask))

# Probe.
_ARROW_OF = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}
PROBE_PREFIX = "probe_"
PROBE_FIELDS = tuple(f.name for f in dataclasses.fields(VideoProbe))
PROBE_COLUMNS = tuple(PROBE_PREFIX + name for name in PROBE_FIELDS)


def probe_schema() -> pa.Schema:
    """``probe_<field>`` columns, one per ``VideoProbe`` field (all scalars, all nullable)."""
    return pa.schema(
        [
            (
                PROBE_PREFIX + f.name,
                _ARROW_OF[f.type if isinstance(f.type, str) else f.type.__name__],
            )
            for f in dataclasses.fields(VideoProbe)
        ]
    )


def probe_columns(probe: VideoProbe | None) -> dict[str, Any]:
    values = dataclasses.asdict(probe) if probe else {}
    return {PROBE_PREFIX + name: values.get(name) for name in PROBE_FIELDS}


def probe_from_row(row: dict[str, Any]) -> VideoProbe | None:
    if row.get(PROBE_PREFIX + "fps") is None:
        return None
    return VideoProbe(**{name: row[PROBE_PREFIX + name] for name in PROBE_FIELDS})


# Segments.
CLIP_PLAN_TYPE = pa.struct(
    [
        ("clip_index", pa.int32()),
        ("frame_indices", pa.list_(pa.int64())),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
    ]
)
ERROR_COLUMNS = ("status", "error_type", "error_message")


def segment_schema() -> pa.Schema:
    return pa.schema(
        [
            *TASK_SCHEMA,
            *probe_schema(),
            ("segment_index", pa.int32()),
            ("num_segments", pa.int32()),
            ("clips", pa.list_(CLIP_PLAN_TYPE)),
            ("status", pa.string()),
            ("error_type", pa.string()),
            ("error_message", pa.string()),
        ]
    )


def clip_plans_to_arrow(clips: list[ClipPlan]) -> list[dict[str, Any]]:
    return [
        {
            "clip_index": c.clip_index,
            "frame_indices": list(c.frame_indices),
            "start_s": c.start_s,
            "end_s": c.end_s,
        }
        for c in clips
    ]


def clip_plans_from_arrow(items: list[dict[str, Any]]) -> list[ClipPlan]:
    return [
        ClipPlan(
            int(c["clip_index"]),
            tuple(int(i) for i in c["frame_indices"]),
            float(c["start_s"]),
            float(c["end_s"]),
        )
        for c in items
    ]


def task_from_row(row: dict[str, Any]) -> VideoTask:
    return VideoTask(**{name: row.get(name) for name in TASK_FIELDS})


# Clips (decode -> models -> writer).
# Columns of a clip row besides the frames; the video-level ones repeat on each of its clips so
# the writer can record the video without a lookup.
VIDEO_COLUMNS = (
    "video_id",
    "video_uri",
    "size",
    "label",
    *SHARD_COLUMNS,
    *PROBE_COLUMNS,
    "segment_index",
    "num_segments",
    "clips_in_segment",
)
CLIP_COLUMNS = (
    "ok",
    "clip_index",
    "start_frame",
    "end_frame",
    "start_s",
    "end_s",
    "frame_indices",
    "frame_bytes",
    "decode_s",
    "decode_backend",
    *ERROR_COLUMNS,
    "emitted_before_error",
)
FRAMES = "frames"

# Model columns.
MODEL_FIELDS = (
    "labels",
    "scores",
    "feature",
    "metrics",
    "media_uri",
    "error",
    "infer_s",
    "done_at",
)
METRICS_TYPE = pa.map_(pa.string(), pa.float64())


def model_column(key: str, name: str) -> str:
    """Column ``name`` (one of ``MODEL_FIELDS``) of model ``key``: ``"<key>:<name>"``."""
    if name not in MODEL_FIELDS:
        raise ValueError(f"unknown model column {name!r}; expected one of {MODEL_FIELDS}")
    return f"{key}:{name}"


# Status rows (writer -> driver).
STATUS_SCHEMA = pa.schema(
    [
        (SHARD, pa.int64()),
        (SHARD_VIDEOS, pa.int64()),
        (SHARD_BASE, pa.bool_()),
        (SHARD_KEY, pa.string()),
        ("video_id", pa.string()),
        ("segment_index", pa.int32()),
        ("num_segments", pa.int32()),
        ("clips_in_segment", pa.int32()),
        ("clip_indices", pa.list_(pa.int32())),
        ("failed", pa.bool_()),  # the segment's error row is in this batch (its clips are dropped)
        ("emitted_before_error", pa.int32()),
        (
            "parts",
            pa.list_(pa.string()),
        ),  # part files (relative to the staging folder) holding its rows
        ("done_at", pa.float64()),  # earliest time one of its clips left the last model (epoch s)
    ]
)

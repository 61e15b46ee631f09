"""Schemas and layout of the job's output tables (see README "Output tables")."""

from __future__ import annotations

import pyarrow as pa

CLIPS_DIR = "clips"
VIDEOS_DIR = "videos"
JOB_FILE = "_job.json"

METRICS_TYPE = pa.map_(pa.string(), pa.float64())

FEATURE_READ_TYPE = pa.list_(pa.float32())


def clips_schema(feature_dim: int | None) -> pa.Schema:
    """Schema of one clips file. ``feature`` is fixed_size_list<float32>[D] where D is the model's
    feature width, and an all-null list<float32> for models without features (Parquet cannot
    round-trip null fixed-size lists). Readers of the whole ``clips/`` folder, where models of
    different widths meet, read ``feature`` as list<float32> (``FEATURE_READ_TYPE``)."""
    feature_type = pa.list_(pa.float32(), feature_dim) if feature_dim else FEATURE_READ_TYPE
    return pa.schema(
        [
            ("job_id", pa.string()),
            ("video_id", pa.string()),
            ("video_uri", pa.string()),
            ("clip_index", pa.int32()),
            ("start_frame", pa.int64()),
            ("end_frame", pa.int64()),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            ("model", pa.string()),
            ("model_version", pa.string()),
            ("labels", pa.list_(pa.string())),
            ("scores", pa.list_(pa.float32())),
            ("feature", feature_type),
            ("metrics", METRICS_TYPE),
            ("media_uri", pa.string()),
        ]
    )


VIDEOS_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("video_uri", pa.string()),
        ("bytes", pa.int64()),
        ("duration_s", pa.float64()),
        ("fps", pa.float64()),
        ("num_frames", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("codec", pa.string()),
        ("rotation", pa.int32()),
        ("num_clips", pa.int32()),
        ("status", pa.string()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("decode_s", pa.float64()),
        ("infer_s", pa.float64()),
        ("decode_backend", pa.string()),
    ]
)

VIDEO_STATUSES = ("ok", "error", "timeout", "skipped")

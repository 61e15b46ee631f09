"""Helpers for tests that run whole jobs: specs for tiny archives, reading the tables back."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow.dataset as pads

from pipeline.spec import JobSpec, parse_spec

TINY_SAMPLING = {"clip_len": 4, "frame_interval": 2, "size": 64}


def tiny_spec(
    input_uri: str, output_uri: str, models: list[dict[str, Any]] | None = None, **extra: Any
) -> JobSpec:
    """A classify job on the pretrained frame encoder at 64x64: fast enough for every test."""
    data = {
        "name": "test",
        "input": input_uri,
        "output": output_uri,
        "sampling": dict(TINY_SAMPLING),
        "models": models or [{"name": "frame-average", "batch_size": 4}],
        "mlflow": {"enabled": False},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_spec(data)


def read_table(output: str, name: str, filesystem=None):
    """The whole table as the query layer reads it (``clips.feature`` as list<float32>)."""
    from pipeline.query import table_schema

    path = f"{output}/{name}"
    return pads.dataset(
        path, format="parquet", filesystem=filesystem, schema=table_schema(name)
    ).to_table()


def clip_key_counts(clips) -> Counter:
    rows = zip(
        clips.column("video_id").to_pylist(),
        clips.column("clip_index").to_pylist(),
        clips.column("model").to_pylist(),
    )
    return Counter(rows)

"""Writing the output tables: one Parquet file per (video segment, model) under ``clips/``, one
per video under ``videos/``, each published atomically, so a crash never leaves a half-written
file a reader would count, and a re-run overwrites the same names instead of adding rows.

File names derive from ``video_id`` (a hash) and the sanitised model key, never from archive
member names.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pipeline.media import safe_path_segment
from pipeline.tables import CLIPS_DIR, JOB_FILE, VIDEOS_DIR, VIDEOS_SCHEMA, clips_schema
from pipeline.uris import filesystem, join, redact_uri, with_retries, write_bytes_atomic

log = logging.getLogger(__name__)

# Failures that say more about the moment than about the video: retried when a job is resumed.
RETRY_ON_RESUME = frozenset({"SourceRead", "WorkerCrash", "Incomplete", "ModelError"})

_CLIP_FILE = re.compile(r"^(?P<video>[0-9a-f]+)-(?P<seg>\d{5})-(?P<model>[A-Za-z0-9._-]+)\.parquet$")
_VIDEO_FILE = re.compile(r"^(?P<video>[0-9a-f]+)\.parquet$")


def clip_file_name(video_id: str, segment_index: int, model_key: str) -> str:
    return f"{video_id}-{segment_index:05d}-{safe_path_segment(model_key)}.parquet"


def _to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


@dataclass
class OutputState:
    """What earlier runs already published under an output URI (used to resume)."""

    segments: set[tuple[str, int, str]] = field(default_factory=set)  # (video_id, segment, model file key)
    videos: set[str] = field(default_factory=set)


class TableSink:
    """Publishes finished segments and videos under ``output``."""

    def __init__(self, output: str, storage_options: Mapping[str, Any] | None = None):
        self.output = output.rstrip("/")
        self.storage_options = dict(storage_options or {})

    def check_writable(self) -> None:
        """Raise ``OSError`` now (before any work) if the output cannot be written.

        Leaves nothing behind: the probe file is removed, and so are the local folders that
        writing it created, so a job that fails before it starts leaves no output.
        """
        fs, root = filesystem(self.output, self.storage_options)
        created: list[str] = []
        if isinstance(fs, LocalFileSystem):
            parent = root.rstrip("/")
            while parent and not fs.exists(parent):
                created.append(parent)  # deepest first
                parent = parent.rsplit("/", 1)[0]
        probe = join(self.output, "_write_check")
        try:
            write_bytes_atomic(probe, b"ok", self.storage_options)
            fs.rm(filesystem(probe, self.storage_options)[1])
        finally:
            for folder in created:
                if fs.exists(folder) and not fs.ls(folder):
                    fs.rmdir(folder)

    def state(self) -> OutputState:
        state = OutputState()
        fs, root = filesystem(self.output, self.storage_options)
        for sub, pattern in ((CLIPS_DIR, _CLIP_FILE), (VIDEOS_DIR, _VIDEO_FILE)):
            path = f"{root}/{sub}"
            if not fs.exists(path):
                continue
            for full in fs.ls(path, detail=False):
                name = full.rsplit("/", 1)[-1]
                if name.startswith(".") and name.endswith(".tmp"):
                    fs.rm(full)  # left by a crashed writer; never part of the tables
                    continue
                m = pattern.match(name)
                if not m:
                    continue
                if sub == CLIPS_DIR:
                    state.segments.add((m["video"], int(m["seg"]), m["model"]))
                else:
                    state.videos.add(m["video"])
        state.videos -= self._retryable_failures(fs, f"{root}/{VIDEOS_DIR}", bool(state.videos))
        return state

    def _retryable_failures(self, fs, path: str, any_videos: bool) -> set[str]:
        """Videos whose recorded failure may have been transient: a resume processes them again
        (their row is overwritten under the same name, so nothing is duplicated)."""
        if not any_videos:
            return set()
        import pyarrow.dataset as pads

        table = pads.dataset(path, format="parquet", filesystem=fs,
                             exclude_invalid_files=True).to_table(columns=["video_id", "error_type"])
        return {vid for vid, et in zip(table.column("video_id").to_pylist(),
                                       table.column("error_type").to_pylist())
                if et in RETRY_ON_RESUME}

    def write_segment(self, video_id: str, segment_index: int, model_key: str,
                      rows: list[dict[str, Any]]) -> None:
        """Publish one segment's clip rows for one model (rows sorted by clip_index)."""
        rows = sorted(rows, key=lambda r: r["clip_index"])
        features = [r["feature"] for r in rows]
        dim = next((int(np.asarray(f).shape[-1]) for f in features if f is not None), None)
        schema = clips_schema(dim)
        columns = {name: [r.get(name) for r in rows] for name in schema.names if name != "feature"}
        columns["metrics"] = [list((r.get("metrics") or {}).items()) for r in rows]
        if dim:
            flat = np.stack([np.asarray(f, np.float32) for f in features]).reshape(-1)  # (N * D,)
            feature = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
        else:
            feature = pa.nulls(len(rows), schema.field("feature").type)
        arrays = [feature if name == "feature" else pa.array(columns[name], schema.field(name).type)
                  for name in schema.names]
        table = pa.Table.from_arrays(arrays, schema=schema)
        uri = join(self.output, CLIPS_DIR, clip_file_name(video_id, segment_index, model_key))
        self._publish(uri, _to_parquet_bytes(table))

    def _publish(self, uri: str, data: bytes) -> None:
        with_retries(lambda: write_bytes_atomic(uri, data, self.storage_options),
                     f"writing {redact_uri(uri)}")

    def write_video(self, row: dict[str, Any]) -> None:
        table = pa.Table.from_pylist([row], schema=VIDEOS_SCHEMA)
        self._publish(join(self.output, VIDEOS_DIR, f"{row['video_id']}.parquet"), _to_parquet_bytes(table))

    def read_job(self) -> dict[str, Any] | None:
        fs, path = filesystem(join(self.output, JOB_FILE), self.storage_options)
        if not fs.exists(path):
            return None
        return json.loads(fs.cat_file(path))

    def write_job(self, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, indent=2, sort_keys=True, default=str).encode()
        self._publish(join(self.output, JOB_FILE), data)

"""The job's output location: its layout, the write check, the job document and shard markers.

Layout under the output URI::

    clips/shard-NNNNNN-<model>.parquet   one file per shard and model (committed shards only)
    videos/shard-NNNNNN.parquet          one file per shard
    _shards/shard-NNNNNN.json            the shard's marker, written last (see ``shards``)
    _staging/shard-NNNNNN/...            part files of shards in progress (never read as tables)
    _job.json                            the job document (spec, versions, run id, counts)

Every file is published atomically (see ``uris.write_bytes_atomic``) and shard files have fixed
names, so a crash never leaves a half-written file a reader would count, and redoing a shard
replaces its files instead of adding rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from pipeline.media import safe_path_segment
from pipeline.shards import SHARDS_DIR, STAGING_DIR, ShardMarker, shard_index, shard_name
from pipeline.tables import CLIPS_DIR, JOB_FILE, VIDEOS_DIR
from pipeline.uris import filesystem, join, redact_uri, with_retries, write_bytes_atomic

log = logging.getLogger(__name__)


def clips_file(output: str, index: int, model_key: str) -> str:
    return join(output, CLIPS_DIR, f"{shard_name(index)}-{safe_path_segment(model_key)}.parquet")


def videos_file(output: str, index: int) -> str:
    return join(output, VIDEOS_DIR, f"{shard_name(index)}.parquet")


def marker_file(output: str, index: int) -> str:
    return join(output, SHARDS_DIR, f"{shard_name(index)}.json")


def staging_dir(output: str, index: int) -> str:
    return join(output, STAGING_DIR, shard_name(index))


def publish(uri: str, data: bytes, storage_options: Mapping[str, Any] | None) -> None:
    with_retries(
        lambda: write_bytes_atomic(uri, data, storage_options), f"writing {redact_uri(uri)}"
    )


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None) -> bytes | None:
    """The file's bytes, or None if there is no such file; transient errors are retried."""

    def read() -> bytes | None:
        fs, path = filesystem(uri, storage_options)
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None

    return with_retries(read, f"reading {redact_uri(uri)}")


def remove(uri: str, storage_options: Mapping[str, Any] | None, *, recursive: bool = False) -> None:
    """Delete ``uri`` if it exists; transient errors are retried."""

    def rm() -> None:
        fs, path = filesystem(uri, storage_options)
        if fs.exists(path):
            fs.rm(path, recursive=recursive)

    with_retries(rm, f"removing {redact_uri(uri)}")


class JobOutput:
    """The output URI of one job, seen from the driver."""

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

    def markers(self) -> dict[int, ShardMarker]:
        """The committed shards (one listing of ``_shards/``: work in proportion to shards)."""
        return with_retries(self._markers, f"reading the shard markers of {self.output}")

    def _markers(self) -> dict[int, ShardMarker]:
        fs, root = filesystem(self.output, self.storage_options)
        path = f"{root}/{SHARDS_DIR}"
        if not fs.exists(path):
            return {}
        out: dict[int, ShardMarker] = {}
        for full in fs.ls(path, detail=False):
            name = full.rsplit("/", 1)[-1]
            index = shard_index(name)
            if index is None or not name.endswith(".json"):
                continue
            out[index] = ShardMarker.from_json(json.loads(fs.cat_file(full)))
        return out

    def remove_staging(self, index: int | None = None) -> None:
        """Drop the part files of one shard (``index``), or the whole staging folder."""
        uri = (
            staging_dir(self.output, index) if index is not None else join(self.output, STAGING_DIR)
        )
        remove(uri, self.storage_options, recursive=True)

    def read_json(self, uri: str) -> dict[str, Any] | None:
        data = read_bytes(uri, self.storage_options)
        return None if data is None else json.loads(data)

    def read_job(self) -> dict[str, Any] | None:
        return self.read_json(join(self.output, JOB_FILE))

    def write_job(self, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, indent=2, sort_keys=True, default=str).encode()
        publish(join(self.output, JOB_FILE), data, self.storage_options)

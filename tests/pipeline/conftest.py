"""Real servers on loopback for pipeline tests: an S3 (moto) server and an MLflow server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.tables import VIDEOS_SCHEMA, clips_schema
from tests.ports import free_port

_STARTUP_TIMEOUT_S = 90.0


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (for "server unreachable" tests)."""
    return free_port()


@dataclass(frozen=True)
class S3Server:
    """A moto S3 server on loopback.

    Attributes:
        endpoint_url: ``http://127.0.0.1:PORT``.
        storage_options: fsspec/s3fs options reaching it (``key``, ``secret``, ``client_kwargs``).
    """

    endpoint_url: str
    storage_options: dict[str, Any] = field(hash=False)

    def make_bucket(self, name: str) -> str:
        """Create ``name`` (if needed) and return ``s3://name``."""
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.storage_options["key"],
            aws_secret_access_key=self.storage_options["secret"],
        )
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server for the whole session; tests make their own buckets."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        yield S3Server(
            endpoint,
            {
                "key": "testing-key",
                "secret": "testing-secret",
                "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            },
        )
    finally:
        server.stop()


@dataclass(frozen=True)
class MlflowServer:
    """An ``mlflow server`` subprocess on loopback (sqlite backend, artifacts in tmp)."""

    uri: str
    root: Path


def mlflow_server_command(root: Path, port: int) -> list[str]:
    """``mlflow server`` on 127.0.0.1:``port`` with its store and artifacts under ``root``."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """``mlflow server`` on a free port; waits for ``/health``, kills its process group after."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("wb")
    cmd = mlflow_server_command(root, port)
    # No server-side job runner: it forks a pool of huey consumers that costs seconds per start.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # A session of its own = a process group holding the uvicorn worker too, killed as one.
    proc = subprocess.Popen(
        cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(uri, proc, root / "server.log")
        yield MlflowServer(uri, root)
    finally:
        _kill_group(proc)
        log.close()


def _wait_healthy(uri: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()}"
            )
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(
        f"mlflow server not healthy after {_STARTUP_TIMEOUT_S}s:\n{log_path.read_text()}"
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)  # workers that outlived the parent
    proc.wait(timeout=10)


# -- output tables -------------------------------------------------------------------------

_CLIP_DEFAULTS: dict[str, Any] = {
    "job_id": "job-test",
    "video_uri": None,
    "start_frame": 0,
    "end_frame": 8,
    "start_s": 0.0,
    "end_s": 0.32,
    "model": "m",
    "model_version": "1",
    "labels": ["a"],
    "scores": [1.0],
    "feature": None,
    "metrics": [],
    "media_uri": None,
}
_VIDEO_DEFAULTS: dict[str, Any] = {
    "video_uri": None,
    "bytes": 1000,
    "duration_s": 1.0,
    "fps": 25.0,
    "num_frames": 25,
    "width": 64,
    "height": 48,
    "codec": "h264",
    "num_clips": 1,
    "status": "ok",
    "error_type": None,
    "error_message": None,
    "decode_s": 0.1,
    "infer_s": 0.2,
}


def _clips_table(rows: list[dict[str, Any]], feature_dim: int | None) -> pa.Table:
    full = [
        {**_CLIP_DEFAULTS, "video_uri": f"file:///videos/{r['video_id']}.mp4", **r} for r in rows
    ]
    return _table(full, clips_schema(feature_dim))


def _videos_table(rows: list[dict[str, Any]]) -> pa.Table:
    full = [
        {**_VIDEO_DEFAULTS, "video_uri": f"file:///videos/{r['video_id']}.mp4", **r} for r in rows
    ]
    return _table(full, VIDEOS_SCHEMA)


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def _write_parquet(
    table: pa.Table, uri: str, storage_options: dict[str, Any] | None = None
) -> None:
    """Write a table as a sink must.

    pyarrow 25 cannot read back a *stored* fixed_size_list schema when the column holds nulls
    (apache/arrow#35692), so such tables are written without the Arrow schema (``feature`` then
    reads back as ``list<float32>``); other tables keep it, so both layouts are exercised.
    """
    from pipeline.uris import filesystem

    null_fixed_lists = any(
        pa.types.is_fixed_size_list(field.type) and table.column(field.name).null_count
        for field in table.schema
    )
    fs, path = filesystem(uri, storage_options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, compression="zstd", store_schema=not null_fixed_lists)


@pytest.fixture
def clips_table():
    """Factory: rows (dicts with at least video_id, clip_index) -> a pipeline.tables clips table."""
    return _clips_table


@pytest.fixture
def videos_table():
    """Factory: rows (dicts with at least video_id) -> videos table of pipeline.tables."""
    return _videos_table


@pytest.fixture
def write_parquet():
    """Writer: (table, uri, storage_options=None) -> None, through fsspec (local or s3)."""
    return _write_parquet


@pytest.fixture
def vmb(capsys, monkeypatch):
    """Run ``vmb ARGS`` in this process, in the repository (``vmb submit`` uploads the current
    directory): returns ``(exit code, stdout, stderr)``."""
    import logging
    from pathlib import Path

    from pipeline.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("RAY_DATA_DISABLE_PROGRESS_BARS", "1")  # main() sets it; restore after
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    ray_logger.setLevel(level)

"""A dead MLflow server never costs the user their tables: with the server down from the start
(a loopback port nothing listens on) or killed in the middle of a job, the job writes complete
tables and reports that tracking failed; with ``mlflow.fail_fast = true`` it fails at once,
before any Ray work, and writes nothing."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from pipeline import cli
from pipeline import job as job_module
from pipeline.job import run_job
from pipeline.tracking import TrackingUnavailableError
from tests.pipeline.conftest import _kill_group, _wait_healthy, mlflow_server_command
from tests.pipeline.jobs_util import clip_key_counts, read_table, tiny_spec
from tests.ports import free_port
from tests.videos import make_video


def _archive(root: Path, n: int, frames: int = 24) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_video(root / f"v{i:02d}.mp4", num_frames=frames, seed=i)
    return root


def _spec_file(path: Path, archive: Path, out: Path, tracking_uri: str, fail_fast: bool) -> Path:
    path.write_text(f"""
name = "tracking-down"
input = "{archive}"
output = "{out}"
[sampling]
clip_len = 4
frame_interval = 2
size = 64
[mlflow]
tracking_uri = "{tracking_uri}"
experiment = "down"
fail_fast = {str(fail_fast).lower()}
[[models]]
name = "frame-average"
batch_size = 4
""")
    return path


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


@pytest.fixture
def cli_main(monkeypatch):
    """``vmb`` in this process (on the session's Ray), undoing the CLI's global settings."""
    monkeypatch.delenv("RAY_DATA_DISABLE_PROGRESS_BARS", raising=False)
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level
    try:
        yield cli.main
    finally:
        ray_logger.setLevel(level)


def test_server_down_from_the_start_job_writes_tables_and_reports(
    ray_session, tmp_path, unused_port, cli_main, capsys, caplog
):
    archive = _archive(tmp_path / "in", 2)
    out = tmp_path / "out"
    spec = _spec_file(
        tmp_path / "job.toml", archive, out, f"http://127.0.0.1:{unused_port}", fail_fast=False
    )

    assert cli_main(["run", str(spec), "--no-progress"]) == 0

    printed = capsys.readouterr().out
    assert "MLflow run" in printed and "not tracked" in printed
    assert "tracking" in printed and "FAILED:" in printed and f":{unused_port}" in printed
    assert "continuing without tracking" in caplog.text
    clips = read_table(str(out), "clips")
    assert set(clip_key_counts(clips).values()) == {1} and clips.num_rows == 2 * 3
    assert [v["status"] for v in read_table(str(out), "videos").to_pylist()] == ["ok", "ok"]


def _start_mlflow_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        mlflow_server_command(root, port),
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    log.close()
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(uri, proc, root / "server.log")
    except BaseException:
        _kill_group(proc)
        raise
    return proc, uri


def test_server_killed_mid_job_job_finishes_and_reports(ray_session, tmp_path, monkeypatch):
    server_root = tmp_path / "mlflow"
    server_root.mkdir()
    proc, uri = _start_mlflow_server(server_root)
    archive = _archive(tmp_path / "in", 4, frames=60)
    out = tmp_path / "out"
    killed: list[int] = []
    add = job_module.ShardTracker.add

    def add_then_kill(self, status):  # the server dies when the driver hears of its first clips
        if not killed:
            killed.append(self.clips_seen)
            _kill_group(proc)
        return add(self, status)

    monkeypatch.setattr(job_module.ShardTracker, "add", add_then_kill)
    try:
        result = run_job(
            tiny_spec(
                str(archive),
                str(out),
                models=[{"name": "frame-average", "batch_size": 2}],
                mlflow={"enabled": True, "tracking_uri": uri, "experiment": "killed"},
            )
        )
    finally:
        _kill_group(proc)
    assert killed == [0], "the server was not killed while the job ran"
    assert result.run_id is not None, "the run should have started while the server was up"
    assert result.tracking_error and "failed" in result.tracking_error
    assert result.exit_code == 0 and result.summary["videos_ok"] == 4, result.summary
    clips = read_table(str(out), "clips")
    assert set(clip_key_counts(clips).values()) == {1} and clips.num_rows == 4 * 8
    assert (out / "_job.json").is_file()


def test_fail_fast_with_server_down_fails_before_writing(
    ray_session, tmp_path, unused_port, cli_main, capsys, monkeypatch
):
    archive = _archive(tmp_path / "in", 1)
    out = tmp_path / "out"
    uri = f"http://127.0.0.1:{unused_port}"
    executed: list[bool] = []
    monkeypatch.setattr(job_module, "_execute", lambda *a, **k: executed.append(True))

    with pytest.raises(TrackingUnavailableError, match=f"127.0.0.1:{unused_port}"):
        run_job(
            tiny_spec(
                str(archive),
                str(out),
                mlflow={"enabled": True, "tracking_uri": uri, "fail_fast": True},
            )
        )
    assert not executed and not out.exists()

    spec = _spec_file(tmp_path / "job.toml", archive, out, uri, fail_fast=True)
    assert cli_main(["run", str(spec), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vmb run: error: tracking store") and "unavailable" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not executed and not out.exists()


def test_fail_fast_happens_before_ray_starts(tmp_path, unused_port, monkeypatch):
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started before the tracking store was checked")

    monkeypatch.setattr(job_module, "_init_ray", no_ray)
    archive = _archive(tmp_path / "in", 1)
    uri = f"http://127.0.0.1:{unused_port}"
    with pytest.raises(TrackingUnavailableError):
        run_job(
            tiny_spec(
                str(archive),
                str(tmp_path / "out"),
                mlflow={"enabled": True, "tracking_uri": uri, "fail_fast": True},
            )
        )

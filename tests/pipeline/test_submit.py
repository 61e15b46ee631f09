"""`vmb submit|status|logs|stop` against a real Ray head that requires an auth token.

The head is a ``ray start --head --block`` subprocess on loopback with its own ports, temp dir
and HOME (so neither the session's embedded Ray nor another Ray on the machine is touched), and
``RAY_AUTH_MODE=token`` with a token made by ``ray get-auth-token --generate``. Teardown kills
the head's process group; ``ray stop`` would stop every Ray instance on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.probe import probe_video
from pipeline.sampling import plan_clips
from pipeline.spec import load_spec
from tests.pipeline.cli_util import REPO, env_without_ray, set_args, vmb_subprocess
from tests.pipeline.jobs_util import TINY_SAMPLING, clip_key_counts, read_table
from tests.ports import free_port
from tests.videos import make_video

RAY = str(Path(sys.executable).with_name("ray"))
STARTUP_TIMEOUT_S = 120
JOB_TIMEOUT_S = 240
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass(frozen=True)
class RayHead:
    """A running head: its Jobs API URL and the token it requires."""

    address: str
    token: str
    log: Path


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    root = Path(tempfile.mkdtemp(prefix="vmb-head-"))  # short: Ray's unix sockets live below it
    home = root / "home"
    home.mkdir()
    env = env_without_ray(home)
    generated = subprocess.run(
        [RAY, "get-auth-token", "--generate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = generated.stdout.strip()
    assert token and (home / ".ray" / "auth_token").read_text().strip() == token
    dashboard = free_port()
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--num-cpus=2",
        "--disable-usage-stats",
        f"--temp-dir={root / 'ray'}",
        "--object-store-memory=200000000",
        f"--port={free_port()}",
        f"--dashboard-port={dashboard}",
        # every default port a concurrent Ray on this machine may hold already
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
    ]
    log_path = root / "head.log"
    with log_path.open("wb") as log:
        # RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0: on SIGTERM, stop at once instead of draining 30 s
        proc = subprocess.Popen(
            cmd,
            env=env | {"RAY_AUTH_MODE": "token", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    head = RayHead(f"http://127.0.0.1:{dashboard}", token, log_path)
    try:
        _wait_for_jobs_api(head, proc)
        yield head
    finally:
        _stop_head(proc)
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_jobs_api(head: RayHead, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    request = urllib.request.Request(
        f"{head.address}/api/jobs/", headers={"Authorization": f"Bearer {head.token}"}
    )
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{head.log.read_text()}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(
        f"no Jobs API at {head.address} after {STARTUP_TIMEOUT_S} s:\n{head.log.read_text()}"
    )


def _stop_head(proc: subprocess.Popen) -> None:
    """Stop the head: SIGTERM to ``ray start --block`` (it stops the daemons it started), then
    SIGKILL to whatever of its process group is left, workers included."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=10)


def _wait_for(vmb, head: RayHead, job_id: str, wanted: set[str]) -> str:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        code, out, err = vmb("status", job_id, "--address", head.address, "--token", head.token)
        assert code == 0, err
        status = out.strip()
        if status in wanted or status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(1)


def _overrides(archive: Path, out: Path, **sampling) -> list[str]:
    values = {**TINY_SAMPLING, **sampling}
    return [
        f"input={archive}",
        f"output={out}",
        "mlflow.enabled=false",
        *(f"sampling.{k}={v}" for k, v in values.items()),
    ]


def test_submit_without_or_with_a_wrong_token_is_refused(ray_head, tmp_path):
    overrides = set_args(_overrides(tmp_path, tmp_path / "out"))
    no_token = vmb_subprocess(
        "submit",
        "jobs/classify.toml",
        "--address",
        ray_head.address,
        *overrides,
        env=env_without_ray(tmp_path),
        timeout=120,
    )
    assert no_token.returncode == 2, no_token.stderr
    assert "Traceback" not in no_token.stderr and no_token.stdout == ""
    [message] = no_token.stderr.strip().splitlines()
    assert message.startswith("vmb submit: error:") and "requires an auth token" in message
    assert "RAY_AUTH_TOKEN" in message and "--token" in message

    wrong = vmb_subprocess(
        "submit",
        "jobs/classify.toml",
        "--address",
        ray_head.address,
        *overrides,
        env=env_without_ray(tmp_path, RAY_AUTH_TOKEN="not-the-token"),
        timeout=120,
    )
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert "refused the auth token from RAY_AUTH_TOKEN" in wrong.stderr
    assert "not-the-token" not in wrong.stderr  # the token itself is never echoed


def test_relative_paths_are_refused_before_contacting_the_cluster(vmb, tmp_path):
    code, out, err = vmb(
        "submit",
        "jobs/classify.toml",
        "--address",
        f"http://127.0.0.1:{free_port()}",
        "--set",
        f"input={tmp_path}",
    )  # output stays the spec's relative path
    assert code == 2 and out == ""
    assert "output = '.vmb/jobs/classify' is a relative path" in err and len(err.splitlines()) == 1


def test_status_errors_are_one_line(ray_head, vmb, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    code, _, err = vmb(
        "status", "raysubmit_nope", "--address", ray_head.address, "--token", ray_head.token
    )
    assert (
        code == 2 and "raysubmit_nope does not exist" in err and len(err.strip().splitlines()) == 1
    )
    code, _, err = vmb(
        "status",
        "raysubmit_nope",
        "--address",
        f"http://127.0.0.1:{free_port()}",
        "--token",
        ray_head.token,
    )
    assert code == 2 and "cannot reach the Ray Jobs API" in err
    # the token file sources: RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token
    token_file = tmp_path / "token"
    token_file.write_text(ray_head.token + "\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    code, _, err = vmb("status", "raysubmit_nope", "--address", ray_head.address)
    assert code == 2 and "does not exist" in err  # got past authentication
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    (tmp_path / ".ray").mkdir()
    token_file.rename(tmp_path / ".ray" / "auth_token")
    code, _, err = vmb("status", "raysubmit_nope", "--address", ray_head.address)
    assert code == 2 and "does not exist" in err


def test_submitted_job_succeeds_with_complete_tables(ray_head, vmb, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    videos = [
        make_video(archive / "a.mp4", num_frames=24, seed=1),
        make_video(archive / "b.mp4", num_frames=18, size=(80, 60), fps=10.0, seed=2),
    ]
    out = tmp_path / "out"
    overrides = _overrides(archive, out)
    submitted = vmb_subprocess(
        "submit",
        "jobs/classify.toml",
        "--address",
        ray_head.address,
        *set_args(overrides),
        env=env_without_ray(tmp_path, RAY_AUTH_TOKEN=ray_head.token),
        timeout=180,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]

    status = _wait_for(vmb, ray_head, job_id, TERMINAL)
    code, logs, _ = vmb("logs", job_id, "--address", ray_head.address, "--token", ray_head.token)
    assert status == "SUCCEEDED", logs

    spec, _ = load_spec(REPO / "jobs" / "classify.toml", overrides)
    expected = sum(
        len(plan_clips(p.num_frames, p.fps, spec.sampling)) for p in map(probe_video, videos)
    )
    clips = read_table(str(out), "clips")
    assert clips.num_rows == expected > 0
    assert set(clip_key_counts(clips).values()) == {1}
    vids = read_table(str(out), "videos").to_pylist()
    assert sorted(v["video_uri"].rsplit("/", 1)[-1] for v in vids) == ["a.mp4", "b.mp4"]
    assert {v["status"] for v in vids} == {"ok"}
    assert sum(v["num_clips"] for v in vids) == expected

    assert code == 0
    assert any(
        line.split()[:2] == ["clips", "written"] and line.split()[-1] == str(expected)
        for line in logs.splitlines()
    ), logs
    assert f"{out}/clips, {out}/videos" in logs


def test_stop_a_running_job(ray_head, vmb, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    make_video(archive / "long.mp4", num_frames=600, fps=24.0)  # minutes of work at size 224
    out = tmp_path / "out"
    overrides = _overrides(archive, out, size=224, clip_len=8, frame_interval=1)
    code, out_text, err = vmb(
        "submit",
        "jobs/classify.toml",
        "--address",
        ray_head.address,
        "--token",
        ray_head.token,
        *set_args(overrides),
    )
    assert code == 0, err
    job_id = out_text.strip().splitlines()[-1]
    assert _wait_for(vmb, ray_head, job_id, {"RUNNING"}) == "RUNNING"

    code, stopped, err = vmb(
        "stop", job_id, "--address", ray_head.address, "--token", ray_head.token
    )
    assert (code, stopped.strip()) == (0, "stop requested"), err
    assert _wait_for(vmb, ray_head, job_id, TERMINAL) == "STOPPED"
    code, stopped, _ = vmb("stop", job_id, "--address", ray_head.address, "--token", ray_head.token)
    assert (code, stopped.strip()) == (0, "not running")

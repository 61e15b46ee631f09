"""Hangs and crashes lose nothing and duplicate nothing: injected decoder hangs, SIGKILLed
decode and model actors, a SIGKILLed driver, on the real Ray runtime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.child_process import HANG_MARKER_ENV
from pipeline.job import run_job
from tests.pipeline.jobs_util import clip_key_counts, read_table, tiny_spec
from tests.videos import make_video

REPO = Path(__file__).resolve().parents[2]


def _archive(root: Path, n: int, frames: int = 24) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_video(root / f"v{i:02d}.mp4", num_frames=frames, seed=i)
    return root


def _assert_exactly_once(out: Path, n_videos: int, clips_per_video: int, models: int = 1) -> None:
    clips = read_table(str(out), "clips")
    counts = clip_key_counts(clips)
    assert set(counts.values()) == {1}, "a clip row appears more than once"
    assert clips.num_rows == n_videos * clips_per_video * models
    videos = read_table(str(out), "videos").to_pylist()
    assert len(videos) == n_videos and {v["video_id"] for v in videos} == {k[0] for k in counts}


def test_hung_decoder_is_killed_and_marked_timeout(ray_session, tmp_path):
    marker = os.environ[HANG_MARKER_ENV]
    root = _archive(tmp_path / "in", 2)
    make_video(root / f"stuck{marker}.mp4", num_frames=24, seed=9)
    out = tmp_path / "out"
    result = run_job(tiny_spec(str(root), str(out), decode={"timeout_s": 5.0}))
    videos = {Path(v["video_uri"]).name: v for v in read_table(str(out), "videos").to_pylist()}
    stuck = videos[f"stuck{marker}.mp4"]
    assert stuck["status"] == "timeout" and stuck["error_type"] == "DecodeTimeout"
    assert all(v["status"] == "ok" for k, v in videos.items() if k.startswith("v"))
    assert result.summary["failures_by_type"] == {"DecodeTimeout": 1}
    clips = read_table(str(out), "clips")
    assert set(clip_key_counts(clips).values()) == {1} and clips.num_rows == 2 * 3


def _kill_actor_when_running(class_fragment: str, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first actor process whose Ray process title names ``class_fragment`` once it
    has been busy for a moment (Ray titles actor processes ``ray::MapWorker(...)``)."""
    import psutil

    seen_at: dict[int, float] = {}
    while not stop.is_set():
        for proc in psutil.process_iter(["pid", "cmdline"]):
            title = " ".join(proc.info["cmdline"] or [])
            if title.startswith("ray::") and class_fragment in title:
                first = seen_at.setdefault(proc.info["pid"], time.time())
                if time.time() - first > 1.0:
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    return
        time.sleep(0.1)


@pytest.mark.parametrize("victim", ["DecodeWorker", "ModelWorker"])
def test_sigkilled_actor_is_replaced_and_every_clip_lands_once(ray_session, tmp_path, victim):
    root = _archive(tmp_path / "in", 6, frames=36)
    out = tmp_path / "out"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(
        target=_kill_actor_when_running, args=(victim, killed, stop), daemon=True
    )
    killer.start()
    try:
        result = run_job(
            tiny_spec(str(root), str(out), models=[{"name": "frame-average", "batch_size": 2}])
        )
    finally:
        stop.set()
        killer.join(5)
    assert killed, f"no {victim} actor was seen alive to kill"
    assert result.summary["videos_ok"] == 6
    _assert_exactly_once(out, 6, 5)


def _vmb_run(spec_path: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(spec_path), "--no-progress"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )


def test_killed_driver_resumes_without_recomputing(tmp_path):
    root = _archive(tmp_path / "in", 8, frames=60)
    out = tmp_path / "out"
    spec_path = tmp_path / "job.toml"
    spec_path.write_text(f"""
name = "resume"
input = "{root}"
output = "{out}"
shard_size = 1
[sampling]
clip_len = 4
frame_interval = 2
size = 64
[ray]
num_cpus = 2
[mlflow]
enabled = false
[[models]]
name = "frame-average"
batch_size = 2
""")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = _vmb_run(spec_path, env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            done = list((out / "_shards").glob("*.json")) if (out / "_shards").exists() else []
            if len(done) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"job ended before it could be killed:\n{proc.stdout.read()}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.wait(30)
    published_before = len(list((out / "_shards").glob("*.json")))  # one video per shard
    assert 2 <= published_before < 8

    second = _vmb_run(spec_path, env)
    try:
        output, _ = second.communicate(timeout=600)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    assert second.returncode == 0, output
    job = json.loads((out / "_job.json").read_text())
    assert job["counts"]["resumed_videos_skipped"] >= published_before
    _assert_exactly_once(out, 8, 8)
    assert not [p for p in (out / "clips").iterdir() if p.name.startswith(".")], (
        "temporary files left"
    )
    assert not (out / "_staging").exists(), "part files left after the job completed"
    assert len(list((out / "videos").iterdir())) == 8  # one file per shard


def test_resume_retries_transient_failures_only(ray_session, tmp_path):
    """A video recorded as failed by a transient cause (here: an earlier run's read error) is
    processed again on resume and merged into its committed shard; a permanent failure (a
    corrupt file) is not, and nothing else in the shard is recomputed."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = _archive(tmp_path / "in", 3)
    (root / "broken.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "out"
    spec = tiny_spec(str(root), str(out))
    run_job(spec)
    # What an earlier run that could not read v01.mp4 would have committed: its row failed with
    # a transient type, no clips for it, and the marker listing it for retry.
    videos_file, clips_file = (
        out / "videos" / "shard-000000.parquet",
        next((out / "clips").iterdir()),
    )
    marker_file = out / "_shards" / "shard-000000.json"
    videos = pq.read_table(videos_file)
    victim = next(v for v in videos.to_pylist() if v["video_uri"].endswith("v01.mp4"))
    rows = [
        {
            **v,
            "status": "error",
            "error_type": "SourceRead",
            "error_message": "connection reset",
            "num_clips": 0,
        }
        if v["video_id"] == victim["video_id"]
        else v
        for v in videos.to_pylist()
    ]
    pq.write_table(type(videos).from_pylist(rows, schema=videos.schema), videos_file)
    clips = pq.read_table(clips_file)
    pq.write_table(
        clips.filter(pc.not_equal(clips.column("video_id"), victim["video_id"])), clips_file
    )
    marker = json.loads(marker_file.read_text())
    marker["retry"] = [victim["video_id"]]
    marker_file.write_text(json.dumps(marker))

    again = run_job(spec)
    assert again.summary["resumed_videos_skipped"] == 3  # two good videos + the corrupt one
    assert again.summary["videos_processed"] == 1 and again.summary["videos_ok"] == 1
    after = {r["video_id"]: r for r in read_table(str(out), "videos").to_pylist()}
    assert after[victim["video_id"]]["status"] == "ok"
    assert len(after) == 4
    clips = read_table(str(out), "clips")
    assert set(clip_key_counts(clips).values()) == {1} and clips.num_rows == 3 * 3
    assert json.loads(marker_file.read_text())["retry"] == []

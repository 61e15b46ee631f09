"""A job on a real two-node local Ray cluster (``ray.cluster_utils.Cluster``).

The session already has an embedded Ray in this process, so the cluster and its driver run in a
subprocess with their own Ray temp dir (``RAY_TMPDIR``: the cluster writes its address file
there, not in ``/tmp/ray`` where any ``ray.init()`` on the machine would find it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.probe import probe_video
from pipeline.sampling import plan_clips
from tests.conftest import TINY_ARCHIVE
from tests.pipeline.jobs_util import clip_key_counts, read_table, tiny_spec

REPO = Path(__file__).resolve().parents[2]

# A head node with no CPUs (the driver's node: nothing but the driver runs there) and two worker
# nodes of 1 CPU each. The job's model actor asks for about 1 CPU and its decode actor for 0.5,
# so they cannot share a node: clips are decoded on one node and classified on the other, and
# every part file and shard file is written by a worker on a node other than the driver's.
DRIVER = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from pipeline.job import run_job
from tests.pipeline.jobs_util import tiny_spec

archive, output = sys.argv[1:3]
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 0, "include_dashboard": False})
try:
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    nodes = sum(1 for n in ray.nodes() if n["Alive"])
    cpus = ray.cluster_resources().get("CPU")
    driver_node = ray.get_runtime_context().get_node_id()
    result = run_job(tiny_spec(archive, output, shard_size=1))
    print("RESULT " + json.dumps({"nodes": nodes, "cpus": cpus, "summary": result.summary,
                                  "driver_node": driver_node}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_job_on_two_node_cluster_writes_every_clip_once(tiny_archive, tmp_path):
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="vmb-cluster-")  # short: Ray's unix sockets live below it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH_", "RAY_ADDRESS"))}
    env |= {
        "RAY_TMPDIR": ray_tmp,
        "RAY_AUTH_MODE": "disabled",
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    }
    # own process group: on a timeout, the cluster's daemons are killed with the driver
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, tiny_archive, str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=30)
        pytest.fail(f"the cluster job did not finish in 300 s:\n{stdout}\n{stderr[-5000:]}")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"stdout:\n{stdout}\nstderr:\n{stderr[-5000:]}"
    report = json.loads(lines[-1].removeprefix("RESULT "))
    assert report["nodes"] == 3 and report["cpus"] == 2.0

    spec = tiny_spec(tiny_archive, str(out))
    videos = [str(Path(tiny_archive) / name) for name in TINY_ARCHIVE]
    expected = sum(
        len(plan_clips(p.num_frames, p.fps, spec.sampling)) for p in map(probe_video, videos)
    )
    summary = report["summary"]
    assert summary["clips"] == expected > 0
    assert summary["videos_ok"] == len(TINY_ARCHIVE) and summary["videos_failed"] == 0, summary

    clips = read_table(str(out), "clips")
    counts = clip_key_counts(clips)
    assert clips.num_rows == expected and set(counts.values()) == {1}
    per_video = {}
    for video_id, clip_index, _ in counts:
        per_video.setdefault(video_id, []).append(clip_index)
    assert all(sorted(ix) == list(range(len(ix))) for ix in per_video.values())  # no gaps
    vids = read_table(str(out), "videos").to_pylist()
    assert len(vids) == len(TINY_ARCHIVE) and {v["status"] for v in vids} == {"ok"}
    assert {v["video_id"]: v["num_clips"] for v in vids} == {
        k: len(v) for k, v in per_video.items()
    }

    # Written by workers: one shard per video, each committed on a node that is not the driver's,
    # and the driver received status rows only (a clip's feature alone is 5,120 bytes).
    markers = [json.loads(p.read_text()) for p in (out / "_shards").glob("*.json")]
    assert len(markers) == len(TINY_ARCHIVE) == summary["shards_committed"]
    assert all(m["node_id"] and m["node_id"] != report["driver_node"] for m in markers)
    assert summary["driver_received_bytes"] / summary["clips"] < 2048

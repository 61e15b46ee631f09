"""A two-worker-node local Ray cluster loses a node mid-job; the job completes with every row once.

Runs in a subprocess: the test session already holds an embedded Ray instance in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.pipeline.jobs_util import clip_key_counts, read_table
from tests.videos import make_video

SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    from pathlib import Path
    from ray.cluster_utils import Cluster
    import ray
    from pipeline.job import run_job
    from tests.pipeline.jobs_util import tiny_spec

    archive, out = sys.argv[1], sys.argv[2]
    # The GCS declares a silent node dead after health_check_failure_threshold missed checks,
    # one every health_check_period_ms (Ray's defaults: 5 x 3 s); the job's tasks on that node
    # fail over only then. Checked every second here (a live raylet still has 2 s to answer,
    # three times running, under the suite's load), so the test does not wait 15 s for it.
    health = {"health_check_period_ms": 1000, "health_check_timeout_ms": 2000,
              "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "_system_config": health})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    removed = []

    def remove_a_node():
        markers = Path(out) / "_shards"
        while not (markers.exists() and len(list(markers.glob("*.json"))) >= 2):
            time.sleep(0.1)
        # the node running the model actor, if it is a worker node, else the other worker
        cluster.remove_node(workers[0], allow_graceful=False)
        removed.append(time.time())

    threading.Thread(target=remove_a_node, daemon=True).start()
    try:
        models = [{"name": "frame-average", "batch_size": 2}]
        result = run_job(tiny_spec(archive, out, models=models, shard_size=2))
        alive = lambda: len([n for n in ray.nodes() if n["Alive"]])
        # the GCS marks a vanished node dead after its health checks fail
        deadline = time.time() + 90
        while alive() > 2 and time.time() < deadline:
            time.sleep(1)
        print("RESULT " + json.dumps({"summary": result.summary, "removed": bool(removed),
                                      "alive_nodes": alive()}))
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


def test_job_survives_losing_a_worker_node(tmp_path):
    archive = tmp_path / "in"
    archive.mkdir()
    for i in range(10):
        make_video(archive / f"v{i}.mp4", num_frames=36, seed=i)
    out = tmp_path / "out"
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(archive), str(out)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(lines[-1][len("RESULT ") :])
    assert report["removed"], "the node was not removed while the job ran"
    assert report["alive_nodes"] == 2
    assert report["summary"]["videos_ok"] == 10
    clips = read_table(str(out), "clips")
    assert set(clip_key_counts(clips).values()) == {1} and clips.num_rows == 10 * 5
    assert read_table(str(out), "videos").num_rows == 10

"""How many worker processes a node that vmb starts keeps (``num_workers_soft_limit``)."""

from __future__ import annotations

import json
import subprocess
import sys

from pipeline.job import local_ray_config
from pipeline.resources import (
    COMMITS_IN_FLIGHT,
    PROBES_IN_FLIGHT,
    RAY_DATA_ACTORS,
    WRITERS_IN_FLIGHT,
    worker_processes,
)
from tests.pipeline.cli_util import REPO, env_without_ray
from tests.pipeline.jobs_util import tiny_spec


def test_a_started_node_keeps_a_worker_process_for_every_process_of_the_stream(tmp_path):
    spec = tiny_spec(
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        models=[
            {"name": "frame-average", "batch_size": 4, "actors": 2},
            {"name": "frame-average", "batch_size": 4, "key": "second"},
        ],
        decode={"actors": 3},
    )
    small_tasks = 2 + PROBES_IN_FLIGHT + WRITERS_IN_FLIGHT + COMMITS_IN_FLIGHT  # + listing, split
    assert worker_processes(spec) == 3 + 2 + 1 + RAY_DATA_ACTORS + small_tasks
    # Ray's own default (one per CPU) is kept where it is the larger.
    assert local_ray_config(spec, 2) == {"num_workers_soft_limit": worker_processes(spec)}
    assert local_ray_config(spec, 64) == {"num_workers_soft_limit": 64}


def test_the_node_a_job_starts_carries_the_limit(tmp_path):
    """``run_job``'s own Ray start (no address) passes the limit to the node it starts; in a
    fresh process, since this session's Ray is already running."""
    probe = (
        "import json, sys\n"
        "import ray\n"
        "from pipeline.job import _init_ray, local_ray_config\n"
        "from tests.pipeline.jobs_util import tiny_spec\n"
        f"spec = tiny_spec({str(tmp_path / 'in')!r}, {str(tmp_path / 'out')!r},\n"
        "                 ray={'num_cpus': 2})\n"
        "_init_ray(spec, None)\n"
        "try:\n"
        "    node = ray._private.worker._global_node._config['num_workers_soft_limit']\n"
        "    print(json.dumps([node, local_ray_config(spec, 2)['num_workers_soft_limit']]))\n"
        "finally:\n"
        "    ray.shutdown()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env=env_without_ray(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    node, wanted = json.loads(proc.stdout.strip().splitlines()[-1])
    assert node == wanted >= 12  # 1 decode + 1 model actor, Ray Data's 3, 7 small tasks

"""What a job's stream asks of the cluster: the probe and writer tasks it runs at once, and how
many worker processes a node that vmb starts keeps (``num_workers_soft_limit``)."""

from __future__ import annotations

import json
import subprocess
import sys

from pipeline.job import local_ray_config
from pipeline.resources import (
    COMMITS_IN_FLIGHT,
    RAY_DATA_ACTORS,
    WRITERS_IN_FLIGHT,
    probes_in_flight,
    worker_processes,
    writers_in_flight,
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
    # A probe task per decode actor, a writer per actor of the last model (at least two).
    assert probes_in_flight(spec) == 3
    assert writers_in_flight(spec) == WRITERS_IN_FLIGHT == 2
    small_tasks = 2 + 3 + 2 + COMMITS_IN_FLIGHT  # + the listing and its split
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


def _task_pool_sizes(ds) -> dict[str, int | None]:
    """Task-pool stage name -> tasks it may run at once, read off the Dataset's logical plan."""
    from ray.data import TaskPoolStrategy

    sizes, ops = {}, [ds._logical_plan.dag]
    while ops:
        op = ops.pop()
        if isinstance(getattr(op, "compute", None), TaskPoolStrategy):
            sizes[op.name] = op.compute.size
        ops.extend(op.input_dependencies)
    return sizes


def test_probes_and_writers_scale_with_the_actors_they_serve(ray_session, tmp_path):
    from pipeline.stream import build_stream

    (tmp_path / "in").mkdir()
    spec = tiny_spec(
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        models=[{"name": "frame-average", "batch_size": 4, "actors": 5}],
        decode={"actors": 3},
    )
    ds = build_stream(spec, ray_session, job_id="j", run="r", markers={}, versions={})
    sizes = _task_pool_sizes(ds)
    assert sizes["MapBatches(probe_block)"] == 3  # one per decode actor
    assert sizes["MapBatches(write_parts)"] == 5  # one per actor of the last model

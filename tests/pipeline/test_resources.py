"""How many worker processes a node that vmb starts keeps (``num_workers_soft_limit``)."""

from __future__ import annotations

from pipeline.job import local_ray_config
from pipeline.resources import (
    COMMITS_IN_FLIGHT,
    PROBES_IN_FLIGHT,
    RAY_DATA_ACTORS,
    WRITERS_IN_FLIGHT,
    worker_processes,
)
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

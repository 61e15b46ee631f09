"""What a job's stream may hold at once, bounded whatever the archive's size.

**How far the split and the probe run ahead.** A listing row is a few hundred bytes, so Ray
Data's memory-based backpressure never held the stages in front of the decoders back: the
listing's split cut a 1,000,000-row manifest into 31,250 blocks of 32 videos within seconds,
every one an object reference, a ``RefBundle`` and its metadata in the driver, and the probe,
fast on missing files, ran ahead of the decoders the same way. ``StreamBounds`` is a Ray Data
backpressure policy (Ray Data's extension point:
``DataContext.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, ...)``) that bounds them in
blocks:

- the split takes a new listing block only when its last one is done and fewer than
  ``listed`` of its blocks wait for the probe;
- the probe starts a task only while fewer than ``probed`` probed blocks wait for the decoders.

**The start-up path is the same at any archive size.** Until every actor pool after the probe
has an actor running (the decoders and the models are still being constructed), the policy lets
the probe start one task, and that one only once the split has no task running. (Ray Data's
liveness rule still starts a held stage when no task of the whole stream runs, so before the
actors run the probe's further tasks run one at a time, never beside another stage's.)

- A running split task holds its worker process, so a probe task started beside it needed a new
  one: a Python start and Ray Data's imports, about a second of CPU, on a 2-CPU node while the
  model actor was importing torch and loading its weights. With 20 videos the listing and the
  split are done by then and the probe runs in their worker; with 2,000 the first probe started
  a process of its own.
- Further probe blocks before the models can take clips only let the decoders run ahead into
  bounded queues, on the CPU the actors' construction needs.

Per stage on the way to the first clip of 2,000 videos (traced; Intel Xeon, 2 cores): the model
actor's construction took 3.2-3.7 s with probes and two worker start-ups beside it, 2.0 s with
20 videos, 2.6 s held. The first clip (median of three interleaved rounds, docs/BENCHMARKS.md
"Day eight"): 6.11 s for 2,000 videos against 5.45 s for 20 (1.12x; 1.31x before), 6.02 s for
20,000 against 5.52 s (1.09x; 1.27x before, with a listing walk that took twice the CPU it
takes now). Once the actors run, only the bounds above apply; a pool whose only actor restarts
holds the probe again meanwhile.

**Every stage can always start one task.** Ray Data divides the stream's object-store budget
evenly among its stages and refuses a stage a task whose expected output (two blocks: 4.8 MB
for a decode task at 112x112) is larger than what is left of its share (3-4.5 MiB for the
decoders of the shipped classify job); its last resort starts a refused task only when no task
of any stage runs, so a refused stage waited for the whole stream to go idle. ``bound_stream``
sets the stream's ``object_store_memory_pressure_fraction`` (a ``DataContext`` option) so low
that Ray Data's allowance always applies: a stage with input waiting and no task running may
start one task past its budget. Memory stays bounded (the budget plus one task's output per
stage). On 2,000 videos the decoders were dispatched 99-116 times through the normal path and
never through the last resort, against 54-61 and 9-16 without it; on a 1,000,000-row manifest,
whose listing fills the object store (below), the first clips file came at 16 s instead of
33 s.

The listing's read task itself is not held back: a held read task stays running, and a
20,000-video job held that way (before the allowance) made no clip in 800 s, and with the
allowance 2,000 videos took 10-20 % longer held than not (two runs each). Its blocks wait in
front of the split, up to the listing's size in the object store (254 MiB for 1,000,000
videos) and a reference each in the driver (109 for 1,000,000 videos).

**What the driver keeps per block.** Ray Data keeps the stats of every block each stage made
(for its stats summary, shown with ``-v``): 5,300 of them, 3 MiB pickled, after 32,000 videos of
a manifest, growing with the archive. Each stage keeps its newest ``BLOCK_STATS_KEPT``; the
summary then describes those.

Ray is pinned (pyproject.toml); ``tests/pipeline/test_stream_bounds.py`` checks the bounds on a
real stream.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ray.data._internal.execution.backpressure_policy import (
    ENABLED_BACKPRESSURE_POLICIES,
    ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
    BackpressurePolicy,
)
from ray.data._internal.execution.operators.actor_pool_map_operator import ActorPoolMapOperator

# DataContext config key: {"probe": <name of the probe's function>, "listed": <blocks>,
# "probed": <blocks>}.
CONFIG_KEY = "vmb.stream_bounds"
# Object-store use (a fraction of the stream's budget) past which a stage with input waiting and
# no task running may start one task its budget refuses: any use at all.
ONE_TASK_ALLOWANCE_FROM = 1e-9
# Per stage, the newest blocks whose stats the driver keeps.
BLOCK_STATS_KEPT = 1000
# Probe tasks that may start before every actor pool of the stream has an actor running.
PROBE_TASKS_BEFORE_ACTORS = 1


class StreamBounds(BackpressurePolicy):
    """Holds back the listing's split and the probe (the probe more until the stream's actors
    run), and caps the block stats each stage keeps (see the module docstring)."""

    def __init__(self, data_context, topology, resource_manager):
        super().__init__(data_context, topology, resource_manager)
        config: dict[str, Any] | None = data_context.get_config(CONFIG_KEY, None)
        ops = list(topology)  # in the stream's order: input, listing, split, probe, decode, ...
        if config:
            for op in ops:
                if isinstance(getattr(op, "_output_blocks_stats", None), list):
                    op._output_blocks_stats = deque(op._output_blocks_stats, BLOCK_STATS_KEPT)
        at = next((i for i, op in enumerate(ops) if config and config["probe"] in op.name), None)
        self.split = self.probe = None
        if at is None or at < 2 or at + 1 >= len(ops):
            return  # not a job's stream: nothing to bound
        self.split, self.probe = ops[at - 1 : at + 1]
        self.pools = [op for op in ops[at + 1 :] if isinstance(op, ActorPoolMapOperator)]
        self.listed_ahead, self.probed_ahead = int(config["listed"]), int(config["probed"])

    def waiting(self, op) -> int:
        """Blocks ``op`` made that its next stage has not taken yet (``op``'s output queue is
        that stage's input queue)."""
        return self._topology[op.output_dependencies[0]].total_enqueued_input_blocks()

    def can_add_input(self, op) -> bool:
        if op is self.split:  # None outside a job's stream: no stage is None
            return op.num_active_tasks() == 0 and self.waiting(op) < self.listed_ahead
        if op is self.probe:
            if self.waiting(op) >= self.probed_ahead:
                return False
            if self.actors_running():
                return True
            return (
                op.metrics.num_tasks_submitted < PROBE_TASKS_BEFORE_ACTORS
                and self.split.num_active_tasks() == 0
            )
        return True

    def actors_running(self) -> bool:
        """Every actor pool after the probe has at least one actor constructed and running."""
        return all(pool.get_actor_info().running > 0 for pool in self.pools)


def bound_stream(ds, *, probe: str, listed: int, probed: int) -> None:
    """In ``ds``'s stream, let at most ``listed`` split blocks of the listing wait for the probe
    stage (the first stage whose name holds ``probe``) and ``probed`` probed blocks wait for the
    decoders, and let every stage start one task past its object-store budget when it has input
    and none running; set on the Dataset's own ``DataContext``."""
    ctx = ds.context
    ctx.object_store_memory_pressure_fraction = ONE_TASK_ALLOWANCE_FROM
    policies = ctx.get_config(
        ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, ENABLED_BACKPRESSURE_POLICIES
    )
    if StreamBounds not in policies:
        ctx.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [*policies, StreamBounds])
    ctx.set_config(CONFIG_KEY, {"probe": probe, "listed": listed, "probed": probed})

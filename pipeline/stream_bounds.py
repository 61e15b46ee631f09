"""What a job's stream may hold at once, bounded whatever the archive's size.

**How far the listing and the probe run ahead.** A listing row is a few hundred bytes, so Ray
Data's memory-based backpressure never held the listing back: a 1,000,000-row manifest became
109 listing blocks (254 MiB) and then 31,250 split blocks within seconds, every one an object
reference, a ``RefBundle`` and its metadata in the driver. Worse, those bytes counted against
the stream's small object-store budget (``pipeline.resources.stream_memory_limit``), so the
decoders and the model got no budget and the first clip waited 30-60 s. The probe, fast on
missing files, then ran ahead the same way. ``StreamBounds`` is a Ray Data backpressure policy
(Ray Data's extension point: ``DataContext.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
...)``) that bounds them in blocks instead:

- the listing's read task yields blocks of ``LISTING_BLOCK_BYTES`` (not the stream's block
  size, a model batch of decoded clips: thousands of listing rows), and is not read from while
  ``LISTING_BLOCKS_QUEUED`` blocks' worth waits for the split (its generator pauses two blocks
  ahead, Ray's default);
- the split takes a new listing block only when its last one is done and fewer than
  ``listed`` of its blocks wait for the probe;
- the probe starts a task only while fewer than ``probed`` probed blocks wait for the decoders.

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

# DataContext config key: {"probe": <name of the probe's function>, "listed": <blocks>,
# "probed": <blocks>}.
CONFIG_KEY = "vmb.stream_bounds"
# Per stage, the newest blocks whose stats the driver keeps.
BLOCK_STATS_KEPT = 1000


class StreamBounds(BackpressurePolicy):
    """Holds back the listing, its split and the probe, and caps the block stats each stage
    keeps (see the module docstring)."""

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
        self.listed_ahead, self.probed_ahead = int(config["listed"]), int(config["probed"])

    def waiting(self, op) -> int:
        """Blocks ``op`` made that its next stage has not taken yet (``op``'s output queue is
        that stage's input queue)."""
        return self._topology[op.output_dependencies[0]].total_enqueued_input_blocks()

    def can_add_input(self, op) -> bool:
        if op is self.split and op is not None:
            return op.num_active_tasks() == 0 and self.waiting(op) < self.listed_ahead
        if op is self.probe and op is not None:
            return self.waiting(op) < self.probed_ahead
        return True


def bound_stream(ds, *, probe: str, listed: int, probed: int) -> None:
    """In ``ds``'s stream, let at most ``listed`` blocks of the listing wait for the probe stage
    (the first stage whose name holds ``probe``) and ``probed`` probed blocks wait for the
    decoders; set on the Dataset's own ``DataContext``."""
    ctx = ds.context
    policies = ctx.get_config(
        ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, ENABLED_BACKPRESSURE_POLICIES
    )
    if StreamBounds not in policies:
        ctx.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [*policies, StreamBounds])
    ctx.set_config(CONFIG_KEY, {"probe": probe, "listed": listed, "probed": probed})

"""Bounds on how far the listing and the probe run ahead of the decoders.

A listing row is a few hundred bytes, so Ray Data's memory-based backpressure never held the
listing back: a 1,000,000-row manifest became 109 listing blocks (254 MiB) and then 31,250
split blocks within seconds, every one an object reference, a ``RefBundle`` and its metadata
in the driver. Worse, those bytes counted against the stream's small object-store budget
(``pipeline.resources.stream_memory_limit``), so the decoders and the model got no budget and
the first clip waited 30-60 s. The probe, fast on missing files, then ran ahead the same way.

``ListingRunAhead`` is a Ray Data backpressure policy (Ray Data's extension point:
``DataContext.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, ...)``) that bounds them in
blocks instead:

- the split takes a new listing block only when its last one is done and fewer than
  ``listed`` of its blocks wait for the probe;
- the listing's read task is not read from while a listing block waits for the split (its
  generator pauses two blocks ahead, Ray's default);
- the probe starts a task only while fewer than ``probed`` probed blocks wait for the decoders.

The listing and the split are then left out of Ray Data's memory budget (bounded here, a few
MiB at most: three listing blocks and ``listed`` plus one listing block's worth of split
blocks), so the budget goes to decoded clips. The driver holds that many blocks whatever the
archive's size. Ray is pinned (pyproject.toml); ``tests/pipeline/test_listing_backpressure.py``
checks the bounds on a real stream.
"""

from __future__ import annotations

from typing import Any

from ray.data._internal.execution import streaming_executor_state
from ray.data._internal.execution.backpressure_policy import (
    ENABLED_BACKPRESSURE_POLICIES,
    ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
    BackpressurePolicy,
)

# DataContext config key: {"probe": <name of the probe's function>, "listed": <blocks>,
# "probed": <blocks>}.
CONFIG_KEY = "vmb.listing_run_ahead"
# Bytes per block the listing's read task yields (about 250 videos of a local archive).
LISTING_BLOCK_BYTES = 64 * 1024
# Listing blocks that may wait for the split.
LISTING_BLOCKS_QUEUED = 2


class ListingRunAhead(BackpressurePolicy):
    """Holds back the listing, its split and the probe (see the module docstring)."""

    def __init__(self, data_context, topology, resource_manager):
        super().__init__(data_context, topology, resource_manager)
        config: dict[str, Any] | None = data_context.get_config(CONFIG_KEY, None)
        ops = list(topology)  # in the stream's order: input, listing, split, probe, decode, ...
        at = next((i for i, op in enumerate(ops) if config and config["probe"] in op.name), None)
        self.listing = self.split = self.probe = self.decode = None
        if at is None or at < 2 or at + 1 >= len(ops):
            return  # not a job's stream: nothing to bound
        self.listing, self.split, self.probe, self.decode = ops[at - 2 : at + 2]
        self.listed_ahead, self.probed_ahead = int(config["listed"]), int(config["probed"])
        # Before its first task: listing blocks of a model batch of decoded clips (the stream's
        # block size) held thousands of videos and took the budget the decoders need.
        self.listing.override_target_max_block_size(LISTING_BLOCK_BYTES)
        self.listing.vmb_keep_paused = True  # see _never_release_a_bounded_listing
        _never_release_a_bounded_listing()

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

    def max_task_output_bytes_to_read(self, op) -> int | None:
        # In bytes, not blocks: the split holds back a remainder of fewer rows than its blocks
        # until more arrive, which must never stop the listing.
        if op is self.listing and op is not None:
            queued = self._topology[self.split].total_enqueued_input_blocks_bytes()
            return max(0, LISTING_BLOCKS_QUEUED * LISTING_BLOCK_BYTES - queued)
        return None


def _never_release_a_bounded_listing() -> None:
    """Ray Data's liveness guard reads a held-back stage's output anyway whenever the stage
    after it cannot start a task: the split, held back here, then let the listing run on (the
    queue grew with the archive: 0.8 MiB at 3,000 videos, 1.2 MiB at 12,000). The listing held
    back here is left out of that guard; it resumes as soon as the split takes its blocks, and
    the split and everything after it keep the guard."""
    guard = streaming_executor_state.OutputBackpressureGuard
    if getattr(guard.should_unblock, "vmb_wrapped", False):
        return
    should_unblock = guard.should_unblock

    def wrapped(self, op) -> bool:
        return not getattr(op, "vmb_keep_paused", False) and should_unblock(self, op)

    wrapped.vmb_wrapped = True
    guard.should_unblock = wrapped


def bound_listing(ds, *, probe: str, listed: int, probed: int) -> None:
    """In ``ds``'s stream, let at most ``listed`` blocks of the listing wait for the probe stage
    (the first stage whose name holds ``probe``) and ``probed`` probed blocks wait for the
    decoders; set on the Dataset's own ``DataContext``."""
    ctx = ds.context
    policies = ctx.get_config(
        ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, ENABLED_BACKPRESSURE_POLICIES
    )
    if ListingRunAhead not in policies:
        ctx.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [*policies, ListingRunAhead])
    ctx.set_config(CONFIG_KEY, {"probe": probe, "listed": listed, "probed": probed})

"""The listing's split and the probe stay a bounded number of blocks ahead of the stages after them,
on a real stream (listing -> split -> a slow stage standing in for the probe -> one after it),
and the probe waits for the stream's actors to run before it goes further than one task."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pyarrow as pa
from ray import cloudpickle

from pipeline import stream_bounds
from pipeline.stream import split_blocks
from pipeline.stream_bounds import CONFIG_KEY, StreamBounds, bound_stream
from tests.pipeline.test_stream import _listing

# The stream's DataContext (holding the policy class below) travels to the workers, where this
# test module cannot be imported by name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

VIDEOS = 1200
BLOCK_ROWS = 32
LISTED, PROBED = 8, 2
LISTING_BLOCK_BYTES = 16 * 1024


def probe_stub(batch: pa.Table) -> pa.Table:
    time.sleep(0.05)  # slower than the listing: unbounded, the listing would run far ahead
    return batch


def decode_stub(batch: pa.Table) -> pa.Table:
    time.sleep(0.01)
    return batch


class Recording(StreamBounds):
    """The policy, noting the most blocks it saw waiting (it runs in this process)."""

    seen: dict[str, int] = {}

    def __init__(self, data_context, topology, resource_manager):
        super().__init__(data_context, topology, resource_manager)
        Recording.seen = {
            "listed": 0,
            "probed": 0,
            "block_stats_kept": 0,
            "blocks_made": 0,
        }

    def can_add_input(self, op) -> bool:
        if self.split is not None:
            seen = Recording.seen
            seen["listed"] = max(seen["listed"], self.waiting(self.split))
            seen["probed"] = max(seen["probed"], self.waiting(self.probe))
            for stage in self._topology:
                kept = len(getattr(stage, "_output_blocks_stats", ()))
                seen["block_stats_kept"] = max(seen["block_stats_kept"], kept)
                made = stage.metrics.num_outputs_taken
                seen["blocks_made"] = max(seen["blocks_made"], made)
        return super().can_add_input(op)


def _probed(folder: Path, output: Path, listed: int, probed: int, policy: type):
    """listing -> split -> probe stand-in, bounded by ``policy`` (a recording StreamBounds)."""
    import ray.data as rd
    from ray.data._internal.execution.backpressure_policy import (
        ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
    )

    ds = _listing(folder, output)
    ds.context.target_max_block_size = LISTING_BLOCK_BYTES  # many listing blocks, a few rows each
    bound_stream(ds, probe=probe_stub.__name__, listed=listed, probed=probed)
    policies = ds.context.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY)
    ds.context.set_config(
        ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
        [policy if p is StreamBounds else p for p in policies],
    )
    ds = split_blocks(ds, BLOCK_ROWS, num_cpus=0.05)
    return ds.map_batches(
        probe_stub,
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=0.1,
        compute=rd.TaskPoolStrategy(size=1),
    )


def _stream(folder: Path, output: Path, listed: int, probed: int):
    import ray.data as rd

    return _probed(folder, output, listed, probed, Recording).map_batches(
        decode_stub,
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=0.15,  # not fused with the stage before it
        compute=rd.TaskPoolStrategy(size=1),
    )


def _uris(ds) -> list[str]:
    batches = ds.iter_batches(batch_size=None, batch_format="pyarrow")
    return [u for b in batches for u in b.column("video_uri").to_pylist()]


def _archive(tmp_path: Path, videos: int = VIDEOS) -> Path:
    folder = tmp_path / "archive"
    folder.mkdir()
    for i in range(videos):
        (folder / f"v{i:05d}.mp4").write_bytes(b"\0")  # listed by name and size only
    return folder


def test_listing_and_probe_stay_a_bounded_number_of_blocks_ahead(
    ray_session, tmp_path, monkeypatch
):
    monkeypatch.setattr(stream_bounds, "BLOCK_STATS_KEPT", 5)
    folder = _archive(tmp_path)
    uris = _uris(_stream(folder, tmp_path / "out", LISTED, PROBED))
    assert sorted(uris) == sorted(str(p) for p in folder.iterdir())  # every video, once

    seen = Recording.seen
    # The split takes one listing block at a time, only while fewer than LISTED wait: at most
    # LISTED - 1 plus one listing block's worth of split blocks (16 KiB of rows here: a few).
    assert 0 < seen["listed"] < LISTED + 6
    # ... and the probe only while fewer than PROBED of its blocks wait (plus what the task in
    # flight when the bound was reached adds: its output may be cut into a few blocks).
    assert seen["probed"] <= PROBED + 3

    # Each stage kept the stats of its newest 5 blocks only (the split made dozens).
    assert seen["block_stats_kept"] == 5
    assert seen["blocks_made"] > 20


def test_without_the_bounds_the_listing_runs_ahead(ray_session, tmp_path):
    """The check above can fail: with limits too high to bind, the split runs far ahead."""
    folder = _archive(tmp_path, 2 * VIDEOS)  # 76 blocks: far more than the bounds above allow
    uris = _uris(_stream(folder, tmp_path / "out", 10**9, 10**9))
    assert len(uris) == 2 * VIDEOS
    assert Recording.seen["listed"] >= LISTED + 12


def test_the_policy_leaves_other_streams_alone(ray_session):
    import ray.data as rd

    ds = rd.range(10)
    assert ds.context.get_config(CONFIG_KEY, None) is None
    assert ds.map_batches(lambda b: b).count() == 10


def test_every_stage_of_a_bounded_stream_may_start_one_task_past_its_budget(ray_session):
    """Ray Data's allowance (an idle stage with input waiting starts one task its object-store
    budget refuses) is on for the job's stream only: ``bound_stream`` sets it on the Dataset's
    own context (measured effect on 2,000 videos: in pipeline/stream_bounds.py)."""
    import ray.data as rd

    ds = rd.range(10)
    bound_stream(ds, probe="probe_stub", listed=LISTED, probed=PROBED)
    assert ds.context.object_store_memory_pressure_fraction == stream_bounds.ONE_TASK_ALLOWANCE_FROM
    assert 0 < stream_bounds.ONE_TASK_ALLOWANCE_FROM <= 1e-6
    assert rd.range(10).context.object_store_memory_pressure_fraction is None
    assert rd.DataContext.get_current().object_store_memory_pressure_fraction is None


# The start-up hold: the stage after the probe is an actor pool whose actor takes seconds to
# construct (as the model actor does: torch, weights), standing in for the decoders and models.
ACTOR_START_S = 4.0


class SlowStartingStage:
    def __init__(self):
        time.sleep(ACTOR_START_S)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch


class StartupRecording(StreamBounds):
    """The policy, noting what it let the probe start before the actor pool had an actor running
    (Ray Data may still start a held stage when no task of the stream runs: its liveness rule)."""

    seen: dict[str, int] = {}

    def __init__(self, data_context, topology, resource_manager):
        super().__init__(data_context, topology, resource_manager)
        StartupRecording.seen = {"let_start": 0, "let_start_beside_split": 0, "pools": 0}

    def can_add_input(self, op) -> bool:
        allowed = super().can_add_input(op)
        if self.probe is not None and op is self.probe and not self.actors_running():
            seen = StartupRecording.seen
            seen["pools"] = len(self.pools)
            if allowed:
                seen["let_start"] = max(seen["let_start"], op.metrics.num_tasks_submitted + 1)
                seen["let_start_beside_split"] += int(self.split.num_active_tasks() > 0)
        return allowed


def _startup_stream(folder: Path, output: Path):
    import ray.data as rd

    return _probed(folder, output, LISTED, 16, StartupRecording).map_batches(
        SlowStartingStage,
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=0.15,
        compute=rd.ActorPoolStrategy(size=1),
    )


def test_the_probe_starts_one_task_until_the_actors_run(ray_session, tmp_path):
    folder = _archive(tmp_path, 640)  # 20 probe blocks: 1 s of probing, under the actor's start
    uris = _uris(_startup_stream(folder, tmp_path / "out"))
    assert sorted(uris) == sorted(str(p) for p in folder.iterdir())

    seen = StartupRecording.seen
    assert seen["pools"] == 1
    assert seen["let_start"] == stream_bounds.PROBE_TASKS_BEFORE_ACTORS == 1
    assert seen["let_start_beside_split"] == 0  # the first probe task waited for the split's


def test_without_the_hold_the_probe_runs_ahead_of_starting_actors(
    ray_session, tmp_path, monkeypatch
):
    """The check above can fail: unheld, the probe starts task after task meanwhile."""
    monkeypatch.setattr(stream_bounds, "PROBE_TASKS_BEFORE_ACTORS", 10**9)
    folder = _archive(tmp_path, 640)
    assert len(_uris(_startup_stream(folder, tmp_path / "out"))) == 640
    assert StartupRecording.seen["let_start"] >= 8

"""The job's Ray Data stream: listing -> probe -> decode -> models -> shard writer.

The listing reaches the probe in blocks of ``LISTING_BLOCK_ROWS`` videos (``split_blocks``), so
the first decode waits for a few probes only and several decode actors share a shard.

Every stage runs on the workers; what reaches the driver is the writer's status rows (a few
hundred bytes per segment), from which ``ShardTracker`` decides when a shard is complete.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pyarrow as pa

from pipeline.decode_stage import DecodeWorker
from pipeline.listing_source import ShardListingDatasource
from pipeline.model_stage import ModelWorker
from pipeline.models import infer_task
from pipeline.probe_stage import probe_block
from pipeline.resources import (
    LISTING_CPUS,
    PROBE_CPUS,
    SPLIT_CPUS,
    WRITER_CPUS,
    bound_memory,
    fit_resources,
    probes_in_flight,
    writers_in_flight,
)
from pipeline.shard_writer import write_parts
from pipeline.shards import ShardMarker
from pipeline.spec import JobSpec
from pipeline.stream_bounds import bound_stream

# Videos per probe task (and so about the segments per decode task): small, so the first
# segments reach the decoder early and several decode actors get work from one shard.
LISTING_BLOCK_ROWS = 32
# Split blocks that may wait for the probe: two shards' worth, so the probe never waits for the
# split and the driver does not hold a reference per 32 videos of the whole archive.
SHARDS_LISTED_AHEAD = 2
# Probed blocks that may wait per decode actor: enough to keep it busy, few enough that the
# probe's rows do not take the object-store budget the decoded clips need.
PROBED_BLOCKS_AHEAD = 4
# Model batches each writer task takes (one part file per task, model and shard).
WRITER_BATCHES = 4


def build_stream(
    spec: JobSpec,
    ray,
    *,
    job_id: str,
    run: str,
    markers: Mapping[int, ShardMarker],
    versions: Mapping[str, str],
):
    import ray.data as rd

    res = fit_resources(spec, ray)
    ds = rd.read_datasource(
        ShardListingDatasource(
            input_uri=spec.input,
            storage_options=spec.storage_options,
            shard_size=spec.shard_size,
            markers=markers,
            output=spec.output,
            run=run,
        ),
        num_cpus=LISTING_CPUS,
        override_num_blocks=1,
    )
    bound_memory(ds, spec)
    bound_stream(
        ds,
        probe=probe_block.__name__,
        listed=listing_blocks_ahead(spec.shard_size),
        probed=PROBED_BLOCKS_AHEAD * spec.decode.actors,
    )
    ds = split_blocks(ds, LISTING_BLOCK_ROWS, num_cpus=SPLIT_CPUS)
    ds = ds.map_batches(
        probe_block,
        fn_kwargs={
            "sampling": spec.sampling.model_dump(),
            "storage_options": spec.storage_options,
            "timeout_s": spec.decode.timeout_s,
            "isolated": spec.decode.isolation == "process",
        },
        batch_size=None,  # one task per block of the listing
        batch_format="pyarrow",
        num_cpus=PROBE_CPUS,
        compute=rd.TaskPoolStrategy(size=probes_in_flight(spec)),
    )
    ds = ds.flat_map(
        DecodeWorker,
        fn_constructor_kwargs={
            "sampling": spec.sampling.model_dump(),
            "decode": spec.decode.model_dump(),
            "storage_options": spec.storage_options,
            "want_packet_sizes": any(infer_task(m) == "enhance" for m in spec.models),
        },
        compute=rd.ActorPoolStrategy(size=spec.decode.actors),
        num_cpus=res.decode_cpus,
    )
    for i, model in enumerate(spec.models):
        ds = ds.map_batches(
            ModelWorker,
            fn_constructor_kwargs={
                "model": model.model_dump(),
                "output": spec.output,
                "storage_options": spec.storage_options,
                "tracking_uri": spec.mlflow.tracking_uri,
                "drop_frames": i == len(spec.models) - 1,
                "clip_shape": (spec.sampling.clip_len, *spec.sampling.size),
            },
            batch_size=model.batch_size,
            batch_format="pyarrow",
            compute=rd.ActorPoolStrategy(size=model.actors),
            num_cpus=res.model_cpus[i],
            num_gpus=res.model_gpus[i] or None,
        )
    return ds.map_batches(
        write_parts,
        fn_kwargs={
            "output": spec.output,
            "storage_options": spec.storage_options,
            "job_id": job_id,
            "models": [m.output_key for m in spec.models],
            "versions": dict(versions),
        },
        # A few model batches per writer task: every task costs the driver's scheduler the same
        # whatever its size, and the writer's rows are small (no frames).
        batch_size=WRITER_BATCHES * spec.models[-1].batch_size,
        batch_format="pyarrow",
        num_cpus=WRITER_CPUS,
        compute=rd.TaskPoolStrategy(size=writers_in_flight(spec)),
    )


def listing_blocks_ahead(shard_size: int) -> int:
    return SHARDS_LISTED_AHEAD * -(-shard_size // LISTING_BLOCK_ROWS)


def split_blocks(ds, rows: int, *, num_cpus: float):
    """``ds`` in blocks of ``rows`` rows (a streaming repartition), its tasks asking for
    ``num_cpus``.

    Ray Data merges what a read task yields into blocks of ``target_max_block_size`` bytes (here
    one model batch of decoded clips): thousands of listing rows. Unsplit, the whole listing of
    a 2,000-video archive was one probe task and then one decode task: the first clip waited for
    every probe (first clip 9.8 s against 6 s for 20 videos) and a second decode actor had
    nothing to do. ``Dataset.repartition(target_num_rows_per_block=...)`` cuts blocks by rows
    but its tasks ask for a whole CPU, which a 2-CPU node running the actor pools never has
    free (the stream deadlocks), and its API takes no resources; so the same logical operator is
    built here with a fraction of a CPU. Ray is pinned (pyproject.toml);
    ``tests/pipeline/test_stream.py`` checks the probe stage gets blocks of ``rows``.
    """
    from ray.data import Dataset
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators.map_operator import StreamingRepartition

    op = StreamingRepartition(
        target_num_rows_per_block=rows,
        input_dependencies=[ds._logical_plan.dag],
        strict=True,
        # No cap on the blocks a split task may yield ahead of the executor (Ray Data's default:
        # two): capped, the task stays alive until its whole input is taken, so the first probe
        # task found no idle worker and waited for a new worker process to start (1.6-2.0 s at
        # 2,000 videos against 0.35 s at 20, where the split task is done after one block).
        ray_remote_args={"num_cpus": num_cpus, "_generator_backpressure_num_objects": -1},
    )
    return Dataset._from_parent(ds, LogicalPlan(op, ds.context))


def iter_status(ds) -> Iterator[pa.Table]:
    """The status rows, a batch at a time, as the writers return them."""
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0)

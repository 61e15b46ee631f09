"""What each stage of a job's stream asks of the cluster: CPUs, GPUs and object-store memory."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.spec import JobSpec

# CPUs of the small stages: the listing read task, the listing's split into blocks, the probe
# tasks, the writer tasks and the shard commits. They are reserved first, so that actor pools
# sized to the cluster never leave them unschedulable (on a 2-CPU node that deadlocks the stream).
LISTING_CPUS = 0.1
SPLIT_CPUS = 0.05
PROBE_CPUS = 0.25
WRITER_CPUS = 0.1
COMMIT_CPUS = 0.1
SMALL_STAGES_CPUS = LISTING_CPUS + SPLIT_CPUS + PROBE_CPUS + WRITER_CPUS + COMMIT_CPUS
# Writer tasks (at least) and shard commits running at once; probe tasks: see
# ``probes_in_flight``. Their CPU requests are fractions, so without a cap Ray would run up to
# 1 / WRITER_CPUS of them per CPU, each in a worker process of its own that must start and
# import first: on a 2-CPU node, a storm of process start-ups.
WRITERS_IN_FLIGHT = 2
COMMITS_IN_FLIGHT = 2
# Actors Ray Data starts for a stream besides its actor pools: its stats actor, its actor
# location tracker and its autoscaling coordinator.
RAY_DATA_ACTORS = 3

# Model batches of decoded clips the object store may hold per model actor. Measured on the
# overlap benchmark's 249 clips (OpenVINO model, 2 cores): with 3 batches and one-clip blocks the
# model actor sat idle half the time (8.7 clips/s); with blocks of one batch and 8 batches of
# budget it is fed (14.7 clips/s, against 16 with no cap at all). The cap stays a constant of the
# job (about 80 MB for classify.toml), whatever the archive's size.
BATCHES_AHEAD = 8
# Blocks a running Ray Data task may hold in its output buffer (Ray Data's streaming-generator
# default): the decode stage needs this much room per actor to keep decoding.
_BLOCKS_PER_TASK = 2


@dataclass(frozen=True)
class StageResources:
    decode_cpus: float
    model_cpus: list[float]
    model_gpus: list[float]


def fit_resources(spec: JobSpec, ray) -> StageResources:
    """Per-actor CPU and GPU requests, scaled so every stage fits the cluster, and capped at the
    largest node's CPUs (an actor runs on one node). Torch threads still follow the spec's own
    ``num_cpus``."""
    total_cpu = float(ray.cluster_resources().get("CPU", 1))
    node_cpu = max(
        (float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")),
        default=total_cpu,
    )
    total_gpu = float(ray.cluster_resources().get("GPU", 0))
    decode = spec.decode.actors * spec.decode.num_cpus
    models = [m.actors * m.num_cpus for m in spec.models]
    budget = max(0.5, total_cpu - SMALL_STAGES_CPUS)
    scale = min(1.0, budget / max(1e-9, decode + sum(models)))
    gpus = [
        (m.num_gpus if m.num_gpus is not None else (1.0 if total_gpu >= 1 else 0.0))
        for m in spec.models
    ]

    def fit(cpus: float) -> float:
        return min(cpus * scale, max(0.1, node_cpu - SMALL_STAGES_CPUS))

    return StageResources(fit(spec.decode.num_cpus), [fit(m.num_cpus) for m in spec.models], gpus)


def probes_in_flight(spec: JobSpec) -> int:
    """Probe tasks running at once: one per decode actor, so probing keeps pace with decoding
    as a job's decoders are scaled out. A probe costs 0.4-1.5 ms of CPU per local video; on an
    object store it waits for a request: one GET per video (s3fs's first 5 MB block), counted
    on a moto server for files of 40 KB to 13 MB (7.4-16 ms a video there, on loopback). On a
    real store that is a request's latency plus the transfer of up to 5 MB, so one probe task
    at a time would feed a whole cluster some tens of videos a second."""
    return spec.decode.actors


def writers_in_flight(spec: JobSpec) -> int:
    """Writer tasks running at once: one per actor of the last model (each writes what that
    model's batches make), at least ``WRITERS_IN_FLIGHT``."""
    return max(WRITERS_IN_FLIGHT, spec.models[-1].actors)


def worker_processes(spec: JobSpec) -> int:
    """Ray worker processes a job's stream keeps busy at once on one node, at most: its actors,
    Ray Data's own, and the tasks of the listing, its split and the small stages in flight.

    A Ray node stops an idle worker process after a second once it has more workers than its
    ``num_workers_soft_limit`` (by default its CPU count), actors included. The stream's actors
    alone outnumber a 2-CPU node's CPUs, so a probe, writer or commit task that found its worker
    stopped since the last one started a new process and imported Ray Data again (about a second
    of CPU): 16.5-25.3 s of CPU in worker processes between tasks per 2,000 videos in three of
    five jobs, against 8.2-9.0 s in every job with this limit. A node that vmb starts keeps this
    many (``pipeline.job``); see the README for a cluster's nodes.
    """
    actors = spec.decode.actors + sum(m.actors for m in spec.models)
    tasks = 2 + probes_in_flight(spec) + writers_in_flight(spec) + COMMITS_IN_FLIGHT
    return actors + RAY_DATA_ACTORS + tasks


def clip_bytes(spec: JobSpec) -> int:
    """Bytes of one decoded clip: ``clip_len`` frames of (H, W, 3) uint8."""
    height, width = spec.sampling.size
    return spec.sampling.clip_len * height * width * 3


def block_clips(spec: JobSpec) -> int:
    """Clips per Ray Data block: one batch of the first model (blocks of single clips cost Ray
    Data a scheduling round trip per clip, which starved the model)."""
    return min(m.batch_size for m in spec.models)


def stream_memory_limit(spec: JobSpec) -> int:
    """Object-store bytes the streaming stages of ``spec`` may use: ``BATCHES_AHEAD`` batches of
    decoded clips per model actor (every model but the last passes the frames on, so each has
    such a queue in front of it) plus the output buffers of the running decode tasks."""
    clips = sum(BATCHES_AHEAD * m.actors * m.batch_size for m in spec.models)
    clips += _BLOCKS_PER_TASK * spec.decode.actors * block_clips(spec)
    return clips * clip_bytes(spec)


def bound_memory(ds, spec: JobSpec) -> None:
    """Cap the object store the job's stream may use, on the Dataset's own ``DataContext`` (a
    copy taken when ``ds`` was created), so no other Dataset or job in the process is affected.

    Left alone, Ray Data lets a decoder that outruns the model queue decoded clips up to half
    the object store, so memory grew with the archive. Blocks of one model batch let
    backpressure act batch by batch.
    """
    options = ds.context.execution_options
    limit = min(stream_memory_limit(spec), options.resource_limits.object_store_memory)
    options.resource_limits = options.resource_limits.copy(object_store_memory=limit)
    ds.context.target_max_block_size = clip_bytes(spec) * block_clips(spec)

"""``run_job(spec)``: a job's lifecycle, on the driver.

1. check what can be checked before Ray starts: models and weights, output access, job
   identity, and that the input lists at least one video (read up to its first video only);
2. start Ray and the MLflow run side by side; read the committed shard markers (resume);
3. run the stream (``pipeline.stream``): listing -> probe -> decode -> models -> shard writer,
   all on workers; the driver reads the writers' status rows and, as each shard completes,
   starts its commit (``pipeline.shard_commit``) as a Ray task;
4. summarise from the commits' counts; track the run; write ``_job.json``.

The driver holds state per open shard and per committed shard's counts, never per video of the
archive, and receives no frames, features or predictions.
"""

from __future__ import annotations

import logging
import os
import resource
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.archive import check_archive
from pipeline.driver_memory import release_free_memory
from pipeline.errors import UserError
from pipeline.listing_source import listing_report_uri
from pipeline.models import check_model_spec, check_weights
from pipeline.output import JobOutput, clips_file, marker_file, remove, videos_file
from pipeline.ray_logging import ray_init_kwargs
from pipeline.resources import COMMIT_CPUS, COMMITS_IN_FLIGHT, worker_processes
from pipeline.shard_commit import Relist, commit_shard
from pipeline.shard_tracker import ReadyShard, ShardTracker
from pipeline.shards import ShardMarker
from pipeline.spec import JobSpec
from pipeline.stream import build_stream, iter_status
from pipeline.throughput import ThroughputCurve
from pipeline.uris import redact, redact_uri

log = logging.getLogger(__name__)


class JobFailedError(RuntimeError):
    """The job ran but more videos failed than ``max_error_fraction`` allows."""


class OutputConflictError(UserError, ValueError):
    """The output URI holds the tables of a different job (other input, sampling, models or
    shard size)."""


@dataclass
class JobResult:
    """A finished job: its summary (``summary["videos_failed"]`` counts every failure) and the
    first ``FAILURES_KEPT`` failed videos with their errors (``failed``; all of them are rows
    of the ``videos`` table)."""

    job_id: str
    output: str
    run_id: str | None
    summary: dict[str, Any]
    failed: list[dict[str, Any]] = field(default_factory=list)
    tracking_error: str | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.summary.get("within_error_budget", True) else 1


def job_id_for(spec: JobSpec) -> str:
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in spec.name)[:40]
    return f"{slug}-{spec.fingerprint()[:10]}"


def validate(spec: JobSpec) -> JobOutput:
    """Every check that needs no Ray: models and weights, output access, job identity, input.

    Raises:
        ModelConfigError, OSError, OutputConflictError, ArchiveError.
    """
    for model in spec.models:
        check_model_spec(model)
        if model.weights:
            check_weights(model, spec.mlflow.tracking_uri)
    out = JobOutput(spec.output, spec.storage_options)
    try:
        out.check_writable()
    except (OSError, PermissionError, ValueError) as err:
        raise OSError(f"output {redact_uri(spec.output)} is not writable: {err}") from None
    previous = out.read_job()
    if previous and previous.get("fingerprint") not in (None, spec.fingerprint()):
        raise OutputConflictError(
            f"output {redact_uri(spec.output)} holds job {previous.get('job_id')} with a different "
            "input, sampling, model list or shard size; choose another output URI"
        )
    check_archive(spec.input, spec.storage_options)
    return out


def _init_ray(spec: JobSpec, address: str | None):
    import ray

    if ray.is_initialized():
        return ray
    address = address or spec.ray.address or os.environ.get("RAY_ADDRESS")
    logging_kwargs = ray_init_kwargs(verbose=logging.getLogger().isEnabledFor(logging.INFO))
    if address:
        ray.init(address=address, **logging_kwargs)
    else:
        # "local": start a fresh instance rather than join whatever cluster /tmp/ray points at
        ray.init(
            address="local",
            num_cpus=spec.ray.num_cpus,
            object_store_memory=spec.ray.object_store_memory,
            include_dashboard=False,
            _system_config=local_ray_config(spec, spec.ray.num_cpus),
            **logging_kwargs,
        )
    return ray


def local_ray_config(spec: JobSpec, num_cpus: int | None) -> dict[str, Any]:
    """Ray settings of a node started for ``spec``: it keeps an idle worker process while it
    has at most the stream's worker processes (``resources.worker_processes``), not only as
    many as CPUs."""
    cpus = num_cpus or os.cpu_count() or 1
    return {"num_workers_soft_limit": max(cpus, worker_processes(spec))}


def run_job(
    spec: JobSpec,
    *,
    spec_text: str | None = None,
    address: str | None = None,
    progress: bool = False,
) -> JobResult:
    """Run ``spec`` to completion; see the module docstring for the stages."""
    from pipeline.tracking import JobTracker, runtime_tags

    cpu_started, started = time.process_time(), time.time()
    out = validate(spec)
    startup = {"checks_s": time.time() - started}
    job_id = job_id_for(spec)
    tracker = (
        JobTracker(
            spec.mlflow.tracking_uri,
            spec.mlflow.experiment,
            spec.mlflow.run_name or job_id,
            fail_fast=spec.mlflow.fail_fast,
        )
        if spec.mlflow.enabled
        else None
    )
    # The MLflow run starts while Ray starts (each takes seconds), except with mlflow.fail_fast:
    # then an unreachable server fails the job before Ray starts.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmb-tracking") as pool:
        starting = (
            pool.submit(tracker.start, redact(spec.model_dump()), {"job_id": job_id})
            if tracker
            else None
        )
        if starting and spec.mlflow.fail_fast:
            starting.result()
        t_ray = time.time()
        try:
            ray = _init_ray(spec, address)
        except BaseException:
            if starting and starting.exception() is None:
                tracker.end("FAILED")
            raise
        startup["ray_start_s"] = time.time() - t_ray
        run_id = starting.result() if starting else None
        startup["ray_and_tracking_start_s"] = time.time() - t_ray
    if tracker:
        tracker.set_tags(runtime_tags())
    out.write_job(_job_doc(spec, job_id, run_id, started, None, None))
    try:
        result = _execute(
            spec,
            out,
            job_id,
            run_id,
            ray,
            started,
            cpu_started,
            progress,
            tracker,
            spec_text,
            startup,
        )
    except BaseException:
        if tracker:
            tracker.end("FAILED")
        raise
    if tracker:
        tracker.end("FINISHED" if result.exit_code == 0 else "FAILED")
        result.tracking_error = tracker.failed
    return result


def _job_doc(
    spec: JobSpec,
    job_id: str,
    run_id: str | None,
    started: float,
    ended: float | None,
    counts: dict[str, Any] | None,
) -> dict[str, Any]:
    from pipeline.tracking import runtime_tags

    return {
        "job_id": job_id,
        "fingerprint": spec.fingerprint(),
        "spec": redact(spec.model_dump()),
        "versions": {
            k.removeprefix("vmb.version."): v
            for k, v in runtime_tags().items()
            if k.startswith("vmb.version.")
        },
        "mlflow_run_id": run_id,
        "started": datetime.fromtimestamp(started, UTC).isoformat(),
        "ended": datetime.fromtimestamp(ended, UTC).isoformat() if ended else None,
        "counts": counts or {},
    }


# Failed videos the driver keeps with their messages (for ``JobResult.failed`` and the run's
# ``failed_videos.csv``); past that only their count by type. Every failure is a row of the
# ``videos`` table. Keeping them all made the driver's memory grow with the archive: a
# 1,000,000-row manifest of missing objects is a million failures.
FAILURES_KEPT = 1000


@dataclass
class _Totals:
    """What the commits of this run report, summed (no per-video state beyond the first
    ``FAILURES_KEPT`` failures)."""

    videos_processed: int = 0
    clips: int = 0
    decode_s: float = 0.0
    infer_s: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    videos_failed: int = 0
    failures_by_type: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    shards_committed: int = 0
    commit_nodes: Counter[str] = field(default_factory=Counter)

    def add(self, counts: dict[str, Any]) -> None:
        self.videos_processed += counts["videos_processed"]
        self.clips += counts["clips_new"]
        self.decode_s += counts["decode_s"]
        self.infer_s += counts["infer_s"]
        self.statuses.update(counts["statuses"])
        self.labels.update(counts["labels"])
        self.videos_failed += len(counts["failures"])
        self.failures_by_type.update(f["error_type"] for f in counts["failures"])
        self.failures.extend(counts["failures"][: max(0, FAILURES_KEPT - len(self.failures))])
        self.shards_committed += 1
        self.commit_nodes[counts["marker"]["node_id"]] += 1


class _Commits:
    """Shard commits in flight, as Ray tasks; their counts go into ``totals`` as they finish."""

    def __init__(self, spec: JobSpec, ray, totals: _Totals, run: str):
        self.spec, self.ray, self.totals, self.run = spec, ray, totals, run
        self.task = ray.remote(num_cpus=COMMIT_CPUS, max_retries=3, retry_exceptions=[OSError])(
            commit_shard
        )
        self.pending: list[Any] = []

    def submit(self, ready: ReadyShard, relist: bool = False) -> None:
        while len(self.pending) >= COMMITS_IN_FLIGHT:
            self.poll(wait_for_one=True)
        spec = self.spec
        self.pending.append(
            self.task.remote(
                run=self.run,
                output=spec.output,
                storage_options=spec.storage_options,
                index=ready.index,
                key=ready.key,
                parts=ready.parts,
                models=[m.output_key for m in spec.models],
                merge_with_committed=ready.merge_with_committed,
                incomplete=ready.incomplete,
                relist=Relist(spec.input, spec.storage_options, spec.shard_size)
                if relist
                else None,
            )
        )

    def poll(self, wait: bool = False, wait_for_one: bool = False) -> None:
        """Take the counts of finished commits: those done now, one (``wait_for_one``) or all
        (``wait``)."""
        if not self.pending:
            return
        done, self.pending = self.ray.wait(
            self.pending,
            num_returns=1 if wait_for_one else len(self.pending),
            timeout=None if wait or wait_for_one else 0,
        )
        for counts in self.ray.get(done):
            self.totals.add(counts)
        if done:
            release_free_memory()


def _remove_shards_beyond(
    out: JobOutput, markers: dict[int, ShardMarker], count: int, models: list[str]
) -> None:
    """Committed shards past the end of today's listing (the archive shrank): their videos are
    gone or in earlier shards now, so their files would repeat or keep stale rows."""
    for index in sorted(i for i in markers if i >= count):
        for uri in [clips_file(out.output, index, m) for m in models] + [
            videos_file(out.output, index),
            marker_file(out.output, index),
        ]:
            remove(uri, out.storage_options)


def _execute(
    spec: JobSpec,
    out: JobOutput,
    job_id: str,
    run_id: str | None,
    ray,
    started: float,
    cpu_started: float,
    progress: bool,
    tracker,
    spec_text: str | None,
    startup: dict[str, float],
) -> JobResult:
    import ray.data as rd

    if progress:  # our own bar counts clips; Ray Data's per-operator bars would interleave
        rd.DataContext.get_current().enable_progress_bars = False
    if not logging.getLogger().isEnabledFor(logging.INFO):  # its plan and timings: with -v only
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    markers = out.markers()
    run = uuid.uuid4().hex[:12]
    versions = {
        m.output_key: os.path.basename(m.weights) if m.weights else "builtin" for m in spec.models
    }
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="clip", desc=spec.name, dynamic_ncols=True)
    t_run = time.time()
    curve = ThroughputCurve()
    shards, totals = ShardTracker(), _Totals()
    commits = _Commits(spec, ray, totals, run)
    received = 0
    ds = build_stream(spec, ray, job_id=job_id, run=run, markers=markers, versions=versions)
    for status in iter_status(ds):
        received += status.nbytes
        before = shards.clips_seen
        for ready in shards.add(status):
            commits.submit(ready)
        commits.poll()
        curve.add(time.time() - t_run, shards.clips_seen)
        if bar is not None:
            bar.update(shards.clips_seen - before)
            bar.set_postfix(shards=totals.shards_committed, refresh=False)
    for ready in shards.close_all():
        log.error(
            "shard %d ended incomplete: %d video(s) short", ready.index, len(ready.incomplete)
        )
        commits.submit(ready, relist=True)
    commits.poll(wait=True)
    if bar is not None:
        bar.close()
    listing = out.read_json(listing_report_uri(spec.output, run)) or {}
    _remove_shards_beyond(
        out, markers, int(listing.get("shards", len(markers))), [m.output_key for m in spec.models]
    )
    out.remove_staging()

    ended = time.time()
    summary = _summarise(
        spec,
        job_id,
        run_id,
        listing,
        totals,
        shards,
        len(markers),
        received,
        started,
        cpu_started,
        t_run,
        ended,
    )
    summary["startup"] = {k: round(v, 3) for k, v in startup.items()}
    if tracker:
        metrics = {
            k: float(v)
            for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        metrics.update({f"failures_{k}": float(v) for k, v in summary["failures_by_type"].items()})
        tracker.log_metrics(metrics)
        tracker.log_artifacts(
            spec_text or "", summary, totals.failures, curve.samples(), dict(totals.labels)
        )
    out.write_job(_job_doc(spec, job_id, run_id, started, ended, summary))
    return JobResult(job_id, spec.output, run_id, summary, totals.failures)


def _summarise(
    spec: JobSpec,
    job_id: str,
    run_id: str | None,
    listing: dict[str, Any],
    totals: _Totals,
    shards: ShardTracker,
    markers: int,
    received: int,
    started: float,
    cpu_started: float,
    t_run: float,
    ended: float,
) -> dict[str, Any]:
    wall = max(1e-9, ended - t_run)
    done = totals.videos_processed
    fraction = totals.videos_failed / max(1, done)
    return {
        "job_id": job_id,
        "output": redact_uri(spec.output),
        "mlflow_run_id": run_id,
        "videos": int(listing.get("videos", done)),
        "videos_processed": done,
        "videos_ok": totals.statuses.get("ok", 0),
        "videos_failed": totals.videos_failed,
        "videos_skipped": totals.statuses.get("skipped", 0),
        "videos_by_status": dict(totals.statuses),
        "failures_by_type": dict(totals.failures_by_type),
        "skipped_files": dict(listing.get("skipped_files", {})),
        "clips": totals.clips,
        "segments": shards.segments_done,
        "frames_decoded": shards.clips_seen * spec.sampling.clip_len,
        "decode_s": totals.decode_s,
        "infer_s": totals.infer_s,
        "shards": int(listing.get("shards", 0)),
        "shards_committed": totals.shards_committed,
        "shard_markers_found": markers,
        "resumed_videos_skipped": int(listing.get("resumed_videos", 0)),
        "resumed_shards_skipped": int(listing.get("resumed_shards", 0)),
        "commit_nodes": dict(totals.commit_nodes),
        "wall_s": ended - started,
        "run_s": wall,
        # None when this run wrote no clip (every video resumed or failed).
        "first_clip_s": None if shards.first_clip_at is None else shards.first_clip_at - t_run,
        "videos_per_s": done / wall,
        "clips_per_s": totals.clips / wall,
        "driver_cpu_s": time.process_time() - cpu_started,
        "driver_received_bytes": received,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "error_fraction": fraction,
        "within_error_budget": fraction <= spec.max_error_fraction,
    }

"""``run_job(spec)``: the main job, end to end.

1. validate everything that can be checked before Ray starts (models, weights, output access);
2. list the archive on the driver; resume: skip what earlier runs of the same job published;
3. probe videos (Ray tasks), plan clips, fan long videos out into segment tasks;
4. stream segments through decode actors and one actor pool per model (Ray Data);
5. publish each finished segment and video atomically; track the run in MLflow.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from pipeline import errors
from pipeline.archive import list_archive
from pipeline.model_runners import check_model_spec, check_weights, infer_task
from pipeline.records import SegmentTask, VideoProbe, VideoTask
from pipeline.sampling import plan_clips, split_segments
from pipeline.sink import TableSink
from pipeline.spec import JobSpec
from pipeline.uris import redact, redact_uri
from pipeline.workers import RESULT_PREFIX, DecodeWorker, ModelWorker, error_fields, probe_row

log = logging.getLogger(__name__)


class JobFailedError(RuntimeError):
    """The job ran but more videos failed than ``max_error_fraction`` allows."""


class OutputConflictError(ValueError):
    """The output URI holds the tables of a different job (other input, sampling or models)."""


@dataclass
class JobResult:
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


@dataclass
class _VideoState:
    task: VideoTask
    probe: VideoProbe | None = None
    num_segments: int = 0
    segments_done: set[int] = field(default_factory=set)
    num_clips: int = 0
    decode_s: float = 0.0
    infer_s: float = 0.0
    error: dict[str, str] | None = None


@dataclass
class _Segment:
    expected: int
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # clip_index -> row
    error: dict[str, str] | None = None


class _Collector:
    """Driver side: gathers clip rows per segment and publishes complete segments and videos."""

    def __init__(self, spec: JobSpec, job_id: str, sink: TableSink, videos: dict[str, _VideoState],
                 on_clips: Callable[[int], None]):
        self.spec, self.job_id, self.sink, self.videos = spec, job_id, sink, videos
        self.finished: list[dict[str, str]] = []  # one entry per published videos row
        self.keys = [m.output_key for m in spec.models]
        self.versions: dict[str, str] = {}
        self.pending: dict[tuple[str, int], _Segment] = {}
        self.closed: set[tuple[str, int]] = set()
        self.on_clips = on_clips
        self.clips_written = 0
        self.frames_decoded = 0
        self.label_counts: Counter[str] = Counter()
        self.decode_s = 0.0
        self.infer_s = 0.0
        self.first_row_at: float | None = None  # when the first clip came out of the models

    def add(self, row: dict[str, Any]) -> None:
        """Take one row from the last stage. Retried tasks may repeat rows: clips are keyed by
        index, and rows of an already published segment are ignored."""
        if self.first_row_at is None:
            self.first_row_at = time.time()
        key = (str(row["video_id"]), int(row["segment_index"]))
        if key in self.closed:
            return
        seg = self.pending.setdefault(key, _Segment(expected=int(row["clips_in_segment"])))
        state = self.videos[key[0]]
        state.decode_s += float(row["decode_s"])
        self.decode_s += float(row["decode_s"])
        if not row["ok"]:
            seg.error = {k: str(row[k]) for k in ("status", "error_type", "error_message")}
            seg.expected = int(row.get("emitted_before_error") or 0)
        elif int(row["clip_index"]) not in seg.rows:
            seg.rows[int(row["clip_index"])] = row
            self.frames_decoded += len(row["frame_indices"])
            for k in self.keys:
                state.infer_s += float(row[f"infer_s:{k}"])
                self.infer_s += float(row[f"infer_s:{k}"])
        if len(seg.rows) >= seg.expected:
            self._finish_segment(key, seg)

    def _finish_segment(self, key: tuple[str, int], seg: _Segment) -> None:
        import pickle

        del self.pending[key]
        self.closed.add(key)
        state = self.videos[key[0]]
        if seg.error:
            state.error = state.error or seg.error
        else:
            for model in self.spec.models:
                k = model.output_key
                out_rows = []
                for r in seg.rows.values():
                    res = pickle.loads(r[RESULT_PREFIX + k])
                    if isinstance(res, dict):  # the model failed on this clip's batch
                        state.error = state.error or {"status": "error", "error_type": "ModelError",
                                                      "error_message": res["model_error"][:2000]}
                        out_rows = None
                        break
                    out_rows.append(self._clip_row(r, k, res))
                    if res.labels:
                        self.label_counts[res.labels[0]] += 1
                if out_rows is not None:
                    self.sink.write_segment(key[0], key[1], k, out_rows)
            state.num_clips += len(seg.rows)
            self.clips_written += len(seg.rows)
        state.segments_done.add(key[1])
        self.on_clips(len(seg.rows))
        if len(state.segments_done) >= state.num_segments:
            self.finish_video(state)

    def _clip_row(self, r: dict[str, Any], key: str, res) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "video_id": str(r["video_id"]),
            "video_uri": redact_uri(str(r["video_uri"])),
            "clip_index": int(r["clip_index"]), "start_frame": int(r["start_frame"]),
            "end_frame": int(r["end_frame"]), "start_s": float(r["start_s"]), "end_s": float(r["end_s"]),
            "model": key, "model_version": self.versions.get(key, ""),
            "labels": list(res.labels), "scores": [float(s) for s in res.scores],
            "feature": res.feature, "metrics": dict(res.metrics), "media_uri": res.media_uri,
        }

    def finish_video(self, state: _VideoState) -> None:
        p = state.probe
        err = redact(state.error or {})  # messages may quote a URI with its credentials
        video_uri = redact_uri(state.task.video_uri)
        self.sink.write_video({
            "video_id": state.task.video_id, "video_uri": video_uri,
            "bytes": state.task.size,
            "duration_s": p.duration_s if p else None, "fps": p.fps if p else None,
            "num_frames": p.num_frames if p else None, "width": p.width if p else None,
            "height": p.height if p else None, "codec": p.codec if p else None,
            "num_clips": state.num_clips, "status": err.get("status", "ok"),
            "error_type": err.get("error_type") or None, "error_message": err.get("error_message") or None,
            "decode_s": state.decode_s, "infer_s": state.infer_s,
        })
        self.videos.pop(state.task.video_id, None)
        self.finished.append(err | {"video_id": state.task.video_id, "video_uri": video_uri})


def _init_ray(spec: JobSpec, address: str | None):
    import ray

    if ray.is_initialized():
        return ray
    address = address or spec.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # "local": start a fresh instance rather than join whatever cluster /tmp/ray points at
        ray.init(address="local", num_cpus=spec.ray.num_cpus,
                 object_store_memory=spec.ray.object_store_memory,
                 include_dashboard=False, log_to_driver=False)
    return ray


def _resources(spec: JobSpec, ray) -> tuple[float, list[float], list[float]]:
    """Per-actor CPU and GPU requests, scaled so every stage fits the cluster (a 2-CPU node
    deadlocks when actor pools reserve every CPU and the probe tasks cannot be scheduled), and
    capped at the largest node's CPUs (an actor runs on one node). Torch threads still follow
    the spec's own ``num_cpus``."""
    total_cpu = float(ray.cluster_resources().get("CPU", 1))
    node_cpu = max((float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")),
                   default=total_cpu)
    total_gpu = float(ray.cluster_resources().get("GPU", 0))
    decode = spec.decode.actors * spec.decode.num_cpus
    models = [m.actors * m.num_cpus for m in spec.models]
    budget = max(0.5, total_cpu - 0.25)
    scale = min(1.0, budget / max(1e-9, decode + sum(models)))
    gpus = [(m.num_gpus if m.num_gpus is not None else (1.0 if total_gpu >= 1 else 0.0)) for m in spec.models]
    def fit(cpus: float) -> float:
        return min(cpus * scale, max(0.1, node_cpu - 0.25))

    return fit(spec.decode.num_cpus), [fit(m.num_cpus) for m in spec.models], gpus


def validate(spec: JobSpec) -> TableSink:
    """Every check that needs no Ray: models and weights, output access, job identity."""
    for model in spec.models:
        check_model_spec(model)
        if model.weights:
            check_weights(model, spec.mlflow.tracking_uri)
    sink = TableSink(spec.output, spec.storage_options)
    try:
        sink.check_writable()
    except (OSError, PermissionError, ValueError) as err:
        raise OSError(f"output {redact_uri(spec.output)} is not writable: {err}") from None
    previous = sink.read_job()
    if previous and previous.get("fingerprint") not in (None, spec.fingerprint()):
        raise OutputConflictError(
            f"output {redact_uri(spec.output)} holds job {previous.get('job_id')} with a different "
            "input, sampling or model list; choose another output URI")
    return sink


def run_job(spec: JobSpec, *, spec_text: str | None = None, address: str | None = None,
            progress: bool = False) -> JobResult:
    """Run ``spec`` to completion; see the module docstring for the stages."""
    from pipeline.tracking import JobTracker, runtime_tags

    started = time.time()
    sink = validate(spec)
    listing = list_archive(spec.input, spec.storage_options)
    job_id = job_id_for(spec)
    tracker = JobTracker(spec.mlflow.tracking_uri, spec.mlflow.experiment,
                         spec.mlflow.run_name or job_id, fail_fast=spec.mlflow.fail_fast) \
        if spec.mlflow.enabled else None
    # The MLflow run starts while Ray starts (each takes seconds), except with mlflow.fail_fast:
    # then an unreachable server fails the job before Ray starts.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmb-tracking") as pool:
        starting = pool.submit(tracker.start, redact(spec.model_dump()), {"job_id": job_id}) \
            if tracker else None
        if starting and spec.mlflow.fail_fast:
            starting.result()
        try:
            ray = _init_ray(spec, address)
        except BaseException:
            if starting and starting.exception() is None:
                tracker.end("FAILED")
            raise
        run_id = starting.result() if starting else None
    if tracker:
        tracker.set_tags(runtime_tags())
    sink.write_job(_job_doc(spec, job_id, run_id, started, None, None))
    try:
        result = _execute(spec, sink, listing, job_id, run_id, ray, started, progress, tracker, spec_text)
    except BaseException:
        if tracker:
            tracker.end("FAILED")
        raise
    if tracker:
        tracker.end("FINISHED" if result.exit_code == 0 else "FAILED")
        result.tracking_error = tracker.failed
    return result


def _job_doc(spec: JobSpec, job_id: str, run_id: str | None, started: float, ended: float | None,
             counts: dict[str, Any] | None) -> dict[str, Any]:
    from pipeline.tracking import runtime_tags

    return {
        "job_id": job_id, "fingerprint": spec.fingerprint(), "spec": redact(spec.model_dump()),
        "versions": {k.removeprefix("vmb.version."): v for k, v in runtime_tags().items()
                     if k.startswith("vmb.version.")},
        "mlflow_run_id": run_id,
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "ended": datetime.fromtimestamp(ended, timezone.utc).isoformat() if ended else None,
        "counts": counts or {},
    }


@dataclass
class _Plan:
    """What a run has to do, after probing and resuming."""

    segments: list[SegmentTask] = field(default_factory=list)
    probes: dict[str, VideoProbe] = field(default_factory=dict)
    ready: list[_VideoState] = field(default_factory=list)  # nothing left to decode
    resumed_segments: int = 0


def _probe_all(rows: list[dict[str, Any]], storage_options: dict[str, Any]) -> list[dict[str, Any]]:
    """Probe every video in Ray tasks, one per video, in parallel across the cluster.

    A probe reads a header (milliseconds), so these are plain tasks: a Ray Data pipeline costs
    seconds of start-up for the same work. A worker that dies on a file (a crashing demuxer) is
    retried once, then the video is recorded as ``WorkerCrash``; an unexpected exception in the
    probe is recorded under its own type. Neither stops the job.
    """
    import ray
    from ray.exceptions import RayTaskError

    probe = ray.remote(num_cpus=0.25, max_retries=1, retry_exceptions=False)(probe_row)
    refs = [probe.remote(row, storage_options) for row in rows]
    out = []
    for row, ref in zip(rows, refs):
        try:
            out.append(ray.get(ref))
            continue
        except RayTaskError as err:
            failed = err.cause if isinstance(getattr(err, "cause", None), BaseException) else err
        except ray.exceptions.RayError as err:  # the worker process died
            failed = errors.WorkerCrashError(f"the probe worker died on this file: {err}")
        out.append({"task": json.dumps(VideoTask.from_row(row).to_row()), "probe": "",
                    **error_fields(failed)})
    return out


def _plan(spec: JobSpec, videos: dict[str, _VideoState], published: set[tuple[str, int, str]],
          file_keys: list[str]) -> _Plan:
    """Probe the videos to do (Ray tasks), plan their clips and segments, skip published ones."""
    plan = _Plan()
    if not videos:
        return plan
    for row in _probe_all([vs.task.to_row() for vs in videos.values()], spec.storage_options):
        task = VideoTask.from_row(json.loads(row["task"]))
        vs = videos[task.video_id]
        if row["status"] != "ok":
            vs.error = {k: row[k] for k in ("status", "error_type", "error_message")}
            plan.ready.append(vs)
            continue
        vs.probe = plan.probes[task.video_id] = VideoProbe(**json.loads(row["probe"]))
        try:
            clips = plan_clips(vs.probe.num_frames, vs.probe.fps, spec.sampling)
        except errors.VideoError as err:
            vs.error = {"status": err.status, "error_type": err.error_type, "error_message": str(err)}
            plan.ready.append(vs)
            continue
        groups = split_segments(clips, vs.probe.fps, spec.sampling.segment_s)
        vs.num_segments = len(groups)
        for i, group in enumerate(groups):
            if all((task.video_id, i, fk) in published for fk in file_keys):
                vs.segments_done.add(i)
                vs.num_clips += len(group)
                plan.resumed_segments += 1
            else:
                plan.segments.append(SegmentTask(task, i, len(groups), tuple(group)))
        if len(vs.segments_done) == vs.num_segments:
            plan.ready.append(vs)
    return plan


# Model batches of decoded clips the object store may hold per model actor. Measured on the
# overlap benchmark's 249 clips (OpenVINO model, 2 cores): with 3 batches and one-clip blocks the
# model actor sat idle half the time (8.7 clips/s); with blocks of one batch and 8 batches of
# budget it is fed (14.7 clips/s, against 16 with no cap at all). The cap stays a constant of the
# job (about 80 MB for classify.toml), whatever the archive's size.
BATCHES_AHEAD = 8
# Blocks a running Ray Data task may hold in its output buffer (Ray Data's streaming-generator
# default): the decode stage needs this much room per actor to keep decoding.
_BLOCKS_PER_TASK = 2


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


def _bound_memory(ds, spec: JobSpec) -> None:
    """Cap the object store the job's stream may use, on the Dataset's own ``DataContext`` (a
    copy taken when ``ds`` was created), so no other Dataset or job in the process is affected.

    Left alone, Ray Data lets a decoder that outruns the model queue decoded clips up to half
    the object store, so memory grew with the archive. Blocks of one model batch let
    backpressure act batch by batch; with Ray Data's default 128 MiB blocks a long segment would
    move ~100 clips (224x224, 8 frames) at a time, more than the whole cap.
    """
    options = ds.context.execution_options
    limit = min(stream_memory_limit(spec), options.resource_limits.object_store_memory)
    options.resource_limits = options.resource_limits.copy(object_store_memory=limit)
    ds.context.target_max_block_size = clip_bytes(spec) * block_clips(spec)


def _stream(spec: JobSpec, plan: _Plan, ray, collector: _Collector) -> None:
    """Decode actors → one actor pool per model (Ray Data streaming) → the collector."""
    import ray.data as rd

    decode_cpus, model_cpus, model_gpus = _resources(spec, ray)
    want_sizes = any(infer_task(m) == "enhance" for m in spec.models)
    ds = rd.from_items(
        [{"segment": json.dumps(s.to_row()), "probe": json.dumps(plan.probes[s.video.video_id].__dict__)}
         for s in plan.segments],
        override_num_blocks=len(plan.segments),
    )
    _bound_memory(ds, spec)
    ds = ds.flat_map(
        DecodeWorker,
        fn_constructor_kwargs={"sampling": spec.sampling.model_dump(), "decode": spec.decode.model_dump(),
                               "storage_options": spec.storage_options, "want_packet_sizes": want_sizes},
        compute=rd.ActorPoolStrategy(size=spec.decode.actors), num_cpus=decode_cpus,
    )
    for i, model in enumerate(spec.models):
        ds = ds.map_batches(
            ModelWorker,
            fn_constructor_kwargs={"model": model.model_dump(), "output": spec.output,
                                   "storage_options": spec.storage_options,
                                   "tracking_uri": spec.mlflow.tracking_uri,
                                   "drop_frames": i == len(spec.models) - 1,
                                   "clip_shape": (spec.sampling.clip_len, *spec.sampling.size)},
            batch_size=model.batch_size, batch_format="numpy",
            compute=rd.ActorPoolStrategy(size=model.actors),
            num_cpus=model_cpus[i], num_gpus=model_gpus[i] or None,
        )
    for row in ds.iter_rows():
        collector.add(row)


def _close_open_videos(collector: _Collector, videos: dict[str, _VideoState]) -> None:
    """Publish the rows of videos still open after the stream ended."""
    for vs in list(videos.values()):
        if vs.num_segments and len(vs.segments_done) >= vs.num_segments:
            collector.finish_video(vs)  # segments published earlier, row not (a crash between)
    for vs in list(videos.values()):  # rows lost on the way: record it, never drop the video
        missing = vs.num_segments - len(vs.segments_done)
        vs.error = vs.error or {"status": "error", "error_type": "Incomplete",
                                "error_message": f"{missing} of {vs.num_segments} segments never "
                                                 "came back from the workers"}
        log.error("video %s incomplete: %s", redact_uri(vs.task.video_uri), vs.error["error_message"])
        collector.finish_video(vs)


def _summarise(spec: JobSpec, job_id: str, run_id: str | None, listing, collector: _Collector,
               resumed_videos: int, resumed_segments: int, started: float, t_run: float,
               ended: float) -> dict[str, Any]:
    done = collector.finished
    statuses = Counter(d.get("status", "ok") for d in done)
    failures = [d for d in done if d.get("status", "ok") in ("error", "timeout")]
    wall = max(1e-9, ended - t_run)
    fraction = len(failures) / max(1, len(done))
    return {
        "job_id": job_id, "output": redact_uri(spec.output), "mlflow_run_id": run_id,
        "videos": len(listing.tasks), "videos_processed": len(done),
        "videos_ok": statuses.get("ok", 0), "videos_failed": len(failures),
        "videos_skipped": statuses.get("skipped", 0),
        "videos_by_status": dict(statuses),
        "failures_by_type": dict(Counter(d.get("error_type") for d in failures)),
        "skipped_files": dict(listing.skipped),
        "clips": collector.clips_written, "frames_decoded": collector.frames_decoded,
        "decode_s": collector.decode_s, "infer_s": collector.infer_s,
        "resumed_videos_skipped": resumed_videos, "resumed_segments_skipped": resumed_segments,
        "wall_s": ended - started, "run_s": wall,
        "first_clip_s": (collector.first_row_at or ended) - t_run,
        "videos_per_s": len(done) / wall, "clips_per_s": collector.clips_written / wall,
        "error_fraction": fraction, "within_error_budget": fraction <= spec.max_error_fraction,
    }


def _execute(spec, sink, listing, job_id, run_id, ray, started, progress, tracker, spec_text) -> JobResult:
    import ray.data as rd

    from pipeline.media import safe_path_segment

    if progress:  # our own bar counts clips; Ray Data's per-operator bars and logs would interleave
        rd.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    state = sink.state()
    todo = [t for t in listing.tasks if t.video_id not in state.videos]
    videos: dict[str, _VideoState] = {t.video_id: _VideoState(t) for t in todo}
    plan = _plan(spec, videos, state.segments, [safe_path_segment(m.output_key) for m in spec.models])

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(s.clips) for s in plan.segments), unit="clip", desc=spec.name,
                   dynamic_ncols=True)
    timeline: list[tuple[float, int]] = [(0.0, 0)]
    t_run = time.time()

    def on_clips(n: int) -> None:
        if bar is not None:
            bar.update(n)
        timeline.append((time.time() - t_run, timeline[-1][1] + n))

    collector = _Collector(spec, job_id, sink, videos, on_clips)
    for model in spec.models:
        collector.versions[model.output_key] = os.path.basename(model.weights) if model.weights else "builtin"
    for vs in plan.ready:
        collector.finish_video(vs)
    if plan.segments:
        _stream(spec, plan, ray, collector)
    if bar is not None:
        bar.close()
    _close_open_videos(collector, videos)

    ended = time.time()
    summary = _summarise(spec, job_id, run_id, listing, collector, len(listing.tasks) - len(todo),
                         plan.resumed_segments, started, t_run, ended)
    failures = [d for d in collector.finished if d.get("status", "ok") in ("error", "timeout")]
    if tracker:
        metrics = {k: float(v) for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics.update({f"failures_{k}": float(v) for k, v in summary["failures_by_type"].items()})
        tracker.log_metrics(metrics)
        tracker.log_artifacts(spec_text or "", summary, failures, timeline, dict(collector.label_counts))
    sink.write_job(_job_doc(spec, job_id, run_id, started, ended, summary))
    return JobResult(job_id, spec.output, run_id, summary, failures)

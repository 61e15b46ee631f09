"""7. Archive scale: what a job costs per video when the archive has thousands to millions of them.

The classify job (``jobs/classify.toml``, decoded at 112x112) runs over archives of short videos:
2 s at 180p, 50 frames, so the classify sampling (8 frames every 4th, span 29) cuts exactly one
clip per video. Six distinct encodes sit behind every archive; each video is a hard link under
its own name in nested folders (``inputs.many_names_archive``), so the pipeline sees distinct
videos while the disk holds six files.

Every job runs in a fresh child process (``python -m bench.archive_bench job ...``) that
starts Ray first and then times ``pipeline.job.run_job`` alone, so interpreter start-up,
imports and Ray start-up are not counted. What it records:

- **videos/s** over ``run_job`` (listing, probing, decode, models, writing) against
  min(decode only, model only) on the same files: decode only is ``probe_video`` +
  ``open_reader`` + ``iter_clips`` (the decode actor's code path) in one process, one decoder
  thread; model only is the model runner the model actor builds, over the decoded clips, in
  the job's batch size. Both over an evenly spaced sample of the largest archive's videos
  (every video up to ``BOUND_SAMPLE``): the videos are six encodes repeated, so the rate per
  video is the archive's. The bounds are measured before the first job and after the last and
  averaged (wall-clock rates move with the load of a shared machine; each row records its
  load). Target >= 0.85.
- **data files per 1,000 videos per model**: ``*.parquet`` under ``clips/`` and ``videos/``
  (target <= 2: one of each per shard of 1,000).
- **driver CPU seconds per 1,000 videos**: ``time.process_time()`` of the child (every thread of
  the driver process) around ``run_job``; the job summary's ``driver_cpu_s`` is shown beside
  it when the pipeline reports one (target <= 2 s). Also the marginal cost between the
  smallest and the largest archive, which leaves out per-job fixed costs.
- **time to the first clip** from ``run_job``'s start: the summary's ``first_clip_s`` (counted
  from when the stream starts) plus what came before the stream (``wall_s - run_s``); at N
  videos against at 20 (target <= 1.2x). Also when the first ``clips/`` file appeared.
- **driver peak RSS** (``VmHWM`` of the child) and the **bytes the driver receives**: what
  it iterates out of Ray Data (``Dataset.iter_rows`` / ``iter_batches``, counted by a wrapper
  in the child), per clip.

Then:

- **manifest**: a ``.txt`` manifest of 1,000 rows against one of 1,000,000 (opt-in:
  ``--manifest-rows 1000000``) whose first 1,000 rows are the short one; the first 20 rows name
  real videos, the rest missing objects (``inputs.manifest``). Driver peak RSS ratio (target
  <= 1.2x) and time to the first clip. A job that does not finish within ``--archive-timeout``
  is stopped; its row then shows what was reached by then.
- **multi-node**: a ``ray.cluster_utils.Cluster`` on this machine (a head with 0 CPUs, two
  worker nodes with 1 CPU each) runs a small job; reported: the nodes, the writer node of each
  shard (``node_id`` in ``_shards/*.json``, where the pipeline writes shard markers) and the
  driver's received bytes per clip.
- **query**: ``pipeline.query.query`` (``count(*)`` and a group-by) over the largest archive's
  output as the job wrote it, against the same rows rewritten one file per video per table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import inputs
from bench.common import (
    CACHE,
    REPO,
    Settings,
    interleaved,
    log,
    machine,
    median,
    psutil,
    save,
    subprocess_env,
)

JOB = REPO / "jobs" / "classify.toml"
# Seconds between two samples of the job's processes' CPU (from the bench's process).
CPU_SAMPLE_S = 0.5
SIZE = 112
BASE_VIDEOS = 20  # first-clip time and manifest prefix are compared against this archive
BOUND_SAMPLE = 500  # videos decoded (and clips classified) for the decode-only / model-only bounds
FULL_SIZES = (2000, 20000)
QUICK_SIZES = (40,)
MULTINODE_VIDEOS = {True: 20, False: 200}
# A scale job may run past --archive-timeout (meant for the manifests): it gets this much per
# video at least (today's code runs about 10 videos/s here; 20,000 videos get 100 minutes).
SCALE_S_PER_VIDEO = 0.3
QUERIES = {
    "count(*)": "select count(*) as n from clips",
    "group by top-1 label": (
        "select labels[1] as label, count(*) as n, avg(scores[1]) as score "
        "from clips group by 1 order by 2 desc"
    ),
}


def overrides(archive: Path, output: Path) -> list[str]:
    """``--set`` overrides on top of jobs/classify.toml (what ``vmb run`` would be given)."""
    return [
        f'input="{archive}"',
        f'output="{output}"',
        f"sampling.size={SIZE}",
        "max_error_fraction=1.0",
        "mlflow.enabled=false",
    ]


def load_job(archive: Path, output: Path):
    from pipeline.spec import load_spec

    return load_spec(JOB, overrides(archive, output))[0]


# The child: one job in a fresh process ------------------------------------------------------------


def _max_rss() -> int:
    """Peak resident set size of this process, in bytes.

    ``VmHWM`` of ``/proc/self/status``, not ``ru_maxrss``: Linux carries ``ru_maxrss`` across
    ``execve``, so a child forked from the (large) bench process starts with the bench's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _nbytes(x: Any) -> int:
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            return sum(_nbytes(v) for v in x.ravel())
        return int(x.nbytes)
    if isinstance(x, (bytes, bytearray, memoryview)):
        return len(x)
    if isinstance(x, str):
        return len(x.encode())
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(v) for v in x)
    if hasattr(x, "nbytes"):  # pyarrow tables and arrays
        return int(x.nbytes)
    if hasattr(x, "memory_usage"):  # pandas
        return int(x.memory_usage(deep=True).sum())
    if hasattr(x, "as_pydict"):
        return _nbytes(x.as_pydict())
    if hasattr(x, "keys") and hasattr(x, "__getitem__"):  # Ray Data rows
        return sum(_nbytes(x[k]) for k in x)
    return 8


class DriverRows:
    """Counts what the driver pulls out of Ray Data: ``Dataset.iter_rows`` / ``iter_batches``
    are wrapped for the life of the child (both are thin shells over ``DataIterator``, so
    nothing is counted twice)."""

    def __init__(self) -> None:
        import ray.data

        self.bytes = 0
        self.items = 0
        for name in ("iter_rows", "iter_batches"):
            setattr(ray.data.Dataset, name, self._wrap(getattr(ray.data.Dataset, name)))

    def _wrap(self, method):
        counter = self

        def wrapped(self, *args, **kwargs):
            for item in method(self, *args, **kwargs):
                counter.bytes += _nbytes(item)
                counter.items += 1
                yield item

        wrapped.__wrapped__ = method
        return wrapped


def data_files(output: Path) -> dict[str, int]:
    """Parquet files a reader of each table sees (hidden and in-flight names excluded)."""
    out = {}
    for table in ("clips", "videos"):
        out[table] = sum(
            1
            for p in (output / table).rglob("*.parquet")
            if not any(part.startswith(("_", ".")) for part in p.relative_to(output / table).parts)
        )
    return out


def shard_nodes(output: Path) -> dict[str, Any]:
    """Writer nodes named by the shard markers, where the pipeline writes them."""
    markers = sorted((output / "_shards").glob("*.json")) if (output / "_shards").is_dir() else []
    nodes: dict[str, int] = {}
    for m in markers:
        try:
            node = json.loads(m.read_text()).get("node_id")
        except (OSError, ValueError):
            node = None
        if node:
            nodes[str(node)] = nodes.get(str(node), 0) + 1
    return {"markers": len(markers), "writer_nodes": nodes}


def _process_group(title: str) -> str:
    """What a process of the job's Ray instance is, from its title (Ray names a worker after
    the task or actor it runs)."""
    if title.startswith("ray::"):
        head, _, method = title[5:].rpartition(".")  # "Actor.method" -> "Actor"
        name = head if head and method.isidentifier() else title[5:]
        for stage in ("DecodeWorker", "ModelWorker", "probe_block", "write_parts", "Streaming"):
            if stage in name:
                return stage
        return name
    base = os.path.basename(title.split()[0])
    return {"python": "Ray's python daemons"}.get(base, base)


class ProcessCpu:
    """CPU seconds of a job's child process and every process it started (Ray's GCS, raylet,
    dashboard, workers and their decoder children), by what each process was: the driver, a
    Ray daemon, or the stage its worker ran when sampled. Sampled from the bench's own process,
    so the driver's figures do not include the sampling. Processes that start and end between
    two samples are missed; each sample attributes a process's CPU since the last one to its
    title at that moment."""

    def __init__(self, root: int) -> None:
        self.psutil = psutil()
        self.root = root
        self.last: dict[int, float] = {}
        self.groups: dict[str, float] = {}
        self.started: float | None = None
        self.wall_s = 0.0

    def _table(self) -> dict[int, tuple[int, str, float]]:
        """pid -> (parent pid, title, CPU seconds) of the root and its descendants."""
        ps = self.psutil
        gone = (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess)
        try:
            root = ps.Process(self.root)
            procs = [root, *root.children(recursive=True)]
        except gone:
            return {}
        table = {}
        for proc in procs:
            try:
                times = proc.cpu_times()
                title = (proc.cmdline() or [proc.name()])[0]
                table[proc.pid] = (proc.ppid(), title, times.user + times.system)
            except gone:
                continue
        return table

    def sample(self, count: bool = True) -> None:
        table = self._table()
        now = time.perf_counter()
        if count and self.started is None:  # the first counted sample is the baseline
            count, self.started = False, now
        if count:
            self.wall_s = now - self.started
        for pid, (ppid, title, cpu) in table.items():
            delta = cpu - self.last.get(pid, 0.0)
            self.last[pid] = cpu
            if not count or delta <= 0:
                continue
            if pid == self.root:
                group = "driver"
            else:
                group = _process_group(title)
                if ppid in table and table[ppid][1] == title:
                    group += " (child process)"
            self.groups[group] = self.groups.get(group, 0.0) + delta


class FirstFile(threading.Thread):
    """Polls for the first ``clips/`` data file and keeps a partial result on disk, so a job
    stopped at its deadline still reports what it reached."""

    def __init__(self, output: Path, partial: Path, t0: float):
        super().__init__(daemon=True)
        self.output, self.partial, self.t0 = output, partial, t0
        self.first_file_s: float | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        clips = self.output / "clips"
        while not self.halt.wait(0.25):
            if (
                self.first_file_s is None
                and clips.is_dir()
                and any(
                    p.suffix == ".parquet" and not p.name.startswith(("_", "."))
                    for p in clips.rglob("*")
                )
            ):
                self.first_file_s = time.perf_counter() - self.t0
            self.partial.write_text(
                json.dumps(
                    {
                        "completed": False,
                        "elapsed_s": time.perf_counter() - self.t0,
                        "first_file_s": self.first_file_s,
                        "peak_rss_bytes": _max_rss(),
                    }
                )
            )


def first_file_s(output: Path, started: float) -> float | None:
    """Seconds from ``started`` (``time.time()``) to the oldest ``clips/`` data file's mtime."""
    clips = output / "clips"
    times = (
        [p.stat().st_mtime for p in clips.rglob("*.parquet") if not p.name.startswith(("_", "."))]
        if clips.is_dir()
        else []
    )
    return min(times) - started if times else None


def partial_record(result: str | Path) -> Path:
    """Where a job child keeps its partial record until ``result`` is written."""
    return Path(f"{result}.partial")


class FirstClipSeen(BaseException):
    """Raised in the job's loop to stop it once its first clip is recorded."""


def stop_at_first_clip(result: str, started: float) -> dict[str, float]:
    """Once the job's shard tracker has seen its first clip, write the seconds from ``started``
    (``time.time()`` at ``run_job``'s start) to ``result`` and stop the job: the tracker's next
    call raises ``FirstClipSeen``, which ``run_job`` passes on after ending its run. Returns
    the record it wrote (filled in then), for a job that ends before that next call."""
    from pipeline.shard_tracker import ShardTracker

    add = ShardTracker.add
    seen: dict[str, float] = {}

    def add_then_check(self, *args, **kwargs):
        if self.first_clip_at is not None:  # set while the previous call's rows were read
            seen["first_clip_from_start_s"] = self.first_clip_at - started
            Path(result).write_text(json.dumps({"completed": False, **seen}))
            raise FirstClipSeen
        return add(self, *args, **kwargs)

    ShardTracker.add = add_then_check
    return seen


def child_job(
    archive: str,
    output: str,
    result: str,
    address: str | None,
    deadline: float,
    first_clip_only: bool = False,
) -> None:
    """Run one job in this process and write what it cost to ``result`` (JSON); with
    ``first_clip_only``, stop it at its first clip and write only when that came."""
    import ray

    from pipeline.job import local_ray_config, run_job

    rss_imports = _max_rss()
    spec = load_job(Path(archive), Path(output))
    t = time.perf_counter()
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:  # a node as `vmb run` starts it
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _system_config=local_ray_config(spec, 2),
        )
    ray_init_s = time.perf_counter() - t
    rows = DriverRows()
    out = Path(output)
    partial = partial_record(result)
    c0, t0, started = time.process_time(), time.perf_counter(), time.time()
    first_clip = stop_at_first_clip(result, started) if first_clip_only else {}
    watcher = FirstFile(out, partial, t0)
    watcher.start()
    # Past the deadline the job is interrupted (KeyboardInterrupt in run_job), Ray is shut down
    # and the partial record stands; the parent kills the process group if even that hangs.
    timer = threading.Timer(deadline, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.daemon = True
    timer.start()
    try:
        res = run_job(spec)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        timer.cancel()
        watcher.halt.set()
        watcher.join()
        nodes = [
            {
                "node_id": n["NodeID"],
                "host": n.get("NodeManagerHostname", ""),
                "cpus": n.get("Resources", {}).get("CPU", 0),
            }
            for n in ray.nodes()
            if n.get("Alive")
        ]
        Path(result).write_text(
            json.dumps(
                {
                    "completed": True,
                    "summary": res.summary,
                    "driver_cpu_s": cpu,
                    "run_job_s": wall,
                    "ray_init_s": ray_init_s,
                    "first_file_s": first_file_s(out, started),
                    "peak_rss_bytes": _max_rss(),
                    "rss_after_imports_bytes": rss_imports,
                    "driver_bytes": rows.bytes,
                    "driver_items": rows.items,
                    "files": data_files(out),
                    "shards": shard_nodes(out),
                    "nodes": nodes,
                    **first_clip,
                },
                default=str,
            )
        )
    except FirstClipSeen:
        pass
    except KeyboardInterrupt:
        log(f"archive: job on {archive} stopped at its {deadline:.0f} s deadline")
    finally:
        watcher.halt.set()
        ray.shutdown()


def run_job_child(
    archive: Path,
    output: Path,
    work: Path,
    timeout: float,
    address: str | None = None,
    first_clip_only: bool = False,
) -> dict[str, Any]:
    """One job in a fresh process (its own session, so its Ray processes can be stopped with it)."""
    result = work / f"{output.name}.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.archive_bench",
        "job",
        str(archive),
        str(output),
        str(result),
        "--deadline",
        str(timeout),
    ]
    if address:
        cmd += ["--address", address]
    if first_clip_only:
        cmd += ["--first-clip-only"]
    env = subprocess_env(PYTHONPATH=str(REPO), VMB_CACHE_DIR=str(CACHE / "vmb-cache"))
    log_path = work / f"{output.name}.log"
    with log_path.open("w") as logf:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )
        cpu = ProcessCpu(proc.pid)
        partial = partial_record(result)
        ends = time.monotonic() + timeout + 90
        while proc.poll() is None and time.monotonic() < ends:
            time.sleep(CPU_SAMPLE_S)
            if not result.exists():  # the job's CPU: from run_job's start to its result
                cpu.sample(count=partial.exists())
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if result.exists():
        return json.loads(result.read_text()) | {
            "process_cpu_s": cpu.groups,
            "process_cpu_wall_s": cpu.wall_s,
        }
    if partial.exists():
        return json.loads(partial.read_text()) | {"timeout_s": timeout}
    raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")


def first_clip_from_start(r: dict[str, Any]) -> float | None:
    """Seconds from ``run_job``'s start to the first clip out of the models."""
    s = r.get("summary")
    if not s or s["first_clip_s"] is None:
        return None
    return float(s["first_clip_s"]) + float(s["wall_s"]) - float(s["run_s"])


# The bounds: decode only and model only, in this process ------------------------------------


def sample(paths: list[Path], n: int) -> list[Path]:
    if len(paths) <= n:
        return paths
    return [paths[round(i * (len(paths) - 1) / (n - 1))] for i in range(n)]


def decode_only(spec, paths: list[Path]) -> tuple[float, float, list[np.ndarray]]:
    """(videos/s, CPU s per video, clips) of the decode actor's code path, one decoder thread."""
    from pipeline.decode import iter_clips, open_reader
    from pipeline.probe import probe_video
    from pipeline.sampling import plan_clips

    size = tuple(spec.sampling.size)
    clips: list[np.ndarray] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for path in paths:
        probe = probe_video(str(path))
        reader = open_reader(
            spec.decode.backend, str(path), probe, size, "crop", spec.decode.threads
        )
        clips.extend(
            frames
            for _, frames in iter_clips(
                reader, plan_clips(probe.num_frames, probe.fps, spec.sampling), size
            )
        )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(paths) / wall, cpu / len(paths), clips


def model_only(spec, clips: list[np.ndarray], videos: int) -> tuple[float, float]:
    """(videos/s, CPU s per video) of the model runner the model actor builds, on the clips."""
    import torch

    from pipeline.models import build_model

    threads = torch.get_num_threads()
    m = spec.models[0]
    runner = build_model(
        m, output=spec.output, clip_shape=(spec.sampling.clip_len, *spec.sampling.size)
    )
    metas = [
        {
            "video_id": "v",
            "video_uri": "v",
            "clip_index": 0,
            "fps": 25.0,
            "frame_indices": np.arange(spec.sampling.clip_len),
            "frame_bytes": np.zeros(spec.sampling.clip_len),
        }
        for _ in clips
    ]
    runner.run(np.stack(clips[: m.batch_size]), metas[: m.batch_size])  # warm-up (not counted)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(clips), m.batch_size):
        runner.run(np.stack(clips[i : i + m.batch_size]), metas[i : i + m.batch_size])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    torch.set_num_threads(threads)
    return videos / wall, cpu / videos


def bounds(archive: Path, tmp: Path) -> dict[str, Any]:
    spec = load_job(archive, tmp / "bounds-out")
    paths = sample(inputs.archive_videos(archive), BOUND_SAMPLE)
    load = round(os.getloadavg()[0], 2)
    d_rate, d_cpu, clips = decode_only(spec, paths)
    if len(clips) != len(paths):
        raise RuntimeError(
            f"expected one clip per video, got {len(clips)} from {len(paths)} videos"
        )
    m_rate, m_cpu = model_only(spec, clips, len(paths))
    return {
        "videos": len(paths),
        "decode_videos_per_s": d_rate,
        "decode_cpu_s_per_video": d_cpu,
        "model_videos_per_s": m_rate,
        "model_cpu_s_per_video": m_cpu,
        "bound_videos_per_s": min(d_rate, m_rate),
        "load": load,
    }


def mean_bounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The bounds measured before and after the jobs, averaged key by key (``runs`` kept)."""
    keys = [k for k in runs[0] if k != "videos"]
    return {
        "videos": runs[0]["videos"],
        **{k: float(np.mean([r[k] for r in runs])) for k in keys},
        "runs": runs,
    }


# The query layouts ---------------------------------------------------------------------------


def per_video_layout(output: Path, dest: Path) -> dict[str, int]:
    """The job's rows rewritten one file per video per table (the per-segment layout of one
    segment per video)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline.query import open_table

    files = {}
    for table in ("clips", "videos"):
        t = open_table(str(output), table).to_table()
        t = t.sort_by("video_id")
        ids = t.column("video_id")
        (dest / table).mkdir(parents=True, exist_ok=True)
        bounds_ = np.flatnonzero(np.asarray(pc.not_equal(ids[1:], ids[:-1]))) + 1
        starts = [0, *bounds_.tolist()]
        ends = [*bounds_.tolist(), t.num_rows]
        for s, e in zip(starts, ends):
            if e > s:
                pq.write_table(
                    t.slice(s, e - s),
                    dest / table / f"{ids[s].as_py()}.parquet",
                    compression="zstd",
                )
        files[table] = len(starts) if t.num_rows else 0
    return files


def _canonical(rows: list[dict[str, Any]]) -> list[tuple]:
    """Rows in a fixed order, floats rounded (sums over files in another order differ in the
    last bits)."""
    return sorted(
        tuple(round(v, 6) if isinstance(v, float) else v for v in r.values()) for r in rows
    )


def query_compare(output: Path, tmp: Path, repeats: int) -> dict[str, Any]:
    from pipeline.query import query

    per_video = tmp / "per-video"
    t0 = time.perf_counter()
    pv_files = per_video_layout(output, per_video)
    build_s = time.perf_counter() - t0
    fns, answers = {}, {}
    for name, sql in QUERIES.items():
        for layout, root in (("job", output), ("per video", per_video)):

            def fn(root=root, sql=sql, key=(name, layout)):
                answers[key] = _canonical(query(str(root), sql).to_pylist())

            fns[(name, layout)] = fn
    samples = interleaved(fns, repeats, warmup=True)
    rows = {}
    for name in QUERIES:
        job_s = median([s.wall_s for s in samples[(name, "job")]])
        pv_s = median([s.wall_s for s in samples[(name, "per video")]])
        rows[name] = {
            "job_s": job_s,
            "per_video_s": pv_s,
            "per_video_vs_job": pv_s / job_s,
            "same_answer": answers[(name, "job")] == answers[(name, "per video")],
        }
    return {
        "job_files": data_files(output),
        "per_video_files": pv_files,
        "layout_build_s": build_s,
        "queries": rows,
        "repeats": repeats,
    }


# Multi-node ------------------------------------------------------------------------------------


def multinode(archive: Path, tmp: Path, timeout: float) -> dict[str, Any]:
    """A small job on a head with 0 CPUs and two 1-CPU worker nodes, all on this machine."""
    from ray.cluster_utils import Cluster

    store = 200 * 1024 * 1024
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": store, "include_dashboard": False},
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=store)
        cluster.wait_for_nodes()
        r = run_job_child(archive, tmp / "multinode-out", tmp, timeout, address=cluster.address)
    finally:
        cluster.shutdown()
    return r


# The suite -------------------------------------------------------------------------------------


def scale_row(
    r: dict[str, Any], bound: float, base_first: float | None, models: int
) -> dict[str, Any]:
    s = r["summary"]
    videos = int(s["videos"])
    clips = int(s["clips"])
    per_k = 1000 / max(1, videos)
    files = r["files"]
    first = first_clip_from_start(r)
    rate = videos / r["run_job_s"]
    return {
        "videos": videos,
        "clips": clips,
        "run_job_s": r["run_job_s"],
        "videos_per_s": rate,
        "summary_videos_per_s": s.get("videos_per_s"),
        "bound_videos_per_s": bound,
        "ratio": rate / bound,
        "files": files,
        "files_per_1000_per_model": (files["clips"] + files["videos"]) * per_k / models,
        "driver_cpu_s": r["driver_cpu_s"],
        "driver_cpu_s_per_1000": r["driver_cpu_s"] * per_k,
        "summary_driver_cpu_s": s.get("driver_cpu_s"),
        "summary_driver_cpu_s_per_1000": (
            None if s.get("driver_cpu_s") is None else s["driver_cpu_s"] * per_k
        ),
        "first_clip_s": first,
        "first_clip_vs_base": (first / base_first) if first and base_first else None,
        "first_file_s": r.get("first_file_s"),
        "peak_rss_bytes": r["peak_rss_bytes"],
        "driver_bytes": r["driver_bytes"],
        "driver_bytes_per_clip": r["driver_bytes"] / max(1, clips),
        "shards": s.get("shards"),
        "ray_init_s": r["ray_init_s"],
        "load": r.get("load"),
        "process_cpu_s": r.get("process_cpu_s") or {},
        "process_cpu_wall_s": r.get("process_cpu_wall_s"),
    }


def first_clip_rounds(rounds: int, largest: int, tmp: Path, timeout: float) -> dict[str, Any]:
    """``rounds`` interleaved pairs of jobs, over ``BASE_VIDEOS`` videos and over ``largest``,
    each stopped at its first clip: seconds from ``run_job``'s start to it, and the ratio of
    the medians (one pair of jobs moves by seconds with the machine's load)."""
    if not rounds:
        return {}
    times: dict[int, list[float]] = {BASE_VIDEOS: [], largest: []}
    for i in range(rounds):
        for count in times:
            log(f"archive: first clip, round {i + 1} of {rounds}, {count:,} videos")
            r = run_job_child(
                inputs.many_names_archive(count),
                tmp / f"first-clip-{count}-{i}",
                tmp,
                timeout,
                first_clip_only=True,
            )
            # A job whose status rows all came in one batch ends before it can be stopped.
            first = r.get("first_clip_from_start_s") or (
                first_clip_from_start(r) if r.get("completed") else None
            )
            if first is None:
                raise RuntimeError(f"the {count}-video job made no clip within {timeout:.0f} s")
            times[count].append(first)
    base, big = median(times[BASE_VIDEOS]), median(times[largest])
    return {
        "rounds": rounds,
        "videos": largest,
        "times": times,
        "median_base": base,
        "median": big,
        "ratio": big / base,
    }


def manifest_row(r: dict[str, Any], rows: int) -> dict[str, Any]:
    s = r.get("summary") or {}
    return {
        "rows": rows,
        "completed": r["completed"],
        "timeout_s": r.get("timeout_s"),
        "elapsed_s": r.get("run_job_s", r.get("elapsed_s")),
        "first_clip_s": first_clip_from_start(r),
        "first_file_s": r.get("first_file_s"),
        "peak_rss_bytes": r["peak_rss_bytes"],
        "videos": s.get("videos"),
        "clips": s.get("clips"),
        "driver_cpu_s": r.get("driver_cpu_s"),
        "summary_driver_cpu_s": s.get("driver_cpu_s"),
    }


def run(settings: Settings) -> dict:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    extra = settings.extra
    sizes = tuple(extra.get("archive_sizes") or (QUICK_SIZES if settings.quick else FULL_SIZES))
    manifest_rows = tuple(sorted({1000, *(extra.get("manifest_rows") or ())}))
    timeout = float(extra.get("archive_timeout") or (300 if settings.quick else 3600))
    m = machine()
    log(f"archive: sizes {sizes}, manifests {manifest_rows}; {m['cpu']}, {m['cores']} cores")
    with tempfile.TemporaryDirectory(prefix="vmb-archive-") as tmp_name:
        tmp = Path(tmp_name)
        runs: dict[int, dict[str, Any]] = {}
        counts = sorted({BASE_VIDEOS, *sizes})
        largest = max(counts)
        bound_archive = inputs.many_names_archive(largest)
        log(f"archive: decode-only and model-only bounds on the {largest:,}-video archive (before)")
        bound_runs = [bounds(bound_archive, tmp)]
        if not settings.quick:  # the first job of a run pays cold page caches (torch, OpenVINO)
            log(f"archive: warm-up job over {BASE_VIDEOS} videos (not counted)")
            run_job_child(inputs.many_names_archive(BASE_VIDEOS), tmp / "warm-up", tmp, timeout)
        for count in counts:
            archive = inputs.many_names_archive(count)
            log(f"archive: vmb job over {count:,} videos")
            load = round(os.getloadavg()[0], 2)
            limit = max(timeout, SCALE_S_PER_VIDEO * count)
            runs[count] = run_job_child(archive, tmp / f"out-{count}", tmp, limit) | {"load": load}
            if not runs[count].get("completed"):
                raise RuntimeError(f"the {count}-video job did not finish within {limit:.0f} s")
        first_clips = first_clip_rounds(
            int(extra.get("first_clip_rounds") or 0), largest, tmp, timeout
        )
        log(f"archive: decode-only and model-only bounds on the {largest:,}-video archive (after)")
        bound_runs.append(bounds(bound_archive, tmp))
        bound = mean_bounds(bound_runs)
        models = len(load_job(inputs.many_names_archive(largest), tmp / "x").models)
        base_first = first_clip_from_start(runs[BASE_VIDEOS])
        scale = {
            count: scale_row(r, bound["bound_videos_per_s"], base_first, models)
            for count, r in runs.items()
        }
        lo, hi = scale[BASE_VIDEOS], scale[largest]
        marginal = (
            (hi["driver_cpu_s"] - lo["driver_cpu_s"]) / (hi["videos"] - lo["videos"]) * 1000
            if hi["videos"] > lo["videos"]
            else None
        )
        log(f"archive: queries over the {largest:,}-video output")
        queries = query_compare(tmp / f"out-{largest}", tmp, settings.repeats)
        manifests = {}
        for rows in manifest_rows:
            log(f"archive: manifest of {rows:,} rows")
            load = round(os.getloadavg()[0], 2)
            r = run_job_child(
                inputs.manifest(rows, BASE_VIDEOS), tmp / f"manifest-{rows}", tmp, timeout
            )
            manifests[rows] = manifest_row(r, rows) | {"load": load}
        small = manifests[1000]
        for row in manifests.values():
            row["rss_vs_1000"] = row["peak_rss_bytes"] / small["peak_rss_bytes"]
            fc, fc0 = (
                row["first_clip_s"] or row["first_file_s"],
                small["first_clip_s"] or small["first_file_s"],
            )
            row["first_clip_vs_1000"] = fc / fc0 if fc and fc0 else None
        log("archive: multi-node job (head 0 CPUs + two 1-CPU nodes)")
        mn_videos = MULTINODE_VIDEOS[settings.quick]
        mn = multinode(inputs.many_names_archive(mn_videos), tmp, timeout)
    multi = {
        "videos": mn_videos,
        "completed": mn.get("completed", False),
        "nodes": mn.get("nodes", []),
        "shards": mn.get("shards", {}),
        "clips": (mn.get("summary") or {}).get("clips"),
        "driver_bytes": mn.get("driver_bytes"),
        "driver_bytes_per_clip": (
            mn["driver_bytes"] / max(1, mn["summary"]["clips"]) if mn.get("completed") else None
        ),
    }
    payload = {
        "job": str(JOB.relative_to(REPO)),
        "size": SIZE,
        "cpu": m["cpu"],
        "cores": m["cores"],
        "bounds": bound,
        "scale": scale,
        "marginal_driver_cpu_s_per_1000": marginal,
        "queries": queries,
        "manifests": manifests,
        "multinode": multi,
        "timeout_s": timeout,
        "first_clip_rounds": first_clips,
    }
    save("archive", settings, payload)
    return payload


# Tables ----------------------------------------------------------------------------------------


def _f(x: Any, nd: int = 2) -> Any:
    return "n/a" if x is None else (round(x, nd) if isinstance(x, float) else x)


def cpu_table(v: dict[str, Any], p: dict[str, Any]) -> str:
    """Where the machine's CPU went during one job, by process (``ProcessCpu``)."""
    from bench.report import table

    groups, wall = v.get("process_cpu_s") or {}, v.get("process_cpu_wall_s")
    if not groups or not wall:
        return "CPU by process: not recorded"
    total = sum(groups.values())
    per_k = 1000 / max(1, v["videos"])
    rows = [
        [name, cpu, cpu * per_k, f"{cpu / (p['cores'] * wall):.0%}"]
        for name, cpu in sorted(groups.items(), key=lambda kv: -kv[1])
        if cpu >= 0.05
    ]
    rows.append(["all", total, total * per_k, f"{total / (p['cores'] * wall):.0%}"])
    return (
        f"CPU by process over the {v['videos']:,}-video job ({wall:.1f} s sampled, "
        f"{p['cores']} cores; a stage's name is what its Ray worker ran when sampled)\n"
        + table(["process", "CPU s", "CPU s / 1k videos", "of the cores' time"], rows)
    )


def render(p: dict[str, Any]) -> str:
    from bench.report import table, target

    mib = 1024 * 1024
    b = p["bounds"]
    where = f"{p['cpu']}, {p['cores']} cores"
    base = (
        p["scale"][str(BASE_VIDEOS)] if str(BASE_VIDEOS) in p["scale"] else p["scale"][BASE_VIDEOS]
    )
    rows = []
    for v in p["scale"].values():
        ours = v["summary_driver_cpu_s_per_1000"]
        cpu_k = v["driver_cpu_s_per_1000"]
        rows.append(
            [
                f"{v['videos']:,}",
                v["clips"],
                v["run_job_s"],
                v["videos_per_s"],
                f"{v['ratio']:.2f} {target(v['ratio'] >= 0.85)}",
                f"{v['files_per_1000_per_model']:,.0f} "
                + target(v["files_per_1000_per_model"] <= 2),
                f"{cpu_k:.2f} {target(cpu_k <= 2)}"
                + ("" if ours is None else f" (summary {ours:.2f})"),
                _f(v["first_clip_s"]),
                ""
                if v is base
                else (
                    f"{v['first_clip_vs_base']:.2f} {target(v['first_clip_vs_base'] <= 1.2)}"
                    if v["first_clip_vs_base"]
                    else "n/a"
                ),
                v["peak_rss_bytes"] / mib,
                f"{v['driver_bytes_per_clip']:,.0f}",
                _f(v.get("load"), 1),
            ]
        )
    marginal = p.get("marginal_driver_cpu_s_per_1000")
    largest = max(int(k) for k in p["scale"])
    out = (
        f"Archive scale: {p['job']} at {p['size']}x{p['size']}, 2 s 180p videos, one clip each; "
        f"{where}\n"
        + table(
            [
                "videos",
                "clips",
                "run_job s",
                "videos/s",
                "vs min(decode, model) >= 0.85",
                "data files / 1k videos / model <= 2",
                "driver CPU s / 1k videos <= 2",
                "first clip s",
                f"vs {BASE_VIDEOS} videos <= 1.2",
                "driver peak RSS MiB",
                "driver bytes / clip",
                "load",
            ],
            rows,
        )
    )
    loads = "/".join(f"{r['load']:.1f}" for r in b.get("runs", []))
    out += (
        f"\nbounds over {b['videos']:,} of the videos, one process, mean of before and after "
        f"the jobs (load {loads}): decode only "
        f"{b['decode_videos_per_s']:.1f} videos/s ({b['decode_cpu_s_per_video'] * 1000:.1f} ms CPU "
        f"each), model only {b['model_videos_per_s']:.1f} videos/s "
        f"({b['model_cpu_s_per_video'] * 1000:.1f} ms CPU each)"
    )
    if marginal is not None:
        out += f"; marginal driver CPU per 1k videos, smallest to largest archive: {marginal:.2f} s"
    fc = p.get("first_clip_rounds") or {}
    if fc:
        runs = "; ".join(
            f"{int(k):,} videos " + ", ".join(f"{t:.2f}" for t in v) for k, v in fc["times"].items()
        )
        out += (
            f"\nfirst clip, {fc['rounds']} interleaved rounds of jobs "
            f"stopped at their first clip: median {fc['median']:.2f} s at {fc['videos']:,} videos "
            f"vs {fc['median_base']:.2f} s at {BASE_VIDEOS} = {fc['ratio']:.2f} "
            f"{target(fc['ratio'] <= 1.2)} ({runs} s)"
        )
    out += "\n\n" + cpu_table(
        p["scale"][str(largest) if str(largest) in p["scale"] else largest], p
    )
    rows = [
        [
            f"{r['rows']:,}",
            "yes" if r["completed"] else f"stopped at {r.get('timeout_s') or 0:.0f} s",
            _f(r["elapsed_s"]),
            _f(r["first_clip_s"]),
            _f(r["first_file_s"]),
            _f(r["first_clip_vs_1000"]),
            r["peak_rss_bytes"] / mib,
            f"{r['rss_vs_1000']:.2f} {target(r['rss_vs_1000'] <= 1.2)}",
            _f(r.get("load"), 1),
        ]
        for r in p["manifests"].values()
    ]
    out += (
        f"\n\nManifest (.txt, first {BASE_VIDEOS} rows real videos, the rest missing objects); "
        f"{where}\n"
        + table(
            [
                "rows",
                "finished",
                "run_job s",
                "first clip s",
                "first clips file s",
                "first clip vs 1k",
                "driver peak RSS MiB",
                "RSS vs 1k <= 1.2",
                "load",
            ],
            rows,
        )
    )
    mn = p["multinode"]
    writers = mn["shards"].get("writer_nodes") or {}
    rows = [
        [
            n["node_id"][:12],
            n["host"],
            n["cpus"],
            writers.get(n["node_id"], "n/a" if not writers else 0),
        ]
        for n in mn["nodes"]
    ]
    out += (
        f"\n\nMulti-node: ray.cluster_utils.Cluster, head 0 CPUs + two 1-CPU nodes, "
        f"{mn['videos']} videos, {_f(mn['clips'])} clips, finished: {mn['completed']}; "
        "driver received "
        f"{_f(mn['driver_bytes_per_clip'], 0)} bytes per clip; shard markers: "
        f"{mn['shards'].get('markers', 0)}; {where}\n"
        + table(["node", "host", "CPUs", "shards written (_shards/*.json node_id)"], rows)
    )
    q = p["queries"]
    rows = [
        [name, v["job_s"] * 1000, v["per_video_s"] * 1000, v["per_video_vs_job"], v["same_answer"]]
        for name, v in q["queries"].items()
    ]
    jf, pf = q["job_files"], q["per_video_files"]
    out += (
        "\n\nQuery (pipeline.query.query) over the "
        f"{max(int(k) for k in p['scale']):,}-video output: "
        f"job layout {jf['clips']:,} + {jf['videos']:,} files, one file per video "
        f"{pf['clips']:,} + {pf['videos']:,} files; median of {q['repeats']}; {where}\n"
        + table(["query", "job layout ms", "per video ms", "per video / job", "same answer"], rows)
    )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="one archive-bench job in this process")
    p.add_argument("mode", choices=["job"])
    p.add_argument("archive")
    p.add_argument("output")
    p.add_argument("result")
    p.add_argument("--address")
    p.add_argument("--deadline", type=float, default=3600)
    p.add_argument("--first-clip-only", action="store_true")
    a = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    child_job(a.archive, a.output, a.result, a.address, a.deadline, a.first_clip_only)


if __name__ == "__main__":
    main()

"""2. Overlap: the pipeline's end-to-end clips/s against what its two stages allow.

On the same archive and settings, in this process:

- ``decode only``  ``open_reader`` + ``iter_clips`` over every planned clip, one decoder thread
                   (what one decode actor does): clips/s and CPU seconds per clip;
- ``model only``   the model runner (``pipeline.models.build_model``, as the model actor
                   builds it) over the same clips, pre-decoded, in batches of the job's
                   ``batch_size``, with the threads the model actor gets: clips/s and CPU s/clip;
- ``end to end``   ``pipeline.job.run_job`` (Ray started beforehand, so not counted; probing,
                   actor start-up and model build are counted): ``summary["clips_per_s"]``, and
                   the steady rate after the first clip (``summary["first_clip_s"]``).

Two bounds: ``min(decode, model)``, each stage alone with its own threads (the figure the
target is stated against), and the work-conserving bound on this machine's cores,
``min(decode, model, cores / (decode CPU s/clip + model CPU s/clip))``: when the stages' threads
together want more cores than there are, the stages cannot both run at their solo speed, and
the second bound is what "nothing waits needlessly" can reach.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import inputs
from bench.common import Settings, log, save

CONFIGS = {  # name: (model settings, decode settings)
    "classify.toml as shipped (model 2 threads)": ({"num_cpus": 1.5}, {"num_cpus": 0.5}),
    "model 1 thread, decoder 1 core": ({"num_cpus": 1.0}, {"num_cpus": 1.0}),
}


def job_spec(archive: Path, output: Path, model: dict, decode: dict):
    from pipeline.spec import parse_spec

    return parse_spec(
        {
            "name": "bench-overlap",
            "input": str(archive),
            "output": str(output),
            "sampling": {"clip_len": 8, "frame_interval": 4, "size": 224},
            "decode": {"backend": "decord", "threads": 1, **decode},
            "models": [
                {
                    "name": "frame-average",
                    "task": "classify",
                    "batch_size": 8,
                    "options": {"top_k": 5},
                    **model,
                }
            ],
            "mlflow": {"enabled": False},
        }
    )


def decode_all(spec) -> list[np.ndarray]:
    from pipeline.decode import iter_clips, open_reader
    from pipeline.probe import probe_video
    from pipeline.sampling import plan_clips

    clips = []
    for path in inputs.videos(Path(spec.input)):
        probe = probe_video(str(path))
        reader = open_reader("decord", str(path), probe, tuple(spec.sampling.size), "crop", 1)
        plans = plan_clips(probe.num_frames, probe.fps, spec.sampling)
        clips.extend(frames for _, frames in iter_clips(reader, plans, tuple(spec.sampling.size)))
    return clips


def model_only(spec, clips: list[np.ndarray]) -> tuple[float, float]:
    """(clips/s, CPU seconds per clip) of the model runner alone."""
    import torch

    from pipeline.models import build_model

    threads = torch.get_num_threads()
    m = spec.models[0]
    runner = build_model(m, output=spec.output, clip_shape=(8, 224, 224))
    metas = [
        {
            "video_id": "v",
            "video_uri": "v",
            "clip_index": i,
            "fps": 25.0,
            "frame_indices": np.arange(8),
            "frame_bytes": np.zeros(8),
        }
        for i in range(len(clips))
    ]
    runner.run(np.stack(clips[: m.batch_size]), metas[: m.batch_size])  # warm-up (not counted)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(clips), m.batch_size):
        runner.run(np.stack(clips[i : i + m.batch_size]), metas[i : i + m.batch_size])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    torch.set_num_threads(threads)
    return len(clips) / wall, cpu / len(clips)


def end_to_end(spec) -> tuple[float, float]:
    """(clips/s over run_job, clips/s after the first clip was written)."""
    from pipeline.job import run_job

    summary = run_job(spec).summary
    steady = summary["clips"] / max(1e-9, summary["run_s"] - summary["first_clip_s"])
    return float(summary["clips_per_s"]), float(steady)


def run(settings: Settings) -> dict:
    import os

    import ray

    archive = inputs.overlap_archive(settings.quick)
    cores = os.cpu_count() or 1
    rows = {}
    with tempfile.TemporaryDirectory(prefix="vmb-overlap-") as tmp:
        started = not ray.is_initialized()
        if started:
            ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
        try:
            clips: list[np.ndarray] = []
            for i, (name, (model, decode)) in enumerate(CONFIGS.items()):
                spec = job_spec(archive, Path(tmp) / f"out-{i}", model, decode)
                load = round(os.getloadavg()[0], 2)
                log(f"overlap: {name}")
                t0, c0 = time.perf_counter(), time.process_time()
                clips = decode_all(spec)
                d_rate = len(clips) / (time.perf_counter() - t0)
                d_cpu = (time.process_time() - c0) / len(clips)
                m_rate, m_cpu = model_only(spec, clips)
                e2e, steady = end_to_end(spec)
                shared = min(d_rate, m_rate, cores / (d_cpu + m_cpu))
                rows[name] = {
                    "decode_only_clips_per_s": d_rate,
                    "model_only_clips_per_s": m_rate,
                    "decode_cpu_s_per_clip": d_cpu,
                    "model_cpu_s_per_clip": m_cpu,
                    "end_to_end_clips_per_s": e2e,
                    "steady_clips_per_s": steady,
                    "bound_separate": min(d_rate, m_rate),
                    "bound_shared_cores": shared,
                    "ratio": e2e / min(d_rate, m_rate),
                    "ratio_shared": e2e / shared,
                    "steady_ratio_shared": steady / shared,
                    "model_threads": math.ceil(model["num_cpus"]),
                    "load": load,
                }
            n_clips = len(clips)
        finally:
            if started:
                ray.shutdown()
    payload = {"archive": str(archive), "clips": n_clips, "cores": cores, "configs": rows}
    save("overlap", settings, payload)
    return payload

"""2. Overlap: the pipeline's end-to-end clips/s against the slower of its two stages alone.

On the same archive and settings, in this process:

- ``decode only``  ``open_reader`` + ``iter_clips`` over every planned clip, one decoder thread
                   (what one decode actor does), clips/s;
- ``model only``   the model runner (``pipeline.model_runners.build_runner``) over the same clips,
                   pre-decoded, in batches of the job's ``batch_size``, with the torch threads the
                   model actor gets, clips/s;
- ``end to end``   ``pipeline.runner.run_job`` (Ray started beforehand, so not counted; actor
                   start-up and model build are counted), ``summary["clips_per_s"]``.

Figure: end to end / min(decode only, model only); target >= 0.85. On 2 cores the stages share
the CPUs, so the bound is optimistic: the decoder's CPU time comes out of the model's.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import inputs
from bench.common import Settings, log, median, save

CONFIGS = {
    "vmb (classify.toml as shipped)": {"num_cpus": 1.0, "options": {"top_k": 5, "channels_last": True}},
    "vmb precision=bf16": {"num_cpus": 1.0, "options": {"top_k": 5, "precision": "bf16"}},
}


def job_spec(archive: Path, output: Path, model: dict):
    from pipeline.spec import parse_spec

    return parse_spec({
        "name": "bench-overlap", "input": str(archive), "output": str(output),
        "sampling": {"clip_len": 8, "frame_interval": 4, "size": 224},
        "decode": {"backend": "decord", "threads": 1},
        "models": [{"name": "frame-average", "task": "classify", "batch_size": 8, **model}],
        "mlflow": {"enabled": False},
    })


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


def model_only(spec, clips: list[np.ndarray]) -> float:
    import torch

    from pipeline.model_runners import build_runner

    threads = torch.get_num_threads()
    m = spec.models[0]
    runner = build_runner(m, output=spec.output)
    metas = [{"video_id": "v", "video_uri": "v", "clip_index": i, "fps": 25.0,
              "frame_indices": np.arange(8), "frame_bytes": np.zeros(8)} for i in range(len(clips))]
    runner.run(np.stack(clips[:m.batch_size]), metas[:m.batch_size])  # warm-up (not counted)
    t0 = time.perf_counter()
    for i in range(0, len(clips), m.batch_size):
        runner.run(np.stack(clips[i:i + m.batch_size]), metas[i:i + m.batch_size])
    rate = len(clips) / (time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return rate


def end_to_end(spec) -> float:
    from pipeline.runner import run_job

    return float(run_job(spec).summary["clips_per_s"])


def run(settings: Settings) -> dict:
    import ray

    archive = inputs.overlap_archive(settings.quick)
    repeats = 1 if settings.quick else min(settings.repeats, 2)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="vmb-overlap-") as tmp:
        started = not ray.is_initialized()
        if started:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            samples: dict[str, dict[str, list[float]]] = {
                k: {"decode": [], "model": [], "e2e": [], "load": []} for k in CONFIGS}
            clips = None
            for r in range(repeats):
                for name, model in CONFIGS.items():
                    spec = job_spec(archive, Path(tmp) / f"{r}-{len(samples[name]['e2e'])}-{hash(name)}", model)
                    import os

                    samples[name]["load"].append(round(os.getloadavg()[0], 2))
                    log(f"overlap: {name} round {r + 1}/{repeats}")
                    t0 = time.perf_counter()
                    clips = decode_all(spec)
                    samples[name]["decode"].append(len(clips) / (time.perf_counter() - t0))
                    samples[name]["model"].append(model_only(spec, clips))
                    samples[name]["e2e"].append(end_to_end(spec))
            for name, s in samples.items():
                d, m, e = median(s["decode"]), median(s["model"]), median(s["e2e"])
                rows[name] = {"decode_only_clips_per_s": d, "model_only_clips_per_s": m,
                              "end_to_end_clips_per_s": e, "ratio": e / min(d, m),
                              "bound": "model" if m < d else "decode",
                              "torch_threads_model_actor": math.ceil(CONFIGS[name]["num_cpus"]),
                              "samples": s}
            n_clips = len(clips or [])
        finally:
            if started:
                ray.shutdown()
    payload = {"archive": str(archive), "clips": n_clips, "repeats": repeats, "configs": rows}
    save("overlap", settings, payload)
    return payload

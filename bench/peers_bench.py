"""3. Peers: ``vmb run`` end to end against what a user would write instead.

Every contender is a separate process timed from start to exit (imports, Ray start-up, model
build and compile included) on the same archive, clips and batch size, in interleaved rounds:

- ``plain loop``   one process: decord (resized at decode, ``get_batch`` per clip) + the same
                   model in eager mode, batches of 8 clips (``python -m bench.peers_bench plain``);
- ``Ray Data``     ``read_binary_files`` -> decode ``flat_map`` -> model actor pool
                   ``map_batches``, written the straightforward way (defaults everywhere);
- ``vmb``          ``vmb run jobs/classify.toml`` as shipped (``runtime = "auto"``: the model
                   compiled by OpenVINO, fp32), first on a machine: the converted graph is not
                   cached yet, so its trace and check are part of the wall time;
- ``vmb precision=bf16``  the same in bfloat16 (graph cache warm from the run before);
- ``vmb runtime=torch``   the exact-numerics mode: the model in eager PyTorch (BatchNorm folded).

Clips: 8 frames every 4th frame (span 29, non-overlapping), 224x224 (short side resized to 224,
centre crop): the classify job's sampling. Top-1 agreement is against the plain loop (the eager
fp32 model on the same pixels).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench import inputs
from bench.common import REPO, Settings, log, median, run_logged, save, spread, subprocess_env

CLIP_LEN, INTERVAL, SIZE, BATCH = 8, 4, 224, 8
SPAN = (CLIP_LEN - 1) * INTERVAL + 1

# jobs/classify.toml as shipped: 1 model actor with 2 threads (num_cpus = 1.5), runtime "auto"
# (OpenVINO on CPU), batch 8, fp32. The other contenders change one option each.
VMB_SETTINGS: list[str] = []
BF16_SETTINGS = ['models.0.options.precision="bf16"']
TORCH_SETTINGS = ['models.0.options.runtime="torch"']

SWEEP = {  # name: --set overrides on top of jobs/classify.toml (ray.num_cpus=2 always)
    "classify.toml as shipped (OpenVINO fp32, 2 threads)": [],
    "model num_cpus=1 (1 thread)": ["models.0.num_cpus=1"],
    "+ batch_size=16": ["models.0.batch_size=16"],
    "+ batch_size=4": ["models.0.batch_size=4"],
    "+ decode.num_cpus=1": ["decode.num_cpus=1", "models.0.num_cpus=1"],
    "+ 2 decode actors": ["decode.actors=2", "decode.num_cpus=0.25"],
    "+ decode.isolation=none": ['decode.isolation="none"'],
    "precision=bf16": ['models.0.options.precision="bf16"'],
    "runtime=torch (eager, BN folded)": ['models.0.options.runtime="torch"'],
    "runtime=torch + compile=true": [
        'models.0.options.runtime="torch"',
        "models.0.options.compile=true",
    ],
    "runtime=torch + precision=bf16": [
        'models.0.options.runtime="torch"',
        'models.0.options.precision="bf16"',
    ],
}


# Contender 1: the plain loop (run as `python -m bench.peers_bench plain ARCHIVE OUT`) ----------


def _clip_starts(num_frames: int) -> list[int]:
    if num_frames < SPAN:
        return [0]
    return list(range(0, num_frames - SPAN + 1, SPAN))


def _decode_hw(height: int, width: int) -> tuple[int, int]:
    scale = SIZE / min(height, width)
    return max(SIZE, round(height * scale)), max(SIZE, round(width * scale))


def _crop(frames: np.ndarray) -> np.ndarray:
    h, w = frames.shape[1:3]
    top, left = (h - SIZE) // 2, (w - SIZE) // 2
    return frames[:, top : top + SIZE, left : left + SIZE]


def _video_clips(vr, n: int) -> list[np.ndarray]:
    """Every clip of one video, one ``get_batch`` per clip (decord's documented usage; one
    call for all of a video's frames measured no faster here)."""
    return [
        _crop(vr.get_batch([min(s + j * INTERVAL, n - 1) for j in range(CLIP_LEN)]).asnumpy())
        for s in _clip_starts(n)
    ]


def plain_loop(archive: str, out: str) -> None:
    import decord
    import torch

    import blocks

    model = blocks.create_block("frame-average").eval()
    labels = model.labels
    results, batch, keys = [], [], []

    def flush():
        x = torch.from_numpy(np.stack(batch)).permute(0, 1, 4, 2, 3).float()  # (B, T, 3, H, W)
        with torch.inference_mode():
            top1 = model((x - 127.0) / 128.0).argmax(-1).tolist()
        results.extend(
            {"video": k[0], "clip": k[1], "label": labels[i]} for k, i in zip(keys, top1)
        )
        batch.clear()
        keys.clear()

    for path in sorted(Path(archive).glob("*.mp4")):
        probe = decord.VideoReader(str(path), num_threads=1)
        h, w = _decode_hw(*probe[0].shape[:2])
        n = len(probe)
        del probe
        vr = decord.VideoReader(str(path), width=w, height=h, num_threads=1)
        for c, clip in enumerate(_video_clips(vr, n)):
            batch.append(clip)
            keys.append((path.name, c))
            if len(batch) == BATCH:
                flush()
    if batch:
        flush()
    Path(out).write_text(json.dumps(results))


# Contender 2: Ray Data, the straightforward way --------------------------------------------------


def ray_data(archive: str, out: str) -> None:
    import ray

    ray.init()  # a fresh local instance: the benchmark sets RAY_ADDRESS=local
    paths = [str(p) for p in sorted(Path(archive).glob("*.mp4"))]

    def decode(row):
        import decord

        data = row["bytes"]
        probe = decord.VideoReader(io.BytesIO(data), num_threads=1)
        h, w = _decode_hw(*probe[0].shape[:2])
        n = len(probe)
        vr = decord.VideoReader(io.BytesIO(data), width=w, height=h, num_threads=1)
        for c, clip in enumerate(_video_clips(vr, n)):
            yield {"video": Path(row["path"]).name, "clip": c, "frames": clip}

    class Classifier:
        def __init__(self):
            import blocks

            self.model = blocks.create_block("frame-average").eval()
            self.labels = self.model.labels

        def __call__(self, batch):
            import torch

            x = torch.from_numpy(np.stack(batch["frames"])).permute(0, 1, 4, 2, 3).float()
            with torch.inference_mode():
                top1 = self.model((x - 127.0) / 128.0).argmax(-1).tolist()
            return {
                "video": batch["video"],
                "clip": batch["clip"],
                "label": np.array([self.labels[i] for i in top1]),
            }

    ds = ray.data.read_binary_files(paths, include_paths=True)
    ds = ds.flat_map(decode)
    ds = ds.map_batches(Classifier, batch_size=BATCH, concurrency=1)
    rows = [
        {"video": str(r["video"]), "clip": int(r["clip"]), "label": str(r["label"])}
        for r in ds.take_all()
    ]
    Path(out).write_text(json.dumps(rows))
    ray.shutdown()


# Contenders 3 to 5: vmb run as shipped, in bf16, in eager PyTorch ------------------------------


def vmb_command(archive: Path, output: Path, overrides: list[str]) -> list[str]:
    head = [str(Path(sys.executable).parent / "vmb"), "run"]
    sets = [
        f'input="{archive}"',
        f'output="{output}"',
        f'mlflow.tracking_uri="sqlite:///{output.parent / "mlflow.db"}"',
        *overrides,
    ]
    return [
        *head,
        str(REPO / "jobs" / "classify.toml"),
        *[a for s in sets for a in ("--set", s)],
        "--no-progress",
    ]


def read_vmb(output: Path) -> list[dict]:
    import pyarrow.dataset as pads

    t = (
        pads.dataset(str(output / "clips"), format="parquet")
        .to_table(columns=["video_uri", "clip_index", "labels"])
        .to_pylist()
    )
    return [
        {"video": Path(r["video_uri"]).name, "clip": int(r["clip_index"]), "label": r["labels"][0]}
        for r in t
    ]


def run_contender(
    kind: str, archive: Path, work: Path, overrides: list[str] | None = None, timeout: float = 1200
) -> tuple[float, list[dict]]:
    """Run one contender as a fresh process; returns (wall seconds, per-clip top-1 rows)."""
    work.mkdir(parents=True, exist_ok=True)
    env = subprocess_env(
        PYTHONPATH=str(REPO),
        MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
        VMB_CACHE_DIR=str(work.parent / "vmb-cache"),
    )  # cold for the first vmb run
    if kind in ("plain", "raydata"):
        out = work / f"{kind}.json"
        wall, _ = run_logged(
            [sys.executable, "-m", "bench.peers_bench", kind, str(archive), str(out)], timeout, env
        )
        return wall, json.loads(out.read_text())
    output = work / "out"
    shutil.rmtree(output, ignore_errors=True)
    wall, proc = run_logged(vmb_command(archive, output, overrides or []), timeout, env)
    m = re.search(r"\(([\d.]+) s processing, ([\d.]+) s total\)", proc.stdout)
    if m:  # where the process's time went: run_job's streaming part, run_job in all, the rest
        TIMINGS.append(
            {"processing_s": float(m.group(1)), "run_job_s": float(m.group(2)), "process_s": wall}
        )
    return wall, read_vmb(output)


TIMINGS: list[dict] = []


def agreement(rows: list[dict], ref: list[dict]) -> tuple[float, int]:
    want = {(r["video"], r["clip"]): r["label"] for r in ref}
    got = {(r["video"], r["clip"]): r["label"] for r in rows}
    common = set(want) & set(got)
    if not common:
        return float("nan"), 0
    return sum(want[k] == got[k] for k in common) / len(common), len(common)


def run(settings: Settings) -> dict:
    archive = inputs.peers_archive(settings.quick)
    n_clips = inputs.clips_in(archive)
    repeats = 1 if settings.quick else settings.extra.get("peer_repeats", 1)
    contenders = {
        "plain loop": ("plain", None),
        "Ray Data": ("raydata", None),
        "vmb": ("vmb", VMB_SETTINGS),
        "vmb precision=bf16": ("vmb", BF16_SETTINGS),
        "vmb runtime=torch (exact)": ("vmb", TORCH_SETTINGS),
    }
    walls: dict[str, list[float]] = {k: [] for k in contenders}
    outputs: dict[str, list[dict]] = {}
    loads: dict[str, list[float]] = {k: [] for k in contenders}
    timings: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="vmb-peers-") as tmp:
        for r in range(repeats):
            for name, (kind, overrides) in contenders.items():
                import os

                log(f"peers: {name} on {n_clips} clips (round {r + 1}/{repeats})")
                loads[name].append(round(os.getloadavg()[0], 2))
                TIMINGS.clear()
                wall, rows = run_contender(kind, archive, Path(tmp) / f"{kind}-{r}", overrides)
                walls[name].append(wall)
                if TIMINGS:
                    timings.setdefault(name, []).append(dict(TIMINGS[-1]))
                outputs[name] = rows
    ref = outputs["plain loop"]
    table = {}
    for name in contenders:
        clips = len(outputs[name])
        agree, compared = agreement(outputs[name], ref)
        table[name] = {
            "wall_s": median(walls[name]),
            "walls": walls[name],
            "clips": clips,
            "clips_per_s": clips / median(walls[name]),
            "spread": spread(walls[name]),
            "top1_agreement": agree,
            "compared": compared,
            "load": loads[name],
            "settings": contenders[name][1],
            "timings": timings.get(name, []),
        }
    base = table["plain loop"]["clips_per_s"]
    ray_base = table["Ray Data"]["clips_per_s"]
    for name in contenders:
        table[name]["vs_plain"] = table[name]["clips_per_s"] / base
        table[name]["vs_ray_data"] = table[name]["clips_per_s"] / ray_base
    payload = {
        "archive": str(archive),
        "clips_expected": n_clips,
        "repeats": repeats,
        "batch_size": BATCH,
        "contenders": table,
    }
    save("peers", settings, payload)
    return payload


def run_sweep(settings: Settings) -> dict:
    """One ``vmb run`` per candidate setting on the ~120-clip sweep archive."""
    import os

    archive = inputs.sweep_archive(settings.quick)
    rows = {}
    items = list(SWEEP.items())[:2] if settings.quick else list(SWEEP.items())
    with tempfile.TemporaryDirectory(prefix="vmb-sweep-") as tmp:
        for i, (name, overrides) in enumerate(items):
            log(f"sweep: {name}")
            load = round(os.getloadavg()[0], 2)
            wall, out = run_contender("vmb", archive, Path(tmp) / f"s{i}", overrides)
            rows[name] = {
                "overrides": overrides,
                "wall_s": wall,
                "clips": len(out),
                "clips_per_s": len(out) / wall,
                "load": load,
            }
    payload = {"archive": str(archive), "clips_expected": inputs.clips_in(archive), "sweep": rows}
    save("sweep", settings, payload)
    return payload


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="one peers contender (used by the peers benchmark)")
    p.add_argument("kind", choices=["plain", "raydata"])
    p.add_argument("archive")
    p.add_argument("out")
    a = p.parse_args()
    (plain_loop if a.kind == "plain" else ray_data)(a.archive, a.out)

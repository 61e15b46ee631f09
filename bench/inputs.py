"""Deterministic synthetic archives for the benchmarks, generated once and cached under .vmb/bench/.

Each video pans and zooms across one of the photos bundled with scikit-image (the demo archive's
subjects, so an ImageNet classifier has something real to name), with a fixed film-grain
pattern on top so the encoder spends bits on texture as it would on camera footage. Videos are
H.264 (libx264, preset veryfast, CRF 23, x264's default 250-frame GOP with B-frames), yuv420p,
25 fps: what a typical archive holds. Frames are generated and encoded one at a time, so
minutes of 1080p never sit in memory.

An archive folder holds its videos and ``recipe.json`` (the recipe + each file's size);
a folder whose recipe matches is reused as is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import CACHE, log

RECIPE_VERSION = 2
FPS = 25
RESOLUTIONS = {"180p": (320, 180), "360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}


@dataclass(frozen=True)
class VideoRecipe:
    name: str
    resolution: str
    seconds: float
    photo: int  # index into pipeline.demo_archive.SAMPLES
    seed: int

    @property
    def size(self) -> tuple[int, int]:
        return RESOLUTIONS[self.resolution]

    @property
    def num_frames(self) -> int:
        return max(2, round(self.seconds * FPS))


def _frames(recipe: VideoRecipe) -> Iterator[np.ndarray]:
    from pipeline.demo_archive import SAMPLES, load_photo

    photo = load_photo(SAMPLES[recipe.photo % len(SAMPLES)])
    width, height = recipe.size
    img_h, img_w = photo.shape[:2]
    aspect = width / height
    widest = min(img_w, img_h * aspect)
    rng = np.random.default_rng(recipe.seed)
    grain = rng.normal(0, 4, size=(4, height, width, 1)).astype(np.int16)  # a small grain bank
    period = rng.uniform(6.0, 12.0)  # seconds per pan cycle
    phase = rng.uniform(0, 2 * math.pi)
    pil = Image.fromarray(photo)
    for i in range(recipe.num_frames):
        s = (i / FPS) / period * 2 * math.pi + phase
        box_w = widest * (0.75 + 0.2 * math.sin(s * 0.7))
        box_h = box_w / aspect
        x0 = (img_w - box_w) * (0.5 + 0.5 * math.sin(s))
        y0 = (img_h - box_h) * (0.5 + 0.5 * math.cos(s * 0.8))
        frame = np.asarray(
            pil.resize(
                (width, height), Image.Resampling.BILINEAR, box=(x0, y0, x0 + box_w, y0 + box_h)
            )
        )
        yield np.clip(frame.astype(np.int16) + grain[i % 4], 0, 255).astype(np.uint8)


def encode(recipe: VideoRecipe, path: Path) -> None:
    import av

    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height = recipe.size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for frame in _frames(recipe):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)


def build_archive(name: str, recipes: list[VideoRecipe]) -> Path:
    """The folder of ``recipes`` under .vmb/bench/<name>/, generated on first use."""
    root = CACHE / name
    state = root / "recipe.json"
    want = {"version": RECIPE_VERSION, "videos": [asdict(r) for r in recipes]}
    if state.exists():
        have = json.loads(state.read_text())
        if have.get("recipe") == want and all((root / f"{r.name}.mp4").exists() for r in recipes):
            return root
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("*.mp4"):
        old.unlink()
    log(
        f"generating archive {name} ({len(recipes)} videos, "
        f"{sum(r.seconds for r in recipes):.0f} s of video) under {root}"
    )
    sizes = {}
    for r in recipes:
        encode(r, root / f"{r.name}.mp4")
        sizes[r.name] = (root / f"{r.name}.mp4").stat().st_size
    state.write_text(json.dumps({"recipe": want, "bytes": sizes}, indent=1))
    return root


def videos(root: Path) -> list[Path]:
    return sorted(root.glob("*.mp4"))


# The archives ---------------------------------------------------------------------------------


def decode_archive(quick: bool) -> Path:
    """One video per resolution (decode speed per resolution)."""
    secs = {"360p": 2, "720p": 2, "1080p": 1} if quick else {"360p": 30, "720p": 12, "1080p": 6}
    return build_archive(
        "decode-quick" if quick else "decode",
        [
            VideoRecipe(f"{res}", res, s, photo=i, seed=100 + i)
            for i, (res, s) in enumerate(secs.items())
        ],
    )


PEER_LENGTHS_S = (2, 4, 8, 15, 20, 30, 45, 60, 90, 120, 200)  # 594 s, 2 s to over 3 minutes


def peers_archive(quick: bool) -> Path:
    """360p videos from 2 s to 200 s: >= 500 clips of 8 frames every 4th frame (span 29)."""
    lengths = (3,) if quick else PEER_LENGTHS_S
    return build_archive(
        "peers-quick" if quick else "peers",
        [
            VideoRecipe(f"v{i:02d}_{s}s", "360p", s, photo=i, seed=200 + i)
            for i, s in enumerate(lengths)
        ],
    )


def sweep_archive(quick: bool) -> Path:
    """A smaller 360p archive (~120 clips) for the settings sweep and the overlap figure."""
    lengths = (3,) if quick else (20, 40, 80)
    return build_archive(
        "sweep-quick" if quick else "sweep",
        [
            VideoRecipe(f"s{i:02d}_{s}s", "360p", s, photo=i + 1, seed=300 + i)
            for i, s in enumerate(lengths)
        ],
    )


def overlap_archive(quick: bool) -> Path:
    """360p videos of 1 to 2 minutes: ~250 clips, so start-up is a small part of the run."""
    lengths = (3,) if quick else (60, 100, 130)
    return build_archive(
        "overlap-quick" if quick else "overlap",
        [
            VideoRecipe(f"o{i:02d}_{s}s", "360p", s, photo=i + 2, seed=400 + i)
            for i, s in enumerate(lengths)
        ],
    )


def many_short_archive(count: int) -> Path:
    """``count`` short (2 s, 240p-ish 360p) videos for the memory growth figure."""
    return build_archive(
        f"short-{count}",
        [VideoRecipe(f"m{i:03d}", "360p", 2, photo=i, seed=500 + i) for i in range(count)],
    )


def clips_in(root: Path, clip_len: int = 8, frame_interval: int = 4) -> int:
    """Sliding-window clips the classify job cuts from the archive (non-overlapping spans)."""
    span = (clip_len - 1) * frame_interval + 1
    total = 0
    for r in json.loads((root / "recipe.json").read_text())["recipe"]["videos"]:
        n = max(2, round(r["seconds"] * FPS))
        total += 1 if n < span else (n - span) // span + 1
    return total


# Archive scale: many names, few encodes ---------------------------------------------------------

SHORT_ENCODES = 6  # distinct 2 s clips behind every name of the scale archives
VIDEOS_PER_FOLDER = 100


def short_encodes() -> list[Path]:
    """Six distinct 2 s 180p H.264 clips (50 frames: one classify clip of 8 frames every 4th)."""
    root = build_archive(
        "short-encodes",
        [VideoRecipe(f"e{i}", "180p", 2, photo=i, seed=600 + i) for i in range(SHORT_ENCODES)],
    )
    return videos(root)


def many_names_archive(count: int) -> Path:
    """``count`` videos under distinct names in nested folders (``dNNNN/vNNNNNN.mp4``, 100 per
    folder), each a hard link to one of :func:`short_encodes` (a copy where links fail).

    Distinct names give distinct ``video_id``s, so the pipeline treats every name as its own
    video; the encoder runs six times, not ``count`` times, and the disk holds six files. The
    folder holds nothing but the videos (its record is ``archive-<count>.json`` beside it).
    """
    import os
    import shutil

    encodes = short_encodes()
    root = CACHE / f"archive-{count}"
    state = CACHE / f"archive-{count}.json"
    want = {
        "count": count,
        "per_folder": VIDEOS_PER_FOLDER,
        "encodes": [[p.name, p.stat().st_size] for p in encodes],
    }
    if state.exists() and json.loads(state.read_text()) == want:
        return root
    log(f"linking archive-{count} ({count} names over {len(encodes)} encodes) under {root}")
    shutil.rmtree(root, ignore_errors=True)
    for i in range(count):
        folder = root / f"d{i // VIDEOS_PER_FOLDER:04d}"
        if i % VIDEOS_PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"v{i:06d}.mp4"
        try:
            os.link(encodes[i % len(encodes)], target)
        except OSError:
            shutil.copyfile(encodes[i % len(encodes)], target)
    state.write_text(json.dumps(want))
    return root


def archive_videos(root: Path) -> list[Path]:
    """Every video of a :func:`many_names_archive`, in listing order."""
    return sorted(root.glob("d*/*.mp4"))


def manifest(rows: int, real: int = 20) -> Path:
    """A ``.txt`` manifest of ``rows`` URIs: the first ``real`` name the videos of
    ``many_names_archive(real)``, the rest name distinct objects that do not exist (each one
    becomes a ``SourceRead`` row of the ``videos`` table, never a clip).

    A million real names would need a million directory entries; missing objects make the
    listing as long at no disk cost, and the first rows still give the job something to decode,
    so the time to the first clip can be compared between a short and a long manifest (the
    short one is the long one's first ``rows`` lines).
    """
    path = CACHE / f"manifest-{rows}-{real}real.txt"
    if path.exists():
        return path
    present = [str(p) for p in archive_videos(many_names_archive(real))][: min(real, rows)]
    missing = CACHE / "missing"
    log(f"writing a manifest of {rows:,} rows ({len(present)} real) at {path}")
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        f.writelines(f"{p}\n" for p in present)
        f.writelines(
            f"{missing}/m{i // 1000:04d}/x{i:07d}.mp4\n" for i in range(len(present), rows)
        )
    tmp.replace(path)
    return path

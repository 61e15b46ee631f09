"""The embedded demo archive: short H.264 videos made from photos that ship with scikit-image.

``make_sample_archive`` animates each photo with a slow, smooth pan and zoom (the "Ken Burns"
effect: a crop box with the output's aspect ratio glides across the photo and is resampled
bicubically at sub-pixel positions) so that the clips have real motion, and writes one MP4 per
photo plus ``manifest.csv`` (``uri,label``). Everything is read from scikit-image's bundled
``data`` folder, never fetched over the network, and the result is deterministic for fixed
arguments.

Each photo's subject is a class an ImageNet classifier names reliably (EfficientNet-Lite0 puts
one of ``SamplePhoto.imagenet_labels`` first on these crops), so the demo and the tests can check
that a classify job sees what is in the videos: see ``expected_subjects`` and ``subject_matches``.
The photos: ``chelsea`` (cat), ``coffee`` (espresso cup), ``rocket`` (launch pad),
``motorcycle_left`` (from the stereo pair), ``camera`` (the greyscale "cameraman": a tripod) and
``astronaut``, the exception: ImageNet has no person or astronaut class, so it has no acceptable
labels and serves as an "unknown" example.

Re-running is cheap: a sidecar ``.sample.json`` records the recipe and the SHA-256 of every file
written; files whose content still matches are left untouched (mtimes unchanged).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from pipeline.media import encode_mp4_bytes
from pipeline.uris import filesystem, join, write_bytes_atomic

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
STATE_NAME = ".sample.json"
# Bump when the rendering changes, so existing archives are regenerated.
RECIPE_VERSION = 1
SAMPLE_CRF = 20


@dataclass(frozen=True)
class SamplePhoto:
    """One bundled photo, how to frame it, and what a classifier should call it.

    Attributes:
        name: video file stem, e.g. ``"cat"`` for ``cat.mp4``.
        filename: file in ``skimage.data``'s bundled folder.
        subject: the label written to the manifest.
        imagenet_labels: ImageNet class names (first synonym, as in
            ``blocks/data/imagenet_classes.txt``) that count as naming the subject; empty when
            ImageNet has no such class.
        center: normalised ``(x, y)`` of the subject; the tight framing is centred on it.
        zoom: ``(tight, wide)`` crop widths as fractions of the widest crop with the video's
            aspect ratio that fits the photo; chosen so every framing in between still shows
            the subject to a classifier.
        pan: how far the wide framing is shifted off ``center``, as a fraction of the room
            left around it (0: pure zoom).
    """

    name: str
    filename: str
    subject: str
    imagenet_labels: tuple[str, ...]
    center: tuple[float, float] = (0.5, 0.5)
    zoom: tuple[float, float] = (0.6, 1.0)
    pan: float = 0.5

    def __post_init__(self) -> None:
        if not all(0.0 <= c <= 1.0 for c in self.center):
            raise ValueError(f"{self.name}: center must be normalised, got {self.center}")
        if not 0.1 <= self.zoom[0] < self.zoom[1] <= 1.0:
            raise ValueError(f"{self.name}: zoom must be 0.1 <= tight < wide <= 1, got {self.zoom}")
        if not 0.0 <= self.pan <= 1.0:
            raise ValueError(f"{self.name}: pan must be in [0, 1], got {self.pan}")


SAMPLES: tuple[SamplePhoto, ...] = (
    SamplePhoto(
        "cat",
        "chelsea.png",
        "cat",
        ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"),
        center=(0.5, 0.45),
    ),
    SamplePhoto("coffee", "coffee.png", "coffee cup", ("espresso", "cup", "coffee mug")),
    SamplePhoto(
        "rocket",
        "rocket.jpg",
        "rocket",
        ("missile", "projectile", "space shuttle"),
        center=(0.52, 0.45),
        zoom=(0.45, 0.6),
        pan=0.15,
    ),
    SamplePhoto(
        "motorcycle",
        "motorcycle_left.png",
        "motorcycle",
        ("moped", "motor scooter"),
        center=(0.5, 0.55),
        zoom=(0.65, 1.0),
    ),
    SamplePhoto("cameraman", "camera.png", "tripod", ("tripod",), center=(0.45, 0.5)),
    SamplePhoto(
        "astronaut", "astronaut.png", "astronaut", (), center=(0.45, 0.35), zoom=(0.55, 1.0)
    ),
)


class SampleArchiveError(RuntimeError):
    """A bundled photo is missing from the installed scikit-image."""


def make_sample_archive(
    dest_dir: str,
    *,
    seconds: float = 4.0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write (or verify) the demo archive under ``dest_dir``.

    Args:
        dest_dir: local folder or any fsspec URL; created when missing.
        seconds: length of every video.
        fps: frame rate.
        size: ``(width, height)`` of the videos; both even (H.264 4:2:0).
        seed: varies each video's pan and zoom path.
        storage_options: fsspec options for ``dest_dir``.

    Returns:
        The video URIs, in ``SAMPLES`` order (also listed in ``manifest.csv`` with their
        subjects).

    Raises:
        ValueError: bad ``seconds``, ``fps`` or ``size``.
        SampleArchiveError: a photo is not bundled with the installed scikit-image.
    """
    width, height = size
    if seconds <= 0 or fps <= 0:
        raise ValueError(f"seconds and fps must be positive, got {seconds}, {fps}")
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"size must be even and at least 16x16, got {size}")
    num_frames = max(2, round(seconds * fps))
    fs, root = filesystem(dest_dir, storage_options)
    fs.makedirs(root, exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        dest_dir = root  # absolute, so the manifest does not depend on the working directory
    state_uri = join(dest_dir, STATE_NAME)
    state = _read_state(fs, join(root, STATE_NAME))

    uris, hashes = [], {}
    for index, photo in enumerate(SAMPLES):
        file_name = f"{photo.name}.mp4"
        uri = join(dest_dir, file_name)
        # Normalised through JSON (tuples -> lists) to compare equal with the stored copy.
        recipe = json.loads(
            json.dumps(
                {
                    "version": RECIPE_VERSION,
                    "photo": asdict(photo),
                    "frames": num_frames,
                    "fps": fps,
                    "size": [width, height],
                    "seed": seed,
                    "index": index,
                    "crf": SAMPLE_CRF,
                }
            )
        )
        known = state.get(file_name, {})
        unchanged = known.get("recipe") == recipe and (
            _sha256_of(fs, join(root, file_name)) == known.get("sha256")
        )
        if unchanged:
            hashes[file_name] = known
        else:
            frames = ken_burns(
                load_photo(photo),
                num_frames,
                (width, height),
                center=photo.center,
                zoom=photo.zoom,
                pan=photo.pan,
                seed=seed * 1009 + index,
            )
            data = encode_mp4_bytes(frames, fps, crf=SAMPLE_CRF)
            write_bytes_atomic(uri, data, storage_options)
            hashes[file_name] = {"recipe": recipe, "sha256": hashlib.sha256(data).hexdigest()}
            logger.info(
                "wrote sample video %s (%d frames, %d bytes)", file_name, num_frames, len(data)
            )
        uris.append(uri)

    manifest = _manifest_bytes(uris, [p.subject for p in SAMPLES])
    _write_if_changed(
        fs, join(root, MANIFEST_NAME), join(dest_dir, MANIFEST_NAME), manifest, storage_options
    )
    state_bytes = json.dumps(hashes, indent=1, sort_keys=True).encode()
    _write_if_changed(fs, join(root, STATE_NAME), state_uri, state_bytes, storage_options)
    return uris


def expected_subjects() -> dict[str, str]:
    """Video file name -> subject, e.g. ``{"cat.mp4": "cat", ...}``."""
    return {f"{p.name}.mp4": p.subject for p in SAMPLES}


def subject_matches(video: str, labels: Iterable[str]) -> bool:
    """Whether any of ``labels`` (e.g. a clip's top-k) names the subject of sample ``video``.

    Args:
        video: a sample video's URI or file name (``".../cat.mp4"``).
        labels: ImageNet class names; a full synonym line (``"tabby, tabby cat"``) matches by
            its first name.

    Raises:
        KeyError: ``video`` is not one of the sample videos.
    """
    name = os.path.basename(video.rstrip("/"))
    by_file = {f"{p.name}.mp4": p for p in SAMPLES}
    if name not in by_file:
        raise KeyError(f"{name!r} is not a sample video; known: {sorted(by_file)}")
    wanted = {label.lower() for label in by_file[name].imagenet_labels}
    return any(label.split(",")[0].strip().lower() in wanted for label in labels)


def load_photo(photo: SamplePhoto) -> np.ndarray:
    """The bundled photo as ``(H, W, 3)`` uint8 RGB (grey photos are replicated to 3 channels).

    Raises:
        SampleArchiveError: the file is not in scikit-image's bundled data folder.
    """
    import skimage.data

    path = os.path.join(skimage.data.data_dir, photo.filename)
    if not os.path.isfile(path):
        raise SampleArchiveError(f"{photo.filename} is not bundled with this scikit-image ({path})")
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def ken_burns(
    image: np.ndarray,
    num_frames: int,
    size: tuple[int, int],
    *,
    center: tuple[float, float] = (0.5, 0.5),
    zoom: tuple[float, float] = (0.6, 1.0),
    pan: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """Animate a still with a smooth pan and zoom.

    A crop box with the aspect ratio of ``size`` glides (gently eased) between a tight framing
    centred on ``center`` and a wide framing shifted to one side, always inside the photo; each
    frame is the box resampled bicubically, at sub-pixel position, to ``size``. ``seed`` picks
    the direction (zoom in or out), the side and small jitters.

    Args:
        image: ``(H, W, 3)`` uint8.
        num_frames: number of frames, >= 1.
        size: ``(width, height)`` of the output.
        center: normalised ``(x, y)`` the tight framing is centred on.
        zoom: ``(tight, wide)`` box widths as fractions of the widest box that fits.
        pan: shift of the wide framing off ``center``, as a fraction of the room around it.
        seed: chooses the path.

    Returns:
        ``(num_frames, height, width, 3)`` uint8.

    Raises:
        ValueError: bad image, ``num_frames`` or ``zoom``.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 0.0 < zoom[0] <= zoom[1] <= 1.0:
        raise ValueError(f"zoom must satisfy 0 < tight <= wide <= 1, got {zoom}")
    out_w, out_h = size
    img_h, img_w = image.shape[:2]
    aspect = out_w / out_h
    widest = min(img_w, img_h * aspect)
    rng = np.random.default_rng(seed)

    def clamp_origin(cx: float, cy: float, box_w: float) -> tuple[float, float]:
        box_h = box_w / aspect
        return (
            float(np.clip(cx - box_w / 2, 0.0, img_w - box_w)),
            float(np.clip(cy - box_h / 2, 0.0, img_h - box_h)),
        )

    cx, cy = center[0] * img_w, center[1] * img_h
    tight_w = widest * zoom[0] * rng.uniform(1.0, 1.08)
    tight_xy = clamp_origin(
        cx + rng.uniform(-0.03, 0.03) * tight_w, cy + rng.uniform(-0.03, 0.03) * tight_w, tight_w
    )
    wide_w = widest * zoom[1] * rng.uniform(0.95, 1.0)
    # Shift the wide framing to one side (and a little up or down), so the clip pans as well as
    # zooms.
    side = rng.choice([-1.0, 1.0])
    room_x, room_y = (img_w - wide_w) / 2, (img_h - wide_w / aspect) / 2
    wide_xy = clamp_origin(
        cx + side * pan * room_x, cy + rng.uniform(-0.5, 0.5) * pan * room_y, wide_w
    )
    (start_w, start_xy), (end_w, end_xy) = ((tight_w, tight_xy), (wide_w, wide_xy))
    if rng.random() < 0.5:
        (start_w, start_xy), (end_w, end_xy) = (end_w, end_xy), (start_w, start_xy)

    pil = Image.fromarray(image)
    frames = np.empty((num_frames, out_h, out_w, 3), np.uint8)
    for i in range(num_frames):
        t = i / (num_frames - 1) if num_frames > 1 else 0.0
        # Half linear, half smoothstep: eased, but still moving on the first and last frames.
        t = 0.5 * t + 0.5 * t * t * (3.0 - 2.0 * t)
        box_w = start_w + (end_w - start_w) * t
        x0 = start_xy[0] + (end_xy[0] - start_xy[0]) * t
        y0 = start_xy[1] + (end_xy[1] - start_xy[1]) * t
        box = (x0, y0, x0 + box_w, y0 + box_w / aspect)
        frames[i] = np.asarray(pil.resize((out_w, out_h), Image.Resampling.BICUBIC, box=box))
    return frames


def _manifest_bytes(uris: list[str], labels: list[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["uri", "label"])
    writer.writerows(zip(uris, labels))
    return buf.getvalue().encode()


def _read_state(fs, path: str) -> dict[str, Any]:
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError):
        logger.warning("ignoring unreadable %s; regenerating the sample archive", path)
        return {}


def _sha256_of(fs, path: str) -> str | None:
    try:
        return hashlib.sha256(fs.cat_file(path)).hexdigest()
    except FileNotFoundError:
        return None


def _write_if_changed(fs, path: str, uri: str, data: bytes, storage_options) -> None:
    try:
        if fs.cat_file(path) == data:
            return
    except FileNotFoundError:
        pass
    write_bytes_atomic(uri, data, storage_options)

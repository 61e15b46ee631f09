"""pipeline.media: clips round-trip through MP4 on any fsspec URL."""

from __future__ import annotations

import io
import os
import uuid

import decord
import fsspec
import numpy as np
import pytest

from pipeline import media
from pipeline.media import MediaEncodeError, clip_media_uri, encode_clip, safe_path_segment
from tests.videos import synth_frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def read_all(source) -> tuple[np.ndarray, float]:
    vr = decord.VideoReader(source)
    return vr.get_batch(list(range(len(vr)))).asnumpy(), vr.get_avg_fps()


@pytest.fixture()
def memory_root():
    """A unique memory:// folder, removed afterwards (the memory filesystem is process-global)."""
    root = f"memory://vmb-test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_round_trip_local(tmp_path):
    frames = synth_frames(16, (64, 48), "moving", seed=1)
    uri = str(tmp_path / "deep" / "er" / "clip.mp4")  # parents are created
    written = encode_clip(frames, uri, fps=8.0)

    assert written == os.path.getsize(uri)
    decoded, fps = read_all(uri)
    assert decoded.shape == frames.shape
    assert fps == pytest.approx(8.0)
    assert psnr(decoded, frames) > 38
    assert os.listdir(tmp_path / "deep" / "er") == ["clip.mp4"]  # no temporary left behind


def test_round_trip_memory(memory_root):
    frames = synth_frames(10, (64, 48), "moving", seed=2)
    uri = clip_media_uri(memory_root, "ifnet", "vid0", 3)
    written = encode_clip(frames, uri, fps=25.0)

    fs = fsspec.filesystem("memory")
    data = fs.cat_file(uri)
    assert written == len(data)
    assert [p.rsplit("/", 1)[-1] for p in fs.find(memory_root)] == ["000003.mp4"]
    decoded, fps = read_all(io.BytesIO(data))
    assert decoded.shape == frames.shape and fps == pytest.approx(25.0)
    assert psnr(decoded, frames) > 38


def test_odd_size_is_padded_by_edge_replication(tmp_path):
    # 45x31 -> 46x32 (not 47 -> 48: decord 0.6.0 mis-decodes width 48, see tests/videos.py).
    frames = synth_frames(8, (45, 31), "moving", seed=3)
    uri = str(tmp_path / "odd.mp4")
    encode_clip(frames, uri, fps=10.0)
    decoded, _ = read_all(uri)
    assert decoded.shape == (8, 32, 46, 3)
    # 4:2:0 chroma on saturated sharp edges limits PSNR on a frame this small.
    assert psnr(decoded[:, :31, :45], frames) > 30
    # The extra row/column repeats the edge (up to compression error).
    edge = decoded.astype(np.int16)
    assert np.abs(edge[:, 31, :45] - edge[:, 30, :45]).mean() < 6
    assert np.abs(edge[:, :31, 45] - edge[:, :31, 44]).mean() < 6


def test_yuv444p_keeps_exact_odd_size(tmp_path):
    frames = synth_frames(6, (45, 31), "moving", seed=4)
    uri = str(tmp_path / "odd444.mp4")
    encode_clip(frames, uri, fps=10.0, pix_fmt="yuv444p")
    decoded, _ = read_all(uri)
    assert decoded.shape == frames.shape
    assert psnr(decoded, frames) > 38


def test_overwrite_replaces_and_fractional_fps(tmp_path):
    uri = str(tmp_path / "c.mp4")
    encode_clip(synth_frames(4, (64, 48), "static"), uri, fps=10.0)
    encode_clip(synth_frames(12, (64, 48), "moving"), uri, fps=30000 / 1001)
    vr = decord.VideoReader(uri)
    assert len(vr) == 12
    assert vr.get_avg_fps() == pytest.approx(29.97, abs=0.01)


def test_failed_local_write_leaves_no_temporary(tmp_path, monkeypatch):
    def broken_mv(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "mv", broken_mv)
    with pytest.raises(OSError, match="disk full"):
        encode_clip(synth_frames(4, (64, 48)), str(tmp_path / "x.mp4"), fps=10.0)
    assert os.listdir(tmp_path) == []


def test_encoding_is_deterministic():
    frames = synth_frames(6, (64, 48), "moving", seed=5)
    assert media.encode_mp4_bytes(frames, 12.0) == media.encode_mp4_bytes(frames, 12.0)


@pytest.mark.parametrize(
    "frames,kwargs,error",
    [
        (np.zeros((4, 16, 16, 3), np.float32), {}, ValueError),
        (np.zeros((16, 16, 3), np.uint8), {}, ValueError),
        (np.zeros((0, 16, 16, 3), np.uint8), {}, ValueError),
        (np.zeros((2, 16, 16, 3), np.uint8), {"codec": "mjpeg"}, ValueError),
        (np.zeros((2, 16, 16, 3), np.uint8), {"crf": 60}, ValueError),
        (np.zeros((2, 16, 16, 3), np.uint8), {"fps": 0.0}, ValueError),
        (np.zeros((2, 16, 16, 3), np.uint8), {"pix_fmt": "rgb24"}, ValueError),
    ],
)
def test_bad_arguments_are_value_errors(tmp_path, frames, kwargs, error):
    args = {"fps": 10.0, **kwargs}
    with pytest.raises(error):
        encode_clip(frames, str(tmp_path / "x.mp4"), **args)
    assert not os.path.exists(tmp_path / "x.mp4")


def test_encoder_failure_is_typed(monkeypatch):
    def boom(*args, **kwargs):
        raise ValueError("simulated encoder refusal")

    monkeypatch.setattr(media.av.VideoFrame, "from_ndarray", boom)
    with pytest.raises(MediaEncodeError, match="libx264"):
        media.encode_mp4_bytes(np.zeros((2, 16, 16, 3), np.uint8), 10.0)


def test_clip_media_uri_layout():
    assert clip_media_uri("s3://bucket/out/", "efficientnet-lite0", "abc123", 7) == (
        "s3://bucket/out/media/efficientnet-lite0/abc123/000007.mp4"
    )
    assert clip_media_uri("/tmp/out", "rife/ifnet@v4.6 (fp16)", "v", 0) == (
        "/tmp/out/media/rife_ifnet_v4.6_fp16/v/000000.mp4"
    )
    assert safe_path_segment("../../etc") == "etc"
    assert safe_path_segment(".hidden") == "hidden"
    for bad in [
        ("out", "m", "a/b", 0),
        ("out", "m", "..", 0),
        ("out", "m", "", 0),
        ("out", "m", "v", -1),
        ("out", "m", "v", 1.5),
        ("out", "///", "v", 0),
    ]:
        with pytest.raises(ValueError):
            clip_media_uri(*bad)

"""pipeline.demo_archive: the demo archive decodes, moves, shows what it says, and is idempotent."""

from __future__ import annotations

import csv
import os

import decord
import fsspec
import numpy as np
import pytest

from pipeline.demo_archive import (
    MANIFEST_NAME,
    SAMPLES,
    expected_subjects,
    ken_burns,
    load_photo,
    make_sample_archive,
    subject_matches,
)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The demo archive at its default settings (about 3 s to make)."""
    dest = tmp_path_factory.mktemp("sample")
    return str(dest), make_sample_archive(str(dest))


def mtimes(folder: str) -> dict[str, int]:
    return {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)}


def test_videos_decode_with_promised_geometry(archive):
    dest, uris = archive
    assert [os.path.basename(u) for u in uris] == list(expected_subjects())
    total = 0
    for uri in uris:
        assert os.path.isabs(uri) and os.path.dirname(uri) == dest
        vr = decord.VideoReader(uri)
        assert len(vr) == 100
        assert vr.get_avg_fps() == pytest.approx(25.0)
        assert vr[0].shape == (240, 320, 3)
        total += os.path.getsize(uri)
    assert total < 3 * 1024 * 1024


def test_videos_have_motion(archive):
    _, uris = archive
    for uri in uris:
        frames = decord.VideoReader(uri).get_batch(list(range(100))).asnumpy().astype(np.int16)
        steps = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # (99,)
        assert steps.min() > 0.05, f"{uri}: a pair of consecutive frames is (nearly) identical"
        assert np.abs(frames[0] - frames[-1]).mean() > 5, f"{uri}: first and last frame too alike"


def test_manifest_lists_videos_and_subjects(archive):
    dest, uris = archive
    with open(os.path.join(dest, MANIFEST_NAME)) as f:
        rows = list(csv.DictReader(f))
    assert [r["uri"] for r in rows] == uris
    assert {os.path.basename(r["uri"]): r["label"] for r in rows} == expected_subjects()
    assert expected_subjects()["cat.mp4"] == "cat"


def test_second_call_rewrites_nothing(archive):
    dest, uris = archive
    before = mtimes(dest)
    assert make_sample_archive(dest) == uris
    assert mtimes(dest) == before


def test_damaged_video_is_regenerated_alone(tmp_path):
    dest = str(tmp_path)
    uris = make_sample_archive(dest, seconds=0.4, fps=10, size=(96, 64))
    with open(uris[0], "rb") as f:
        original = f.read()
    with open(uris[0], "r+b") as f:
        f.truncate(100)
    before = mtimes(dest)
    make_sample_archive(dest, seconds=0.4, fps=10, size=(96, 64))
    after = mtimes(dest)
    with open(uris[0], "rb") as f:
        assert f.read() == original
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {os.path.basename(uris[0])}


def test_other_settings_regenerate(tmp_path):
    dest = str(tmp_path)
    make_sample_archive(dest, seconds=0.4, fps=10, size=(96, 64))
    uris = make_sample_archive(dest, seconds=0.4, fps=10, size=(128, 96), seed=1)
    assert decord.VideoReader(uris[0])[0].shape == (96, 128, 3)


def test_works_on_memory_filesystem():
    root = "memory://vmb-sample-test"
    try:
        uris = make_sample_archive(root, seconds=0.2, fps=10, size=(64, 48))
        fs = fsspec.filesystem("memory")
        assert all(u.startswith("memory://") and fs.size(u) > 0 for u in uris)
        assert fs.cat_file(f"{root}/{MANIFEST_NAME}").decode().startswith("uri,label\n")
    finally:
        fsspec.filesystem("memory").rm(root, recursive=True)


def test_bad_arguments(tmp_path):
    for kwargs in ({"size": (321, 240)}, {"size": (8, 8)}, {"seconds": 0}, {"fps": 0}):
        with pytest.raises(ValueError):
            make_sample_archive(str(tmp_path), **kwargs)


def test_ken_burns_is_deterministic_and_seeded():
    image = load_photo(SAMPLES[0])
    a = ken_burns(image, 5, (64, 48), seed=3)
    assert a.shape == (5, 48, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, ken_burns(image, 5, (64, 48), seed=3))
    assert not np.array_equal(a, ken_burns(image, 5, (64, 48), seed=4))


def test_subject_matches():
    assert subject_matches("/x/cat.mp4", ["tabby, tabby cat", "lynx"])
    assert subject_matches("coffee.mp4", ["plate", "espresso"])
    assert not subject_matches("cat.mp4", ["espresso"])
    assert not subject_matches("astronaut.mp4", ["football helmet"])  # no ImageNet class
    with pytest.raises(KeyError):
        subject_matches("dog.mp4", ["tabby"])


def test_classifier_names_the_subjects(archive):
    """EfficientNet-Lite0 (bundled ImageNet weights) puts an accepted label first on the videos."""
    effnet = pytest.importorskip("blocks.efficientnet_lite")
    import torch

    model = effnet.build_efficientnet_lite0(pretrained=True).eval()
    _, uris = archive
    for photo, uri in zip(SAMPLES, uris):
        if not photo.imagenet_labels:
            continue  # astronaut: ImageNet has no class for it
        frames = decord.VideoReader(uri).get_batch([0, 99]).asnumpy()  # both framings
        with torch.no_grad():
            top1 = model(effnet.preprocess(frames)).argmax(dim=1).tolist()
        names = [model.labels[i] for i in top1]
        assert all(subject_matches(uri, [n]) for n in names), f"{uri}: {names}"

"""Model runners on OpenVINO: same outputs as PyTorch, the on-disk graph cache, the conversion
check, and the spec checks that keep impossible runtime settings from reaching Ray."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from skimage import data

from pipeline.inference_runtime import (
    ConversionMismatch,
    OpenVINOGraph,
    RuntimeUnavailable,
    cache_dir,
    compile_for_cpu,
)
from pipeline.models import ClassifyModel, ModelConfigError, build_model, check_model_spec
from pipeline.spec import ModelSpec


def _photo_clips(n: int, t: int = 4, size: int = 224) -> np.ndarray:
    """(n, t, size, size, 3) uint8 clips of real photos (one photo per clip, slight shifts)."""
    photos = [data.chelsea(), data.coffee(), data.rocket(), data.astronaut()]
    clips = []
    for i in range(n):
        img = torch.from_numpy(photos[i % len(photos)]).permute(2, 0, 1)[None].float()
        img = torch.nn.functional.interpolate(img, size=(size + t, size + t), mode="bilinear")
        frames = [img[0, :, k : k + size, k : k + size].permute(1, 2, 0) for k in range(t)]
        clips.append(torch.stack(frames).round().clamp(0, 255).byte().numpy())
    return np.stack(clips)


def _runner(runtime: str, tmp_path, **options) -> ClassifyModel:
    spec = ModelSpec(
        name="frame-average", task="classify", batch_size=4, options={"runtime": runtime, **options}
    )
    return build_model(spec, output=str(tmp_path), clip_shape=(4, 224, 224))


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    return _photo_clips(4)


def test_openvino_runner_matches_pytorch_on_real_photos(tmp_path, clips):
    eager, compiled = _runner("torch", tmp_path), _runner("openvino", tmp_path)
    assert (eager.runtime, compiled.runtime) == ("torch", "openvino")
    want_feats, want_logits = eager.forward_graph(clips)
    feats, logits = compiled.forward_graph(clips)
    assert torch.allclose(feats, want_feats, atol=1e-4)
    assert torch.allclose(logits, want_logits, atol=1e-3)
    labels = [r.labels[0] for r in compiled.run(clips, [{}] * 4)]
    assert labels == [r.labels[0] for r in eager.run(clips, [{}] * 4)]
    assert labels[0] in {"tiger cat", "Egyptian cat", "tabby, tabby cat"}  # the chelsea photo


def test_a_short_last_batch_is_padded_and_other_clip_shapes_run_in_pytorch(tmp_path, clips):
    eager, compiled = _runner("torch", tmp_path), _runner("auto", tmp_path)
    assert compiled.runtime == "openvino"
    feats, _ = compiled.forward_graph(clips[:3])  # compiled for 4 clips
    assert feats.shape == (3, 1280)
    assert torch.allclose(feats, eager.forward_graph(clips[:3])[0], atol=1e-4)
    odd = clips[:2, :3]  # 3 frames, not the compiled 4: eager fallback, same numbers
    assert torch.allclose(compiled.forward_graph(odd)[0], eager.forward_graph(odd)[0], atol=1e-5)


def test_converted_graphs_are_cached_and_a_damaged_cache_is_rebuilt(tmp_path, clips, caplog):
    first = _runner("openvino", tmp_path, precision="bf16")
    again = _runner("openvino", tmp_path, precision="bf16")
    assert again._compiled.cached and again._compiled.key == first._compiled.key
    path = cache_dir() / f"{first._compiled.key}.xml"
    assert path.exists() and path.with_suffix(".bin").exists()
    want = first.forward_graph(clips)[1]
    assert torch.equal(again.forward_graph(clips)[1], want)
    path.write_text("<not a model")
    with caplog.at_level(logging.WARNING, logger="pipeline.inference_runtime"):
        rebuilt = _runner("openvino", tmp_path, precision="bf16")
    assert not rebuilt._compiled.cached and "unreadable cached graph" in caplog.text
    assert torch.allclose(rebuilt.forward_graph(clips)[1], want, atol=0.02 * want.abs().max())
    assert path.read_text().startswith("<?xml")


def test_bf16_stays_close_to_fp32(tmp_path, clips):
    fp32 = _runner("openvino", tmp_path).forward_graph(clips)[1]
    bf16 = _runner("openvino", tmp_path, precision="bf16").forward_graph(clips)[1]
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()
    assert torch.equal(bf16.argmax(-1), fp32.argmax(-1))


class _BranchOnContent(torch.nn.Module):
    """Data-dependent control flow: a trace records one branch only."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        x = x.float()
        return (x * 2 if x.mean() > 64 else x * 3,)


def test_a_graph_that_does_not_compute_the_module_is_refused(caplog):
    example = torch.zeros((2, 3, 4, 4, 3), dtype=torch.uint8)  # traced on the `x * 3` branch
    cached_before = set(cache_dir().glob("*.xml"))
    with pytest.raises(ConversionMismatch, match="differs from the eager model"):
        OpenVINOGraph(_BranchOnContent(), example, precision="fp32", threads=1)
    with pytest.raises(RuntimeUnavailable, match="could not convert"):
        compile_for_cpu(
            _BranchOnContent(), example, runtime="openvino", precision="fp32", threads=1
        )
    with caplog.at_level(logging.WARNING, logger="pipeline.inference_runtime"):
        assert (
            compile_for_cpu(
                _BranchOnContent(), example, runtime="auto", precision="fp32", threads=1
            )
            is None
        )
    assert "running it in PyTorch" in caplog.text
    assert set(cache_dir().glob("*.xml")) == cached_before  # a refused graph is never cached


def test_auto_stays_in_pytorch_where_openvino_cannot_follow(tmp_path):
    assert _runner("auto", tmp_path, compile=False).runtime == "openvino"
    assert _runner("auto", tmp_path, quantize="int8").runtime == "torch"
    assert _runner("torch", tmp_path).runtime == "torch"


@pytest.mark.parametrize(
    "model, message",
    [
        (
            ModelSpec(name="frame-average", options={"runtime": "onnx"}),
            "options.runtime must be one of",
        ),
        (ModelSpec(name="frame-average", options={"precision": "fp16"}), "options.precision"),
        (
            ModelSpec(name="ifnet-v4", weights="w.pth", options={"runtime": "openvino"}),
            "runs classify and embed models",
        ),
        (
            ModelSpec(name="frame-average", options={"runtime": "openvino", "compile": True}),
            "excludes \\['compile'\\]",
        ),
        (
            ModelSpec(name="frame-average", num_gpus=1, options={"runtime": "openvino"}),
            "excludes \\['num_gpus'\\]",
        ),
    ],
)
def test_runtime_settings_that_cannot_run_fail_before_ray(model, message):
    with pytest.raises(ModelConfigError, match=message):
        check_model_spec(model)

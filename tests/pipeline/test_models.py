"""Model wrappers without Ray: the HCRN temporal head over encoder features, and the checks that
keep untrained heads from producing labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import blocks
from blocks.registry import _REGISTRY, Preprocess
from pipeline.model_options import ClassifyOptions
from pipeline.models import ClassifyModel, ModelConfigError, build_model, check_model_spec
from pipeline.spec import ModelSpec, SpecError, parse_spec

HCRN = {
    "vision_dim": 1280,
    "module_dim": 32,
    "num_clips": 3,
    "frames_per_clip": 3,
    "num_classes": 4,
}


def test_hcrn_head_classifies_clips_of_num_clips_times_frames_per_clip(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "hcrn.pth"
    torch.save(blocks.create_block("hcrn-classifier", **HCRN).state_dict(), weights)
    runner = ClassifyModel(
        ModelSpec(
            name="hcrn-classifier",
            weights=str(weights),
            config=HCRN,
            options={"labels": ["a", "b", "c", "d"], "top_k": 2},
        ),
        output=str(tmp_path),
    )
    clips = np.random.default_rng(0).integers(0, 255, (2, 9, 64, 64, 3), dtype=np.uint8)
    out = runner.run(clips, [{}, {}])
    assert [len(r.labels) for r in out] == [2, 2] and out[0].feature.shape == (32,)
    assert set(out[0].labels) <= {"a", "b", "c", "d"}
    with pytest.raises(ValueError, match="num_clips \\* frames_per_clip"):
        runner.run(clips[:, :8], [{}, {}])


@pytest.mark.parametrize("name", ["lrcn", "convpool-lstm", "two-stream", "hcrn-classifier"])
def test_untrained_heads_need_weights_to_classify_but_not_to_embed(name):
    with pytest.raises(ModelConfigError, match="untrained"):
        check_model_spec(ModelSpec(name=name, task="classify"))
    if name != "hcrn-classifier":
        check_model_spec(ModelSpec(name=name, task="embed"))


def test_a_misspelt_option_is_a_spec_error_listing_the_valid_ones():
    with pytest.raises(SpecError) as err:
        parse_spec(
            {
                "input": "in",
                "output": "out",
                "models": [{"name": "frame-average", "options": {"precison": "bf16"}}],
            }
        )
    assert "models.0.options" in str(err.value) and "'precison'" in str(err.value)
    assert "precision" in str(err.value).split("valid options:")[1]


@pytest.mark.parametrize(
    "name, options, message",
    [
        (
            "ifnet-v4",
            {"top_k": 3},
            "unknown option 'top_k' for task 'motion'; valid options: .*interpolate",
        ),
        (
            "frame-average",
            {"interpolate": True},
            "unknown option 'interpolate' for task 'classify'",
        ),
        ("frame-average", {"top_k": 0}, "options.top_k"),
        ("frame-average", {"quantize": "int4"}, r"options.quantize must be one of \['int8'\]"),
        ("fuseformer", {"masks": [{"rects": [[0, 0, 1]]}]}, "options.masks"),
    ],
)
def test_options_are_checked_against_the_task_before_ray(name, options, message):
    with pytest.raises(ModelConfigError, match=message):
        check_model_spec(ModelSpec(name=name, weights="w.pth", options=options))


def test_options_reach_the_model_typed():
    spec = ModelSpec(
        name="frame-average", task="embed", options={"top_k": 3, "threads": 1, "runtime": "torch"}
    )
    model = build_model(spec, output="unused")
    assert isinstance(model.options, ClassifyOptions) and model.options.top_k == 3
    assert model.threads == 1 and model.runtime == "torch" and model.embed_only


def test_a_new_registered_block_runs_without_pipeline_changes(tmp_path):
    """Everything the pipeline needs comes from the registry entry: task, input kind,
    preprocessing and class names."""

    class TinyClip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 4)
            self.fc = torch.nn.Linear(4, 2)

        def forward_features(self, clips):  # (B, T, 3, H, W) → (B, 4)
            return self.proj(clips.mean(dim=(1, 3, 4)))

        def head(self, feats):
            return self.fc(feats)

    meta = {
        "paper": "test",
        "arxiv": None,
        "repo": None,
        "input_layout": "(B, T, 3, H, W)",
        "value_range": "normalised",
        "example_inputs": lambda b: (torch.zeros(b, 2, 3, 8, 8),),
    }
    blocks.register_block(
        "test-tiny-clip",
        tasks=("classify", "embed"),
        input_kind="clip",
        feature_dim=4,
        preprocessing=Preprocess(size=8),
        class_names=lambda: ("yes", "no"),
        **meta,
    )(TinyClip)
    try:
        model = build_model(
            ModelSpec(name="test-tiny-clip", options={"runtime": "torch"}), output=str(tmp_path)
        )
        clips = np.random.default_rng(0).integers(0, 255, (2, 2, 8, 8, 3), dtype=np.uint8)
        out = model.run(clips, [{}, {}])
        assert model.task == "classify" and out[0].feature.shape == (4,)
        assert set(out[0].labels) == {"yes", "no"}
    finally:
        _REGISTRY.pop("test-tiny-clip")

"""Model wrappers without Ray: the HCRN temporal head over encoder features, and the checks that
keep untrained heads from producing labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import blocks
from pipeline.models import ClassifyModel, ModelConfigError, check_model_spec
from pipeline.spec import ModelSpec

HCRN = {"vision_dim": 1280, "module_dim": 32, "num_clips": 3, "frames_per_clip": 3, "num_classes": 4}


def test_hcrn_head_classifies_clips_of_num_clips_times_frames_per_clip(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "hcrn.pth"
    torch.save(blocks.create_block("hcrn-classifier", **HCRN).state_dict(), weights)
    runner = ClassifyModel(ModelSpec(name="hcrn-classifier", weights=str(weights), config=HCRN,
                                      options={"labels": ["a", "b", "c", "d"], "top_k": 2}),
                            output=str(tmp_path))
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

"""FuseFormer generator and block: official layout, golden numbers, non-native sizes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import blocks
from blocks.fuseformer import (
    FuseFormerBlock,
    FuseFormerBlockConfig,
    checkpoint_filter,
    composite,
    mask_frames,
)

GOLDEN = Path(__file__).parent / "golden"

# sum(p.numel() for p in InpaintGenerator().parameters()) for the official model/fuseformer.py
# (ruiliu-ai/FuseFormer @ e7e461f), instantiated on CPU with torchvision shimmed out.
OFFICIAL_PARAM_COUNT = 36_591_299


def deterministic_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Reproducible weights: key i of the sorted state dict drawn from Generator(seed=1000 + i).

    Matrices/kernels ~ N(0, 0.8²/fan_in) (gain 0.8 keeps the decoder's pre-tanh values near
    ±0.4 rather than saturating tanh), LayerNorm weights ~ 1 + N(0, 0.1²), everything else
    (biases, position embedding, soft-composition bias) ~ N(0, 0.05²). The golden reference
    was produced by loading exactly these tensors into the official generator.
    """
    state = {}
    for index, (key, value) in enumerate(sorted(model.state_dict().items())):
        noise = torch.randn(value.shape, generator=torch.Generator().manual_seed(1000 + index))
        if ".norm" in key and key.endswith("weight"):
            state[key] = 1.0 + 0.1 * noise
        elif key.endswith("weight") and value.dim() >= 2:
            state[key] = 0.8 * noise / math.sqrt(value[0].numel())
        else:
            state[key] = 0.05 * noise
    return state


def golden_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (1, 2, 3, 240, 432) in [-1, 1] and a moving rectangular hole (1, 2, 1, 240, 432)."""
    frames = torch.rand(1, 2, 3, 240, 432, generator=torch.Generator().manual_seed(7)) * 2 - 1
    masks = torch.zeros(1, 2, 1, 240, 432)
    masks[0, 0, 0, 60:150, 100:220] = 1
    masks[0, 1, 0, 70:160, 120:240] = 1
    return frames, masks


def golden_summary(out: torch.Tensor) -> dict[str, object]:
    """Small numbers standing for a (1, T, 3, 240, 432) output."""
    return {
        "subsample": out[0, :, :, ::20, ::24].flatten().tolist(),  # (T, 3, 12, 18) strided
        "sums": out[0].sum(dim=(-2, -1)).flatten().tolist(),  # per (frame, channel)
        "abs_sum": out.abs().sum().item(),
    }


@pytest.fixture(scope="module")
def default_model():
    torch.manual_seed(0)
    return blocks.create_block("fuseformer").eval()


def test_parameter_count_equals_official(default_model):
    assert blocks.param_count(default_model) == OFFICIAL_PARAM_COUNT


def test_state_dict_keys_and_shapes_equal_official(default_model):
    official = json.loads((GOLDEN / "fuseformer_official_keys.json").read_text())
    ours = {k: list(v.shape) for k, v in default_model.state_dict().items()}
    assert sorted(ours) == sorted(official)
    assert ours == official


def test_official_checkpoint_layouts_load_strictly(default_model):
    state = default_model.state_dict()
    for wrapped in (state, {"netG": state}, {"netG": {f"module.{k}": v for k, v in state.items()}}):
        model = blocks.create_block("fuseformer", weights=wrapped)
        assert torch.equal(model.add_pos_emb.pos_emb, state["add_pos_emb.pos_emb"])
        assert torch.equal(
            model.transformer[7].ffn.conv2[2].weight, state["transformer.7.ffn.conv2.2.weight"]
        )
    assert checkpoint_filter({"netG": {"module.sc.bias": 1}}) == {"sc.bias": 1}
    with pytest.raises(blocks.WeightsMismatchError, match="pos_emb"):
        blocks.create_block(
            "fuseformer", weights={k: v for k, v in state.items() if "pos_emb" not in k}
        )


def test_matches_official_generator_at_240x432(default_model):
    """Golden numbers from the official InpaintGenerator (see golden/README.md)."""
    golden = json.loads((GOLDEN / "fuseformer_golden.json").read_text())
    default_model.load_state_dict(deterministic_state(default_model))
    frames, masks = golden_inputs()
    with torch.no_grad():
        out = default_model(mask_frames(frames, masks))
    ours = golden_summary(out)
    torch.testing.assert_close(
        torch.tensor(ours["subsample"]), torch.tensor(golden["subsample"]), rtol=0, atol=1e-4
    )
    torch.testing.assert_close(
        torch.tensor(ours["sums"]), torch.tensor(golden["sums"]), rtol=1e-5, atol=1e-2
    )
    assert ours["abs_sum"] == pytest.approx(golden["abs_sum"], rel=1e-5)
    # the reference is not degenerate: outputs vary and tanh is not saturated everywhere
    assert torch.tensor(golden["subsample"]).std() > 0.1 and out.abs().max() < 0.95


def test_runs_at_non_native_size(default_model):
    """64x96 gives a 16x24 map and a 6x8 token grid; the official code (fixed 60x108 map,
    720 tokens) cannot run it."""
    frames = torch.rand(1, 2, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        out = default_model(frames)
    assert out.shape == (1, 2, 3, 64, 96)
    assert torch.isfinite(out).all() and out.abs().max() <= 1


def test_frames_in_a_batch_are_independent():
    torch.manual_seed(0)
    model = blocks.create_block("fuseformer", **blocks.block_info("fuseformer").tiny_config).eval()
    frames = torch.rand(2, 3, 3, 32, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        together = model(frames)
        apart = torch.cat([model(frames[:1]), model(frames[1:])])
        mixed_time = model(frames.flip(1)).flip(1)
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)
    # attention spans all frames and position embeddings are per frame position, so the order of
    # frames must not matter for each frame's output
    torch.testing.assert_close(together, mixed_time, rtol=1e-5, atol=1e-5)


def test_inpaint_keeps_known_pixels_and_fills_holes():
    torch.manual_seed(0)
    model = blocks.create_block("fuseformer", **blocks.block_info("fuseformer").tiny_config).eval()
    frames = torch.rand(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    masks = torch.zeros(1, 2, 1, 32, 32)
    masks[..., 8:20, 4:16] = 1
    out = model.inpaint(frames, masks)
    known = masks.expand_as(frames) == 0
    assert torch.equal(out[known], frames[known])
    with torch.no_grad():
        predicted = model(mask_frames(frames, masks))
    torch.testing.assert_close(out[~known], predicted[~known])
    assert (mask_frames(frames, masks)[~known] == 0).all()
    with pytest.raises(ValueError, match="expected"):
        composite(predicted, frames, masks[:, :, :, :16])


def test_block_derives_token_count_from_output_size():
    block = FuseFormerBlock(FuseFormerBlockConfig(hidden=16, num_heads=2, ffn_hidden=98)).eval()
    # a 13x17 map with 7x7 patches, stride 3, padding 3: 5x6 = 30 tokens per frame
    x = torch.randn(2, 3 * 30, 16)
    assert block(x, (13, 17)).shape == x.shape
    with pytest.raises(ValueError, match="6x7"):
        block(x, (16, 20))  # 6x7 = 42 tokens per frame does not divide 90
    with pytest.raises(ValueError, match="output_size"):
        block(x)


def test_f3n_is_a_plain_mlp_when_patches_do_not_overlap():
    """With kernel == stride and no padding, fold → ÷count → unfold is the identity, so F3N
    reduces to Linear → ReLU → Linear; any error in the fold/unfold bookkeeping breaks this."""
    config = FuseFormerBlockConfig(
        hidden=8, num_heads=2, ffn_hidden=4 * 4, kernel_size=2, stride=2, padding=0
    )
    ffn = FuseFormerBlock(config).ffn.eval()
    x = torch.randn(2, 3 * 12, 8)  # 6x8 map → 3x4 tokens, 3 frames
    expected = ffn.conv2(ffn.conv1(x))
    torch.testing.assert_close(ffn(x, (6, 8)), expected)

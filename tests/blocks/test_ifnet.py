"""RIFE IFNet blocks: official layout and size, golden numbers from the official code,
checkpoint conversion, and the flow/warp conventions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import blocks
from blocks.ifnet import IFNetECCV, IFNetV4
from blocks.registry import block_info, param_count
from blocks.warp import backward_warp

GOLDEN = Path(__file__).parent / "golden"
NAMES = ("ifnet-eccv", "ifnet-v4")

# Measured by instantiating the official code on CPU with the venv's torch and counting
# ``Model().flownet.parameters()``: hzwer/ECCV2022-RIFE @5d8adbd model/RIFE.py (IFNet with
# block_tea) and hzwer/Practical-RIFE @f7edc95 train_log/RIFE_HDv3.py (version 4.25).
OFFICIAL_PARAMS = {"ifnet-eccv": 10_708_215, "ifnet-v4": 5_723_156}
GOLDEN_ATOL = 1e-4


# ---- helpers shared with the golden-data generation (see golden/README.md) -----------------


def deterministic_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights that depend only on the sorted key names and shapes, so any two models with the
    official layout (ours and the official code) get identical values.

    Conv weights ~ N(0, 1/fan_in)/2, biases small, PReLU slopes near 0.25, ResConv betas near 1.
    """
    out = {}
    for index, key in enumerate(sorted(state)):
        shape = state[key].shape
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(index))
        if key.endswith("beta"):
            value = 1.0 + 0.1 * noise
        elif key.endswith("bias"):
            value = 0.01 * noise
        elif len(shape) == 1:  # PReLU slope
            value = 0.25 + 0.05 * noise
        else:
            fan_in = math.prod(shape[1:])
            value = 0.5 * noise / math.sqrt(fan_in)
        out[key] = value
    return out


def golden_frames(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three smooth (1, 3, H, W) frames in [0, 1]: t=0, the midpoint and t=1 of a diagonal pan."""
    ys = torch.arange(height, dtype=torch.float64).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=torch.float64).view(1, 1, 1, width)
    phase = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64).view(1, 3, 1, 1)

    def frame(shift: float) -> torch.Tensor:
        x, y = xs - shift, ys - 0.5 * shift
        pattern = torch.sin(0.21 * x + phase) * torch.cos(0.17 * y - 0.5 * phase)
        return (0.5 + 0.35 * pattern + 0.1 * torch.sin(0.05 * (x + y))).float()

    return frame(0.0), frame(2.0), frame(4.0)


def summary(t: torch.Tensor, stride: int) -> dict[str, object]:
    """A strided subsample (spatial stride) plus the full mean, as stored in the golden files."""
    return {
        "sample": [round(v, 6) for v in t[..., ::stride, ::stride].flatten().tolist()],
        "mean": t.double().mean().item(),
    }


# ---- layout and size ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_param_count_equals_official(name):
    assert param_count(blocks.create_block(name)) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_and_shapes_equal_official(name):
    official = json.loads((GOLDEN / f"{name.replace('-', '_')}_keys.json").read_text())
    ours = {k: list(v.shape) for k, v in blocks.create_block(name).state_dict().items()}
    assert sorted(ours) == sorted(official)
    assert ours == official


def test_eccv_teacher_block_exists_but_is_not_run_at_inference():
    model = blocks.create_block("ifnet-eccv", **block_info("ifnet-eccv").tiny_config).eval()
    calls = []
    model.block_tea.register_forward_hook(lambda *args: calls.append(1))
    img0, img1 = block_info("ifnet-eccv").example_inputs(1)
    with torch.no_grad():
        model.interpolate(img0, img1)
        model.estimate_flow(img0, img1)
    assert not calls
    model.forward_train(img0, img1, img0)
    assert calls


# ---- golden numbers from the official implementations ---------------------------------------


def _golden_model(name: str) -> torch.nn.Module:
    model = blocks.create_block(name).eval()
    model.load_state_dict(deterministic_state(model.state_dict()), strict=True)
    return model


def _assert_matches(ours: dict, ref: dict, what: str) -> None:
    got = torch.tensor(ours["sample"], dtype=torch.float64)
    want = torch.tensor(ref["sample"], dtype=torch.float64)
    assert got.shape == want.shape, what
    torch.testing.assert_close(got, want, rtol=0, atol=GOLDEN_ATOL, msg=lambda m: f"{what}: {m}")
    assert abs(ours["mean"] - ref["mean"]) < GOLDEN_ATOL, what


@pytest.mark.parametrize("name", NAMES)
def test_matches_official_implementation(name):
    golden = json.loads((GOLDEN / f"{name.replace('-', '_')}_outputs.json").read_text())
    model = _golden_model(name)
    for case in golden["cases"]:
        img0, _, img1 = golden_frames(*case["size"])
        kwargs = {"timestep": case["timestep"], "scale_list": case["scale_list"]}
        with torch.no_grad():
            frame = model.interpolate(img0, img1, **kwargs)
            flow, mask = model.estimate_flow(img0, img1, **kwargs)
        assert frame.shape == img0.shape and flow.shape[-2:] == img0.shape[-2:]
        label = f"{name} {case['size']} t={case['timestep']} scales={case['scale_list']}"
        stride = golden["stride"]
        _assert_matches(summary(frame, stride), case["frame"], f"{label} frame")
        _assert_matches(summary(flow, stride), case["flow"], f"{label} flow")
        _assert_matches(summary(mask, stride), case["mask"], f"{label} mask")


def test_eccv_training_pass_matches_official_teacher():
    golden = json.loads((GOLDEN / "ifnet_eccv_outputs.json").read_text())["train"]
    model = _golden_model("ifnet-eccv")
    img0, gt, img1 = golden_frames(*golden["size"])
    with torch.no_grad():
        out = model.forward_train(img0, img1, gt)
    stride = golden["stride"]
    _assert_matches(summary(out.teacher_flow, stride), golden["teacher_flow"], "teacher flow")
    _assert_matches(summary(out.teacher_merged, stride), golden["teacher_merged"], "teacher frame")
    _assert_matches(summary(out.merged[-1], stride), golden["merged"], "refined frame")


# ---- checkpoint conversion ------------------------------------------------------------------


def _tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return blocks.create_block(name, **block_info(name).tiny_config)


@pytest.mark.parametrize("name", NAMES)
def test_official_ddp_checkpoint_loads_strictly(name, tmp_path):
    source = _tiny(name)
    state = {f"module.{k}": v for k, v in deterministic_state(source.state_dict()).items()}
    if name == "ifnet-v4":  # 4.x checkpoints may carry the training-only heads
        state["module.teacher.conv0.0.0.weight"] = torch.zeros(16, 55, 3, 3)
        state["module.caltime.0.weight"] = torch.zeros(8, 41, 3, 3)
    path = tmp_path / "flownet.pkl"
    torch.save(state, path)
    loaded = blocks.create_block(name, weights=str(path), **block_info(name).tiny_config)
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, state[f"module.{key}"], rtol=0, atol=0)


def test_v4_checkpoint_without_ddp_prefix_loads():
    source = _tiny("ifnet-v4")
    state = dict(source.state_dict(), **{"teacher.lastconv.0.bias": torch.zeros(52)})
    blocks.create_block("ifnet-v4", weights=state, **block_info("ifnet-v4").tiny_config)


@pytest.mark.parametrize("name", NAMES)
def test_missing_or_unknown_key_is_a_mismatch(name):
    state = {f"module.{k}": v for k, v in _tiny(name).state_dict().items()}
    missing = dict(state)
    missing.pop(sorted(missing)[0])
    with pytest.raises(blocks.WeightsMismatchError, match="missing"):
        blocks.create_block(name, weights=missing, **block_info(name).tiny_config)
    unknown = dict(state, **{"module.block9.lastconv.bias": torch.zeros(5)})
    with pytest.raises(blocks.WeightsMismatchError, match="block9"):
        blocks.create_block(name, weights=unknown, **block_info(name).tiny_config)


# ---- behaviour ------------------------------------------------------------------------------


def test_backward_warp_direction_and_units():
    """A flow of +k pixels in x samples k pixels to the right (and likewise in y)."""
    _, _, img = golden_frames(24, 40)
    shift_x, shift_y = 3, 2
    flow = torch.zeros(1, 2, 24, 40)
    flow[:, 0], flow[:, 1] = shift_x, shift_y
    warped = backward_warp(img, flow)
    torch.testing.assert_close(warped[..., :-shift_y, :-shift_x], img[..., shift_y:, shift_x:])
    torch.testing.assert_close(backward_warp(img, torch.zeros_like(flow)), img)


@pytest.mark.parametrize("name", NAMES)
def test_identical_frames_with_zero_flow_heads_reproduce_the_frame(name):
    """With the flow/mask heads (and the ECCV residual) zeroed, the rest of the net random,
    the output is the input: zero flow warps to identity, the blend and the crop are exact.
    (With random heads the flow is arbitrary, so no such statement holds.)"""
    model = _tiny(name).eval()
    heads = [block.lastconv for block in (model.students if name == "ifnet-eccv" else model.blocks)]
    if name == "ifnet-eccv":
        heads.append(model.unet.conv)
    with torch.no_grad():
        for head in heads:
            for p in head.parameters():
                p.zero_()
        _, img, _ = golden_frames(30, 45)  # not a multiple of the padding: crop is exercised
        out = model.interpolate(img, img)
        flow, mask = model.estimate_flow(img, img)
    torch.testing.assert_close(out, img, rtol=0, atol=1e-5)
    assert flow.abs().max() == 0 and torch.all(mask == 0.5)


def test_v4_estimate_flow_is_the_flow_interpolate_blends_with():
    model = _tiny("ifnet-v4").eval()
    img0, _, img1 = golden_frames(128, 128)  # a padding multiple: nothing is cropped
    with torch.no_grad():
        frame = model.interpolate(img0, img1, timestep=0.3)
        flow, mask = model.estimate_flow(img0, img1, timestep=0.3)
    warped0, warped1 = backward_warp(img0, flow[:, :2]), backward_warp(img1, flow[:, 2:])
    blended = warped0 * mask + warped1 * (1 - mask)
    torch.testing.assert_close(frame, blended, rtol=0, atol=1e-6)
    assert flow.shape == (1, 4, 128, 128) and mask.shape == (1, 1, 128, 128)
    assert mask.min() >= 0 and mask.max() <= 1


def test_eccv_estimate_flow_and_frame_equal_the_training_pass():
    model = _tiny("ifnet-eccv").eval()
    img0, gt, img1 = golden_frames(64, 64)
    with torch.no_grad():
        frame = model.interpolate(img0, img1)
        flow, mask = model.estimate_flow(img0, img1)
        train = model.forward_train(img0, img1, gt)
    torch.testing.assert_close(flow, train.flows[-1], rtol=0, atol=0)
    torch.testing.assert_close(mask, train.masks[-1], rtol=0, atol=0)
    torch.testing.assert_close(frame, train.merged[-1], rtol=0, atol=0)


def test_v4_per_sample_timesteps_equal_scalar_calls():
    model = _tiny("ifnet-v4").eval()
    img0, img1 = block_info("ifnet-v4").example_inputs(2)
    with torch.no_grad():
        batched = model.interpolate(img0, img1, timestep=torch.tensor([0.25, 0.75]))
        first = model.interpolate(img0[:1], img1[:1], timestep=0.25)
        second = model.interpolate(img0[1:], img1[1:], timestep=0.75)
    torch.testing.assert_close(batched, torch.cat((first, second)), rtol=0, atol=1e-5)
    assert not torch.allclose(first, model.interpolate(img0[:1], img1[:1], timestep=0.75))


def test_invalid_arguments_raise_value_error():
    eccv, v4 = _tiny("ifnet-eccv"), _tiny("ifnet-v4")
    img0, img1 = block_info("ifnet-eccv").example_inputs(1)
    with pytest.raises(ValueError, match="midpoint"):
        eccv.interpolate(img0, img1, timestep=0.3)
    with pytest.raises(ValueError, match="5 scales"):
        v4.interpolate(img0, img1, scale_list=[4, 2, 1])
    with pytest.raises(ValueError, match="powers of two"):
        v4.interpolate(img0, img1, scale_list=[16, 8, 4, 3, 1])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        v4(img0, img1[:, :2])
    assert isinstance(eccv, IFNetECCV) and isinstance(v4, IFNetV4)

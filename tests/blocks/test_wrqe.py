"""WRQE semantics: learned-temperature update weights, f = 1 - u wiring, residual output, side
information, TF checkpoint conversion and a golden from the official TensorFlow graph."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from blocks.registry import load_weights
from blocks.wrqe import (
    WRQE,
    WeightedConvLSTMCell,
    WRQEConfig,
    convert_tf_checkpoint,
    derive_side_info,
)

GOLDEN = Path(__file__).parent / "golden" / "wrqe_official.json"
TINY = dict(channels=4, kernel_size=3, side_hidden=8)


def _model(**kw) -> WRQE:
    torch.manual_seed(0)
    return WRQE(WRQEConfig(**{**TINY, **kw})).eval()


def _inputs(b=2, t=4, size=8):
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(b, t, 3, size, size, generator=g)
    side = torch.rand(b, t, 10, generator=g)
    return frames, side


def _force_logits(model: WRQE, value) -> None:
    """Replace the side-information branch's per-frame logits (the dense layer's output)."""

    def hook(_module, _inp, out):
        return torch.as_tensor(value, dtype=out.dtype).expand_as(out.squeeze(-1)).reshape(out.shape)

    model.side_dense.register_forward_hook(hook)


def _record_cell(model: WRQE) -> list[dict]:
    calls = []

    def hook(module, args, out):
        x, (h, c), f, u = args
        calls.append(dict(x=x, h_prev=h, c_prev=c, f=f, u=u, h=out[0], c=out[1]))

    model.cell.register_forward_hook(hook)
    return calls


def test_temperature_is_a_learnable_parameter_initialised_at_5():
    model = _model()
    assert isinstance(model.temperature, torch.nn.Parameter) and model.temperature.requires_grad
    assert model.temperature.item() == 5.0
    assert "temperature" in dict(model.named_parameters())


@pytest.mark.parametrize("variant", ["psnr", "msssim"])
def test_update_weight_is_sigmoid_of_logit_over_temperature(variant):
    model = _model(variant=variant)
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    _force_logits(model, logits)
    _, side = _inputs(b=1)
    with torch.no_grad():
        model.temperature.fill_(2.0)
    u = model.update_weights(side)
    expected = torch.sigmoid(logits / 2.0)
    if variant == "psnr":  # official force_one: key frames at both ends update fully
        expected[:, 0] = expected[:, -1] = 1.0
    torch.testing.assert_close(u, expected)
    assert _model(variant="psnr", force_edge_update=False).config.forces_edges is False


def test_update_weights_are_time_aligned_in_both_directions():
    model = _model(variant="msssim")
    logits = torch.tensor([[-2.0, -0.5, 0.5, 2.0]])
    _force_logits(model, logits)
    calls = _record_cell(model)
    frames, side = _inputs(b=1)
    with torch.no_grad():
        model(frames, side)
    u = torch.sigmoid(logits[0] / 5.0)
    seen = torch.stack([c["u"][0] for c in calls])
    torch.testing.assert_close(seen, torch.cat([u, u.flip(0)]))  # forward t=0..3, backward t=3..0
    torch.testing.assert_close(torch.stack([c["f"][0] for c in calls]), 1 - seen)


@pytest.mark.parametrize("variant", ["psnr", "msssim"])
def test_u_zero_keeps_memory_so_state_stays_at_zero(variant):
    model = _model(variant=variant, force_edge_update=False)
    _force_logits(model, -1e4)  # u = 0, f = 1
    calls = _record_cell(model)
    frames, side = _inputs()
    with torch.no_grad():
        model(frames, side)
    assert len(calls) == 2 * frames.shape[1]
    for call in calls:
        assert torch.equal(call["u"], torch.zeros_like(call["u"])) and torch.equal(
            call["f"], torch.ones_like(call["f"])
        )
        assert torch.equal(call["c"], call["c_prev"])  # c_t = 1 * c_{t-1} + 0 * act(j)
        assert call["c"].abs().max() == 0 and call["h"].abs().max() == 0  # zero initial state kept


@pytest.mark.parametrize("variant", ["psnr", "msssim"])
def test_u_one_replaces_memory_with_current_candidate(variant):
    model = _model(variant=variant, force_edge_update=False)
    _force_logits(model, 1e4)  # u = 1, f = 0
    calls = _record_cell(model)
    frames, side = _inputs()
    with torch.no_grad():
        model(frames, side)
        act = torch.relu if variant == "psnr" else torch.tanh
        for call in calls:
            j, o = model.cell.conv(torch.cat([call["x"], call["h_prev"]], 1)).chunk(2, 1)
            torch.testing.assert_close(call["c"], act(j))  # no trace of c_{t-1}
            torch.testing.assert_close(call["h"], torch.sigmoid(o) * act(act(j)))
    assert any(call["c_prev"].abs().max() > 0 for call in calls)  # the old memory was non-zero


def test_cell_mixes_memory_with_given_weights():
    torch.manual_seed(0)
    cell = WeightedConvLSTMCell(3, 3, "tanh")
    x, h, c = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    u = torch.tensor([0.3, 0.9])
    h_new, c_new = cell(x, (h, c), 1 - u, u)
    j, o = cell.conv(torch.cat([x, h], 1)).chunk(2, 1)
    c_ref = (1 - u).view(2, 1, 1, 1) * c + u.view(2, 1, 1, 1) * torch.tanh(j)
    torch.testing.assert_close(c_new, c_ref)
    torch.testing.assert_close(h_new, torch.sigmoid(o) * torch.tanh(c_ref))


@pytest.mark.parametrize("variant", ["psnr", "msssim"])
def test_output_is_input_plus_decoder_residual(variant):
    model = _model(variant=variant)
    frames, side = _inputs()
    with torch.no_grad():
        assert not torch.allclose(model(frames, side), frames)
        model.decoder.tail.weight.zero_()
        model.decoder.tail.bias.zero_()
        assert torch.equal(model(frames, side), frames)


def test_variants_differ_as_in_the_official_code():
    psnr, ssim = _model(variant="psnr"), _model(variant="msssim")
    assert len(psnr.encoder.blocks) == 3 and len(psnr.decoder.blocks) == 3
    assert len(ssim.encoder.layers) == 4 and not hasattr(ssim.encoder, "blocks")
    assert psnr.cell.act is torch.relu and ssim.cell.act is torch.tanh
    frames, side = _inputs(t=3)
    for model in (psnr, ssim):
        out = model(frames, side)
        assert out.shape == frames.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="variant"):
        WRQEConfig(variant="ssim")


def test_shape_errors_name_the_expected_shape():
    model = _model()
    frames, side = _inputs()
    with pytest.raises(ValueError, match=r"expected frames of shape \(B, T, 3, H, W\)"):
        model(frames[:, :, :1], side)
    with pytest.raises(ValueError, match=r"expected side_info of shape \(2, 4, 10\)"):
        model(frames, side[:, :3])


# --------------------------------------------------------------------------- side information


def test_derive_side_info_by_hand():
    side = derive_side_info([10, 20, 40], [30.0, 34.0, 32.0])
    # windows (edge replicated): frame0 -> [0,0,0,1,2], frame1 -> [0,0,1,2,2], frame2 -> [0,1,2,2,2]
    expected = np.array(
        [
            [0, 0, 0, 1, 0.5] + [0, 0, 0, 1 / 3, 1],
            [0, 0, 1, 0.5, 0.5] + [0, 0, 1 / 3, 1, 1],
            [0, 1, 0.5, 0.5, 0.5] + [0, 1 / 3, 1, 1, 1],
        ],
        dtype=np.float32,
    )
    assert side.shape == (3, 10) and side.dtype == np.float32
    np.testing.assert_allclose(side, expected, rtol=0, atol=1e-7)


def test_derive_side_info_edge_cases():
    np.testing.assert_array_equal(
        derive_side_info([5, 5], [1.0, 1.0]), np.full((2, 10), 0.5, np.float32)
    )
    qp = derive_side_info([1, 2, 3], [22, 30, 26], higher_is_better=False)  # lowest QP is best
    np.testing.assert_allclose(qp[1, :5], [1, 1, 0, 0.5, 0.5], atol=1e-7)
    assert derive_side_info([7], [30.0]).shape == (1, 10)
    with pytest.raises(ValueError, match="same non-zero length"):
        derive_side_info([1, 2], [1.0])
    with pytest.raises(ValueError, match="finite"):
        derive_side_info([1, float("nan")], [1.0, 2.0])


# --------------------------------------------------------------------------- checkpoint + golden


def test_tf_converter_passthrough_drops_optimizer_slots_and_rejects_unknown():
    model = _model()
    own = model.state_dict()
    assert convert_tf_checkpoint(own).keys() == own.keys()
    with pytest.raises(ValueError, match="unrecognised"):
        convert_tf_checkpoint({"ConvLSTM_2D/mystery/kernel": np.zeros((3, 3, 1, 1))})
    converted = convert_tf_checkpoint(
        {"W/a": np.float32(3.0), "W/a/Adam": np.float32(0), "beta1_power": np.float32(0)}
    )
    assert set(converted) == {"temperature"} and converted["temperature"].item() == 3.0


def _fill(shape, i):
    """Deterministic TF-layout weights; the same recipe generated the golden in TensorFlow."""
    n = int(np.prod(shape))
    base = np.sin(np.arange(n, dtype=np.float64) * 0.7 + i)
    if len(shape) == 4:  # conv kernels: keep activations alive through the ReLU stacks
        base = base * 3.0 / np.sqrt(np.prod(shape[:3]))
    elif len(shape) == 1:  # biases
        base = 0.05 + 0.1 * base
    else:
        base = base * 0.3
    return base.reshape(shape).astype(np.float32)


def test_side_info_matches_official_normalisation():
    golden = json.loads(GOLDEN.read_text())
    side = derive_side_info(golden["frame_bytes"], golden["qualities"])
    np.testing.assert_allclose(side, np.array(golden["official_side_info"]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["PSNR", "MS-SSIM"])
def test_matches_official_tf_graph_golden(mode):
    golden = json.loads(GOLDEN.read_text())
    case = next(v for v in golden["variants"] if v["mode"] == mode)
    tf_state = {
        name: (np.float32(2.0) if name == "W/a" else _fill(shape, i))
        for i, (name, shape) in enumerate(case["variables"])
    }
    model = WRQE(
        WRQEConfig(
            variant="psnr" if mode == "PSNR" else "msssim",
            channels=golden["filters"],
            kernel_size=golden["kernel"],
            side_hidden=golden["lstm_units"],
        )
    ).eval()
    load_weights(model, tf_state, convert_tf_checkpoint)  # strict: every TF variable maps

    b, t, h, w, c = golden["shape_BTHWC"]
    n = b * t * h * w * c
    frames_nhwc = (
        ((np.cos(np.arange(n) * 0.3 + 0.1) + 1) / 2).reshape(b, t, h, w, c).astype(np.float32)
    )
    frames = torch.from_numpy(frames_nhwc).permute(0, 1, 4, 2, 3).contiguous()  # (B, T, 3, H, W)
    side = torch.tensor(golden["official_side_info"], dtype=torch.float32)[None]  # (1, T, 10)
    with torch.no_grad():
        u = model.update_weights(side)
        residual = (model(frames, side) - frames).permute(0, 1, 3, 4, 2)  # (B, T, H, W, 3) as TF
    torch.testing.assert_close(u.flatten(), torch.tensor(case["u"]), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        residual.reshape(t, -1).mean(1),
        torch.tensor(case["residual_frame_means"]),
        rtol=0,
        atol=1e-5,
    )
    torch.testing.assert_close(
        residual.reshape(-1)[::7], torch.tensor(case["residual_every_7th"]), rtol=0, atol=1e-5
    )
    assert not math.isclose(float(residual.abs().max()), 0.0)

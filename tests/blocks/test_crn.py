"""CRN / HCRN semantics: subset scales, relation math, sampling reproducibility, official golden."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from blocks.crn import (
    CRN,
    CRNConfig,
    HCRNClassifier,
    HCRNClassifierConfig,
    crn_scale_sizes,
    motion_from_frame_features,
)

GOLDEN = Path(__file__).parent / "golden" / "crn_official.json"


def _crn(**kw) -> CRN:
    torch.manual_seed(0)
    return CRN(CRNConfig(**kw)).eval()


@pytest.mark.parametrize(
    "n, m, expected",
    [
        (5, 5, [4, 3, 2]),  # m == N: full set skipped
        (16, 16, list(range(15, 1, -1))),
        (5, 3, [5, 4, 3]),  # m < N: full set included, smallest dropped
        (5, 8, [5, 4, 3, 2]),  # m > N: full set included
        (2, 2, [2]),
    ],
)
def test_scale_sizes_follow_official_semantics(n, m, expected):
    assert crn_scale_sizes(n, m) == expected
    model = _crn(module_dim=4, num_objects=n, max_subset_size=m)
    out = model(torch.randn(2, n, 4), torch.randn(2, 4))
    assert out.shape == (2, len(expected), 4)


@pytest.mark.parametrize("k", [4, 3, 2])
def test_subset_enumeration_per_scale(k):
    model = _crn(module_dim=4, num_objects=5, max_subset_size=5, spl_resolution=100)
    subsets = model.sample_subsets(k)
    assert subsets.shape == (math.comb(5, k), k)
    assert [tuple(s) for s in subsets.tolist()] == list(itertools.combinations(range(5), k))

    sampled = _crn(module_dim=4, num_objects=5, max_subset_size=5, spl_resolution=2).sample_subsets(
        k
    )
    rows = [tuple(s) for s in sampled.tolist()]
    assert len(rows) == min(2, math.comb(5, k)) and len(set(rows)) == len(rows)
    assert all(r in set(itertools.combinations(range(5), k)) for r in rows)


def _identity_fusion(model: CRN, take: str) -> None:
    """Make every fusion layer copy the objects' mean (take='g') or the condition (take='cond')."""
    d = model.config.module_dim
    with torch.no_grad():
        for layer in model.k_objects_fusion:
            layer.weight.zero_()
            layer.bias.zero_()
            cols = slice(0, d) if take == "g" else slice(d, 2 * d)
            layer.weight[:, cols] = torch.eye(d)


def test_relation_is_elu_of_member_mean_by_hand():
    model = _crn(module_dim=2, num_objects=3, max_subset_size=3, spl_resolution=3)  # scale k=2 only
    _identity_fusion(model, "g")
    objects = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [-5.0, 0.0]]])  # (1, 3, 2)
    out = model(objects, torch.zeros(1, 2))
    # subset means: (0,1) -> [2, 3]; (0,2) -> [-2, 1]; (1,2) -> [-1, 2]; ELU then mean over subsets
    expected = torch.tensor([(2 + math.expm1(-2) + math.expm1(-1)) / 3, 2.0])
    torch.testing.assert_close(out[0, 0], expected)

    # one sampled subset: the output is ELU(mean of exactly those members)
    model1 = _crn(module_dim=2, num_objects=3, max_subset_size=3, spl_resolution=1)
    _identity_fusion(model1, "g")
    (subset,) = model1.sample_subsets(2).tolist()
    torch.testing.assert_close(
        model1(objects, torch.zeros(1, 2))[0, 0],
        torch.nn.functional.elu(objects[0, subset].mean(0)),
    )


def test_condition_enters_every_relation():
    model = _crn(module_dim=3, num_objects=4, max_subset_size=4, spl_resolution=10)
    _identity_fusion(model, "cond")
    cond = torch.tensor([[0.5, -1.0, 2.0]])
    out = model(torch.randn(1, 4, 3), cond)
    torch.testing.assert_close(out, torch.nn.functional.elu(cond).expand(1, 2, 3).reshape(1, 2, 3))


def test_gating_on_and_off():
    plain = _crn(module_dim=4, num_objects=4, max_subset_size=4, spl_resolution=10)
    gated = _crn(module_dim=4, num_objects=4, max_subset_size=4, spl_resolution=10, gating=True)
    assert not hasattr(plain, "gate_k_objects_fusion")
    assert len(gated.gate_k_objects_fusion) == len(gated.k_objects_fusion)
    gated.k_objects_fusion.load_state_dict(plain.k_objects_fusion.state_dict())
    x, c = torch.randn(2, 4, 4), torch.randn(2, 4)
    with torch.no_grad():
        for gate in gated.gate_k_objects_fusion:
            gate.weight.zero_()
            gate.bias.zero_()
    torch.testing.assert_close(gated(x, c), 0.5 * plain(x, c))  # sigmoid(0) = 0.5
    with torch.no_grad():
        for gate in gated.gate_k_objects_fusion:
            gate.bias.fill_(50.0)
    torch.testing.assert_close(gated(x, c), plain(x, c))


def test_unused_official_layer_when_full_set_is_skipped():
    model = _crn(module_dim=4, num_objects=5, max_subset_size=5, spl_resolution=3)
    assert len(model.k_objects_fusion) == 4  # official allocates k = 5..2
    model(torch.randn(2, 5, 4), torch.randn(2, 4)).sum().backward()
    assert model.k_objects_fusion[0].weight.grad is None
    assert all(layer.weight.grad is not None for layer in model.k_objects_fusion[1:])


def test_eval_sampling_is_reproducible_and_seeded():
    x, c = torch.randn(2, 6, 4), torch.randn(2, 4)
    a = _crn(module_dim=4, num_objects=6, max_subset_size=6, spl_resolution=1, seed=3)
    b = _crn(module_dim=4, num_objects=6, max_subset_size=6, spl_resolution=1, seed=3)
    other = _crn(module_dim=4, num_objects=6, max_subset_size=6, spl_resolution=1, seed=4)
    b.load_state_dict(a.state_dict())
    other.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x, c), a(x, c), rtol=0, atol=0)
    torch.testing.assert_close(a(x, c), b(x, c), rtol=0, atol=0)
    assert not torch.equal(a(x, c), other(x, c))
    # a caller-supplied generator overrides the module's seed
    torch.testing.assert_close(
        a(x, c, torch.Generator().manual_seed(4)), other(x, c), rtol=0, atol=0
    )


def test_training_samples_afresh_but_reproducibly():
    x, c = torch.randn(2, 6, 4), torch.randn(2, 4)
    a = _crn(module_dim=4, num_objects=6, max_subset_size=6, spl_resolution=1).train()
    b = _crn(module_dim=4, num_objects=6, max_subset_size=6, spl_resolution=1).train()
    b.load_state_dict(a.state_dict())
    first, second = a(x, c), a(x, c)
    assert not torch.equal(first, second)
    torch.testing.assert_close(b(x, c), first, rtol=0, atol=0)


def test_four_d_objects_match_per_position_three_d():
    model = _crn(module_dim=4, num_objects=4, max_subset_size=4, spl_resolution=2, gating=True)
    x, c = torch.randn(2, 4, 3, 4), torch.randn(2, 4)  # (B, N, L, D)
    out = model(x, c)
    assert out.shape == (2, 2, 3, 4)
    for pos in range(3):
        torch.testing.assert_close(out[:, :, pos], model(x[:, :, pos], c))
    torch.testing.assert_close(model(x, c.unsqueeze(1)), out)  # (B, 1, Dc) as official passes it
    per_pos = torch.randn(2, 3, 4)
    torch.testing.assert_close(model(x, per_pos)[:, :, 1], model(x[:, :, 1], per_pos[:, 1]))


def test_forward_list_is_the_official_format():
    model = _crn(module_dim=4, num_objects=5, max_subset_size=3, spl_resolution=2)
    x, c = torch.randn(2, 5, 4), torch.randn(2, 4)
    parts = model.forward_list(x, c)
    assert [p.shape for p in parts] == [torch.Size([2, 4])] * 3
    torch.testing.assert_close(torch.stack(parts, 1), model(x, c))


def test_cond_dim_and_shape_errors():
    model = _crn(module_dim=4, num_objects=4, max_subset_size=4, cond_dim=6)
    assert model(torch.randn(2, 4, 4), torch.randn(2, 6)).shape == (2, 2, 4)
    with pytest.raises(ValueError, match=r"expected objects of shape \(B, 4, 4\)"):
        model(torch.randn(2, 5, 4), torch.randn(2, 6))
    with pytest.raises(ValueError, match="expected cond"):
        model(torch.randn(2, 4, 4), torch.randn(2, 4))


def _fill(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for i, (_, p) in enumerate(sorted(module.state_dict().items())):
            values = torch.sin(torch.arange(p.numel(), dtype=torch.float64) * 0.7 + i) * 0.3
            p.copy_(values.reshape(p.shape).to(p.dtype))


def _ramp(shape, freq, phase) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.cos(torch.arange(n, dtype=torch.float64) * freq + phase).reshape(shape).float()


@pytest.mark.parametrize("case", json.loads(GOLDEN.read_text())["cases"], ids=lambda c: c["name"])
def test_matches_official_crn_golden(case):
    golden = json.loads(GOLDEN.read_text())
    model = CRN(
        CRNConfig(
            module_dim=case["module_dim"],
            num_objects=case["num_objects"],
            max_subset_size=case["max_subset_size"],
            gating=case["gating"],
            spl_resolution=golden["spl_resolution"],
        )
    ).eval()
    assert sorted(model.state_dict()) == case["state_keys"]  # official checkpoints load strictly
    _fill(model)
    b, n, d = golden["batch"], case["num_objects"], case["module_dim"]
    shape = (b, n, d) if case["L"] is None else (b, n, case["L"], d)
    cond = _ramp((b, d), 0.11, 0.5)
    out = model(_ramp(shape, 0.3, 0.1), cond if case["cond"] == "2d" else cond.unsqueeze(1))
    assert list(out.shape) == case["output_shape"]
    torch.testing.assert_close(out.flatten(), torch.tensor(case["output"]), rtol=0, atol=2e-6)


# --------------------------------------------------------------------------- HCRN classifier


def _hcrn(**kw) -> HCRNClassifier:
    torch.manual_seed(0)
    cfg = dict(
        vision_dim=12, module_dim=8, num_clips=4, frames_per_clip=5, spl_resolution=2, num_classes=7
    )
    cfg.update(kw)
    return HCRNClassifier(HCRNClassifierConfig(**cfg)).eval()


def test_hcrn_shapes_and_features():
    model = _hcrn()
    frames = torch.randn(2, 4, 5, 12)  # (B, C, F, D)
    motion = torch.randn(2, 4, 12)
    assert model.tokens(frames, motion).shape == (2, (4 - 2) * (5 - 2), 8)
    feats = model.forward_features(frames, motion)
    assert feats.shape == (2, 8)
    logits = model(frames, motion)
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits, model.head(feats))
    # motion actually conditions the result
    assert not torch.allclose(model(frames, motion), model(frames, motion * 3 + 1))


def test_hcrn_derives_motion_when_absent():
    model = _hcrn()
    frames = torch.randn(2, 4, 5, 12)
    torch.testing.assert_close(model(frames), model(frames, motion_from_frame_features(frames)))
    with pytest.raises(ValueError, match="motion_dim == vision_dim"):
        _hcrn(motion_dim=6)(frames)
    assert _hcrn(motion_dim=6)(frames, torch.randn(2, 4, 6)).shape == (2, 7)


def test_motion_from_frame_features_by_hand():
    static = torch.ones(1, 2, 4, 3)
    assert torch.equal(motion_from_frame_features(static), torch.zeros(1, 2, 3))
    clip = torch.tensor([[[[0.0], [1.0], [0.0], [3.0]]]])  # diffs 1, -1, 3 -> mean |.| = 5/3
    torch.testing.assert_close(motion_from_frame_features(clip), torch.tensor([[[5.0 / 3.0]]]))


def test_hcrn_shape_errors_and_config_limits():
    model = _hcrn()
    with pytest.raises(ValueError, match=r"expected frame features of shape \(B, 4, 5, 12\)"):
        model(torch.randn(2, 4, 6, 12), torch.randn(2, 4, 12))
    with pytest.raises(ValueError, match="expected motion features"):
        model(torch.randn(2, 4, 5, 12), torch.randn(2, 3, 12))
    with pytest.raises(ValueError, match="num_clips >= 3"):
        HCRNClassifierConfig(num_clips=2)

"""Video classifiers over the frame encoder: labels, temporal pooling, fusion, inflation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as photos

import blocks
from blocks.classifiers import InflatedConfig, InflatedConv3d, RecurrentConfig, TwoStreamConfig
from blocks.efficientnet_lite import (
    Preprocess,
    SamePadConv2d,
    imagenet_labels,
    preprocess,
    to_unit_range,
)
from blocks.registry import block_info

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def _top3_names(logits: torch.Tensor) -> set[str]:
    return {imagenet_labels()[i].split(",")[0] for i in logits.topk(3).indices.tolist()}


@pytest.fixture(scope="module")
def image_model():
    return blocks.create_block("efficientnet-lite0").eval()


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """The cat and the coffee photos, preprocessed: (2, 3, 224, 224)."""
    return torch.cat([preprocess(photos.chelsea()[None]), preprocess(photos.coffee()[None])])


@pytest.fixture(scope="module")
def image_outputs(image_model, frames):
    with torch.no_grad():
        return image_model.forward_features(frames), image_model(frames)  # (2, 1280), (2, 1000)


@pytest.fixture(scope="module")
def frame_average():
    return blocks.create_block("frame-average").eval()


def _static(frame: torch.Tensor, t: int) -> torch.Tensor:
    return frame[None, None].expand(1, t, *frame.shape).contiguous()  # (1, T, 3, H, W)


def _tiny(name: str, **overrides):
    torch.manual_seed(0)
    return blocks.create_block(name, **{**block_info(name).tiny_config, **overrides}).eval()


# --- frame-average and convpool: zero-shot ImageNet labels ----------------------------------


def test_frame_average_predicts_a_cat_on_a_static_cat_clip(frame_average, frames, image_outputs):
    model = frame_average
    with torch.no_grad():
        logits = model(_static(frames[0], 3))[0]
    assert CAT_CLASSES & _top3_names(logits), _top3_names(logits)
    torch.testing.assert_close(logits, image_outputs[1][0], rtol=1e-4, atol=1e-4)
    assert model.labels == imagenet_labels()


def test_frame_average_equals_the_mean_of_per_frame_logits(frame_average, frames, image_outputs):
    model = frame_average
    clip = frames[None]  # (1, 2, 3, 224, 224): cat then coffee
    with torch.no_grad():
        features, logits = model.forward_features(clip), model(clip)
    torch.testing.assert_close(features[0], image_outputs[0].mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[0], image_outputs[1].mean(0), rtol=1e-4, atol=1e-4)


def test_convpool_is_the_image_model_on_a_static_clip(frames, image_outputs):
    model = blocks.create_block("convpool").eval()
    with torch.no_grad():
        logits = model(_static(frames[0], 2))[0]
    torch.testing.assert_close(logits, image_outputs[1][0], rtol=1e-4, atol=1e-4)


def test_convpool_max_pools_feature_maps_over_time():
    model = _tiny("convpool")
    clips = torch.randn(2, 3, 3, 96, 96)  # a 3x3 final map, so where the max goes matters
    with torch.no_grad():
        maps = torch.stack([model.encoder.forward_feature_map(clips[:, t]) for t in range(3)], 1)
        expected = model.encoder.head(maps.amax(1).mean((-2, -1)))  # (2, 5)
        # Max before the spatial mean differs from max over pooled features: the test can tell.
        pooled_first = model.encoder.head(maps.mean((-2, -1)).amax(1))
        out = model(clips)
    assert out.shape == (2, 5)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, pooled_first)


# --- recurrent heads ----------------------------------------------------------------------


def _manual_step_logits(model, clips: torch.Tensor) -> torch.Tensor:
    b, t = clips.shape[:2]
    feats = torch.stack([model.encoder.forward_features(clips[:, i]) for i in range(t)], 1)
    # feats: (B, T, D)
    hidden, _ = model.lstm(feats)  # (B, T, H)
    return model.fc(hidden)  # (B, T, C)


def test_lrcn_averages_per_step_logits():
    model = _tiny("lrcn")
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        steps = _manual_step_logits(model, clips)
        out = model(clips)
        torch.testing.assert_close(model.step_logits(clips), steps)
        torch.testing.assert_close(model.head(model.forward_features(clips)), out)
    assert steps.shape == (2, 4, 5) and out.shape == (2, 5)
    torch.testing.assert_close(out, steps.mean(1))
    assert not torch.allclose(out, steps[:, -1])


@pytest.mark.parametrize("aggregate, weights", [("linear", [1, 2, 3]), ("last", [0, 0, 1])])
def test_convpool_lstm_weights_steps(aggregate, weights):
    model = _tiny("convpool-lstm", aggregate=aggregate)
    clips = torch.randn(2, 3, 3, 32, 32)
    w = torch.tensor(weights, dtype=torch.float32)
    with torch.no_grad():
        expected = torch.einsum("btc,t->bc", _manual_step_logits(model, clips), w / w.sum())
        out = model(clips)
    torch.testing.assert_close(out, expected)


def test_convpool_lstm_defaults_follow_the_paper():
    model = blocks.create_block("convpool-lstm", pretrained=False)
    lstm = model.lstm
    assert (lstm.num_layers, lstm.hidden_size, model.config.aggregate) == (5, 512, "linear")
    assert model.fc.out_features == 1000


# --- two-stream ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_clips() -> torch.Tensor:
    """(2, 3, 3, 32, 32) encoder-normalised clips of smooth moving patterns."""
    ys, xs = np.mgrid[0:32, 0:32]
    clip = [
        np.stack([127 + 100 * np.sin(0.3 * (xs - 2 * t) + 0.2 * ys + c) for c in range(3)], -1)
        for t in range(3)
    ]
    u8 = np.stack([clip, clip[::-1]]).round().astype(np.uint8)  # (2, 3, 32, 32, 3)
    spec = Preprocess(size=32, crop_fraction=1.0)
    return preprocess(u8.reshape(-1, 32, 32, 3), spec).view(2, 3, 3, 32, 32)


@pytest.mark.parametrize("fusion", [(1.0, 0.0), (0.0, 1.0), (1.0, 3.0)])
def test_two_stream_fusion_weights(small_clips, fusion):
    model = _tiny("two-stream", fusion_weights=fusion)
    with torch.no_grad():
        rgb = model.encoder.head(
            model.encoder.forward_features(small_clips.flatten(0, 1)).view(2, 3, -1).mean(1)
        ).softmax(-1)  # (2, 5)
        flow = model.flow_encoder(model.stacked_flow(small_clips)).softmax(-1)  # (2, 5)
        fused = model(small_clips).exp()
    w_rgb, w_flow = fusion
    expected = (w_rgb * rgb + w_flow * flow) / (w_rgb + w_flow)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.fused_scores(small_clips), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(rgb, flow, atol=1e-3)  # so the single-stream cases are distinct


def test_two_stream_feeds_ifnet_unit_range_pairs_and_stacks_displacements(small_clips):
    model = _tiny("two-stream", flow_stack=2, flow_scale=4.0)
    calls = []

    def fake_estimate_flow(img0, img1):
        calls.append((img0, img1))
        n, _, h, w = img0.shape
        flow = torch.arange(n * 4, dtype=torch.float32).view(n, 4, 1, 1).expand(n, 4, h, w)
        return flow, torch.full((n, 1, h, w), 0.5)

    model.flow_net.estimate_flow = fake_estimate_flow
    stacked = model.stacked_flow(small_clips)
    img0, img1 = calls[0]
    unit = to_unit_range(small_clips)  # (2, 3, 3, 32, 32) in [0, 1]
    torch.testing.assert_close(img0, unit[:, :2].flatten(0, 1))  # pairs (0, 1), (1, 2) per clip
    torch.testing.assert_close(img1, unit[:, 1:].flatten(0, 1))
    assert img0.min() >= 0.0 and img0.max() <= 1.0
    # flow[:, 2:4] - flow[:, 0:2] = 2 for every pair; divided by flow_scale 4.
    assert stacked.shape == (2, 4, 32, 32)
    torch.testing.assert_close(stacked, torch.full_like(stacked, 0.5))


def test_two_stream_needs_enough_frames(small_clips):
    model = _tiny("two-stream", flow_stack=3)
    with pytest.raises(ValueError, match="expected clips of shape"):
        model(small_clips)  # T = 3 < flow_stack + 1


# --- i3d-inflated -------------------------------------------------------------------------


def test_inflated_model_equals_the_image_model_on_a_static_clip(frames, image_outputs):
    model = blocks.create_block("i3d-inflated").eval()
    clip = _static(frames[0], 3)  # (1, 3, 3, 224, 224)
    with torch.no_grad():
        features = model.forward_features(clip)[0]
        logits = model.head(features[None])[0]
    assert (features - image_outputs[0][0]).abs().max() < 1e-4
    assert (logits - image_outputs[1][0]).abs().max() < 1e-4
    assert CAT_CLASSES & _top3_names(logits)


def test_inflated_kernel_shapes_and_sums():
    torch.manual_seed(0)
    image = blocks.create_block("efficientnet-lite0", pretrained=False).state_dict()
    torch.manual_seed(0)  # the same random 2D weights inside the inflated model
    inflated = blocks.create_block("i3d-inflated", pretrained=False, time_kernel=3).net.state_dict()
    assert sorted(image) == sorted(inflated)
    assert inflated["_conv_stem.weight"].shape == (32, 3, 3, 3, 3)
    assert inflated["_blocks.3._depthwise_conv.weight"].shape == (144, 1, 3, 5, 5)
    assert inflated["_blocks.3._project_conv.weight"].shape == (40, 144, 1, 1, 1)
    for key in ("_conv_stem.weight", "_blocks.3._depthwise_conv.weight"):
        torch.testing.assert_close(inflated[key].sum(2), image[key])


@pytest.mark.parametrize("kernel, stride, groups", [(3, 2, 1), (5, 2, 4), (3, 1, 4), (1, 1, 1)])
def test_inflated_conv_keeps_static_clips_static_and_mixes_time(kernel, stride, groups):
    torch.manual_seed(0)
    conv = SamePadConv2d(4, 8, kernel, stride=stride, groups=groups)
    conv3d = InflatedConv3d(conv, 3 if kernel > 1 else 1)
    frame = torch.randn(2, 4, 14, 14)
    static = frame[:, :, None].expand(2, 4, 5, 14, 14)  # (B, C, T, H, W)
    with torch.no_grad():
        out = conv3d(static)
        expected = conv(frame)
    assert out.shape == (2, 8, 5, *expected.shape[-2:])
    torch.testing.assert_close(out, expected[:, :, None].expand_as(out), rtol=1e-5, atol=1e-5)
    impulse = torch.zeros(1, 4, 5, 14, 14)
    impulse[:, :, 2] = frame[:1]
    with torch.no_grad():
        response = conv3d(impulse).abs().flatten(3).sum(-1)[0].sum(0)  # (T,)
    spread = (response > 1e-6).nonzero().flatten().tolist()
    assert spread == ([1, 2, 3] if kernel > 1 else [2])


def test_inflated_model_accepts_channels_last_requests():
    model = _tiny("i3d-inflated").to(memory_format=torch.channels_last)
    assert model.net._conv_stem.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert model(torch.randn(1, 2, 3, 32, 32)).shape == (1, 5)


# --- configs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: RecurrentConfig(aggregate="max"),
        lambda: RecurrentConfig(encoder="resnet50"),
        lambda: TwoStreamConfig(fusion_weights=(0.0, 0.0)),
        lambda: TwoStreamConfig(flow_model="raft"),
        lambda: InflatedConfig(time_kernel=2),
    ],
)
def test_bad_configs_are_rejected(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize(
    "name", ["frame-average", "lrcn", "convpool", "convpool-lstm", "two-stream", "i3d-inflated"]
)
def test_wrong_clip_layout_names_the_expected_shape(name):
    model = _tiny(name)
    with pytest.raises(ValueError, match=r"\(B, T>=\d, 3, H, W\)"):
        model(torch.randn(2, 3, 2, 32, 32))  # channels and time swapped

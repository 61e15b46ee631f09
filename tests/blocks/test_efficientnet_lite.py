"""EfficientNet-Lite0: the bundled ImageNet weights load strictly and classify real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as photos

import blocks
from blocks.efficientnet_lite import (
    PREPROCESS,
    Preprocess,
    bundled_weights_path,
    imagenet_labels,
    preprocess,
    same_padding,
    to_unit_range,
)
from blocks.registry import WeightsMismatchError, load_weights, read_checkpoint

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
COFFEE_CLASSES = {"espresso", "cup", "coffee mug"}
ROCKET_CLASSES = {"missile", "projectile", "space shuttle"}


def _name(index: int) -> str:
    return imagenet_labels()[index].split(",")[0]


@pytest.fixture(scope="module")
def model():
    return blocks.create_block("efficientnet-lite0").eval()


@pytest.fixture(scope="module")
def checkpoint():
    return read_checkpoint(bundled_weights_path())


TORCHVISION_LIKE = Preprocess(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
PHOTOS = {"chelsea": photos.chelsea, "coffee": photos.coffee, "rocket": photos.rocket}


@pytest.fixture(scope="module")
def probs(model):
    """{normalisation: {photo: (1000,) probabilities}}, one batched forward per normalisation."""
    out = {}
    for name, spec in (("tf", PREPROCESS), ("torchvision", TORCHVISION_LIKE)):
        batch = torch.cat([preprocess(load()[None], spec) for load in PHOTOS.values()])
        # batch: (3, 3, 224, 224)
        with torch.no_grad():
            p = model(batch).softmax(-1)
        out[name] = dict(zip(PHOTOS, p))
    return out


def _top(p: torch.Tensor, k: int = 3) -> list[tuple[str, float]]:
    top = p.topk(k)
    return [(_name(i), v) for v, i in zip(top.values.tolist(), top.indices.tolist())]


# --- weights ------------------------------------------------------------------------------


def test_architecture_matches_the_bundled_checkpoint_exactly(checkpoint):
    own = blocks.create_block("efficientnet-lite0", pretrained=False).state_dict()
    assert sorted(own) == sorted(checkpoint)
    shapes = {k: tuple(v.shape) for k, v in own.items()}
    assert shapes == {k: tuple(v.shape) for k, v in checkpoint.items()}


def test_pretrained_builder_holds_the_file_tensors(model, checkpoint):
    state = model.state_dict()
    keys = ("_conv_stem.weight", "_blocks.7._depthwise_conv.weight", "_bn1.running_var", "_fc.bias")
    for key in keys:
        torch.testing.assert_close(state[key], checkpoint[key], rtol=0, atol=0)


@pytest.mark.parametrize("corruption", ["drop", "rename", "reshape"])
def test_corrupted_state_dict_raises(checkpoint, corruption):
    state = dict(checkpoint)
    if corruption == "drop":
        del state["_blocks.3._project_conv.weight"]
    elif corruption == "rename":
        state["_blocks.3.project_conv.weight"] = state.pop("_blocks.3._project_conv.weight")
    else:
        state["_blocks.3._project_conv.weight"] = state["_blocks.3._project_conv.weight"][:, :-1]
    fresh = blocks.create_block("efficientnet-lite0", pretrained=False)
    with pytest.raises(WeightsMismatchError, match="_blocks.3"):
        load_weights(fresh, state)


def test_new_label_space_and_input_channels_keep_the_backbone(checkpoint):
    model = blocks.create_block("efficientnet-lite0", num_classes=7, in_channels=4)
    assert model._fc.out_features == 7 and model.labels is None
    torch.testing.assert_close(
        model._blocks[5]._project_conv.weight, checkpoint["_blocks.5._project_conv.weight"]
    )
    # Cross-modality stem: the RGB filters averaged over colour, replicated over the 4 inputs.
    expected = checkpoint["_conv_stem.weight"].mean(1, keepdim=True).expand(-1, 4, -1, -1)
    torch.testing.assert_close(model._conv_stem.weight, expected)
    assert model(torch.randn(1, 4, 64, 64)).shape == (1, 7)


# --- real photos --------------------------------------------------------------------------


def test_cat_photo_is_a_cat(probs):
    top3 = _top(probs["tf"]["chelsea"])
    assert CAT_CLASSES & {name for name, _ in top3}, top3


def test_coffee_photo_is_espresso(probs):
    top3 = _top(probs["tf"]["coffee"])
    assert top3[0][0] == "espresso", top3
    assert {name for name, _ in top3[:2]} <= COFFEE_CLASSES, top3


def test_rocket_photo_is_a_rocket(probs):
    top3 = _top(probs["tf"]["rocket"])
    assert ROCKET_CLASSES & {name for name, _ in top3}, top3


def test_tf_normalisation_beats_torchvision_imagenet_normalisation(probs):
    """The Lite weights come from TF, trained on (x - 127) / 128: that input is more confident
    on the right classes than torchvision's ImageNet mean/std (which still roughly works)."""

    def right_mass(p: dict[str, torch.Tensor]) -> float:
        cat = sum(v for n, v in _top(p["chelsea"], k=10) if n in CAT_CLASSES)
        return cat + dict(_top(p["coffee"], k=10)).get("espresso", 0.0)

    assert right_mass(probs["tf"]) > right_mass(probs["torchvision"])


# --- API ----------------------------------------------------------------------------------


def test_forward_features_and_head_compose_to_forward(model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert features.shape == (2, 1280)
    torch.testing.assert_close(model.head(features), logits)


def test_channels_last_gives_the_same_logits(model):
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        plain = model(x)
        cl_model = model.to(memory_format=torch.channels_last)
        cl = cl_model(x.contiguous(memory_format=torch.channels_last))
    model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(cl, plain, rtol=1e-4, atol=1e-4)


def test_labels(model):
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) >= 998  # "crane" and "maillot" appear twice
    assert labels[0].startswith("tench")
    assert labels[281] == "tabby, tabby cat" and labels[285] == "Egyptian cat"
    assert labels[967] == "espresso" and labels[999].startswith("toilet tissue")
    assert model.labels == labels


def test_same_padding_is_tensorflows():
    assert same_padding(224, 3, 2) == (0, 1)  # TF pads the extra row at the bottom/right
    assert same_padding(28, 5, 2) == (1, 2)
    assert same_padding(15, 3, 2) == (1, 1)
    assert same_padding(7, 5, 1) == (2, 2)


# --- preprocessing ------------------------------------------------------------------------


def test_preprocess_shape_dtype_and_backends_agree():
    frames = np.random.default_rng(0).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)
    out = preprocess(frames)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(preprocess(torch.from_numpy(frames)), out)
    assert out.min() >= -1.0 and out.max() <= 1.0  # (x - 127) / 128 of 0..255


def test_preprocess_round_trip_without_resize():
    frames = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    spec = Preprocess(size=64, crop_fraction=1.0)
    back = to_unit_range(preprocess(frames, spec), spec) * 255  # (3, 3, 64, 64)
    np.testing.assert_allclose(back.permute(0, 2, 3, 1).numpy(), frames, atol=1e-3)


def test_preprocess_centre_crops_the_long_side():
    frame = np.zeros((1, 256, 512, 3), dtype=np.uint8)
    frame[:, :, 256 - 16 : 256 + 16] = 255  # a white vertical bar in the middle
    out = to_unit_range(preprocess(frame))[0, 0]  # (224, 224)
    columns = out.mean(0)
    assert columns[112 - 8 : 112 + 8].min() > 0.99 and columns[:50].max() < 0.01


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((64, 64, 3), np.uint8),  # no batch axis
        np.zeros((1, 3, 64, 64), np.uint8),  # channels first
        np.zeros((1, 64, 64, 3), np.float32),  # not uint8
    ],
)
def test_preprocess_rejects_wrong_input(bad):
    with pytest.raises(ValueError, match="expected"):
        preprocess(bad)


def test_folding_batchnorm_keeps_the_outputs():
    import copy

    from blocks import create_block

    model = create_block("efficientnet-lite0").eval()
    folded = copy.deepcopy(model).fold_batchnorm()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)

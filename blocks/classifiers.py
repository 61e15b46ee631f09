"""Classic video classifiers built on a 2D frame encoder (EfficientNet-Lite0 by default).

Every classifier here takes the same input — a batch of clips already preprocessed for the
encoder, ``(B, T, 3, H, W)`` float normalised with ``blocks.efficientnet_lite.PREPROCESS``
(``blocks.efficientnet_lite.preprocess`` turns decoded uint8 frames into it) — and exposes
``forward_features(clips) -> (B, D)``, ``head(features) -> (B, num_classes)`` and
``forward(clips) == head(forward_features(clips))``.

With ``pretrained=True`` and ``num_classes=1000`` the encoder's ImageNet classifier is reused,
so ``frame-average``, ``convpool`` and ``i3d-inflated`` give ImageNet labels zero-shot (on a static
clip they reproduce the image model exactly). ``lrcn``, ``convpool-lstm`` and ``two-stream`` add
fresh layers (LSTM, flow stream) that must be trained before their scores mean anything.

| name          | paper                                 | temporal model                      |
|---------------|---------------------------------------|-------------------------------------|
| frame-average | (baseline)                            | mean of frame features → head       |
| lrcn          | Donahue et al. 2015, arXiv 1411.4389  | LSTM, per-step logits averaged      |
| convpool      | Ng et al. 2015, arXiv 1503.08909      | max over time of conv feature maps  |
| convpool-lstm | Ng et al. 2015, arXiv 1503.08909      | deep LSTM, weighted per-step logits |
| two-stream    | Simonyan 2014, arXiv 1406.2199        | RGB + stacked-flow streams, fusion  |
| i3d-inflated  | Carreira 2017, arXiv 1705.07750       | 2D weights inflated to 3D           |
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blocks.efficientnet_lite import (
    PREPROCESS,
    EfficientNetLite,
    SamePadConv2d,
    imagenet_labels,
    same_padding,
    to_unit_range,
)
from blocks.registry import create_block, register_block

ENCODERS = ("efficientnet-lite0",)

_EFFICIENTNET_WEIGHTS_LICENCE = "Apache-2.0 (EfficientNet-Lite0 ImageNet weights)"
_CLIP_LAYOUT = "(B, T, 3, H, W) RGB clips, each frame preprocessed for the encoder"
_CLIP_RANGE = (
    "encoder-normalised: (pixel - 127) / 128, about [-1, 1] (blocks.efficientnet_lite.preprocess)"
)


# What the pipeline reads to run a classifier (see ``blocks.registry.BlockInfo``); the label
# names apply when the model keeps the encoder's 1000-class ImageNet head.
_PIPELINE_META = {
    "tasks": ("classify", "embed"),
    "input_kind": "clip",
    "preprocessing": PREPROCESS,
    "class_names": imagenet_labels,
}
_LITE0_FEATURES = 1280


def _tiny_clips(batch: int, frames: int = 2, size: int = 32) -> tuple[torch.Tensor]:
    return (torch.randn(batch, frames, 3, size, size),)


def _check_clips(clips: torch.Tensor, min_frames: int = 1) -> None:
    if clips.ndim != 5 or clips.shape[2] != 3 or clips.shape[1] < min_frames:
        raise ValueError(
            f"expected clips of shape (B, T>={min_frames}, 3, H, W), got {tuple(clips.shape)}"
        )


def build_encoder(name: str, pretrained: bool, num_classes: int, **config: Any) -> EfficientNetLite:
    """A registered frame encoder (an ``EfficientNetLite``) with or without its ImageNet weights."""
    if name not in ENCODERS:
        raise ValueError(f"unsupported encoder {name!r}; expected one of {ENCODERS}")
    encoder = create_block(name, pretrained=pretrained, num_classes=num_classes, **config)
    if not isinstance(encoder, EfficientNetLite):
        raise TypeError(
            f"encoder {name!r} built a {type(encoder).__name__}, expected an EfficientNetLite"
        )
    return encoder


def encode_frames(encoder: EfficientNetLite, clips: torch.Tensor) -> torch.Tensor:
    """Run the 2D encoder on every frame: (B, T, 3, H, W) → pooled features (B, T, D)."""
    b, t = clips.shape[:2]
    features = encoder.forward_features(clips.flatten(0, 1))  # (B*T, D)
    return features.view(b, t, -1)  # (B, T, D)


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """Fields shared by every classifier: which frame encoder, its weights, the label space."""

    encoder: str = "efficientnet-lite0"
    pretrained: bool = True
    num_classes: int = 1000
    dropout_rate: float = 0.2

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"unsupported encoder {self.encoder!r}; expected one of {ENCODERS}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")


class _ClipClassifier(nn.Module):
    """Shared plumbing: the frame encoder, labels and preprocessing metadata."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(
            config.encoder, config.pretrained, config.num_classes, dropout_rate=config.dropout_rate
        )
        self.num_classes = config.num_classes
        self.labels = self.encoder.labels
        self.preprocessing = self.encoder.preprocessing

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled clip features (B, D) → logits (B, num_classes): the encoder's own classifier
        unless a subclass puts its own head on top."""
        return self.encoder.head(features)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) → logits (B, num_classes)."""
        return self.head(self.forward_features(clips))


# --------------------------------------------------------------------------------------------
# frame-average
# --------------------------------------------------------------------------------------------


class FrameAverage(_ClipClassifier):
    """The zero-training baseline: classify the time-averaged frame feature.

    We average the pooled frame features and apply the encoder's head once. The head is linear
    (dropout is the identity in eval), so this equals averaging the per-frame logits exactly,
    while costing one head and giving the pipeline a clip feature to store.

    Inputs:  clips (B, T, 3, H, W), encoder-normalised.
    Outputs: logits (B, num_classes); ``forward_features`` → (B, D) with D = 1280 for Lite0.
    """

    def forward_features(self, clips: torch.Tensor) -> torch.Tensor:
        _check_clips(clips)
        return encode_frames(self.encoder, clips).mean(dim=1)  # (B, D)


@register_block(
    "frame-average",
    paper="Per-frame ImageNet classifier averaged over time (zero-training baseline; "
    "EfficientNet, Tan & Le, ICML 2019)",
    arxiv="1905.11946",
    repo=None,
    input_layout=_CLIP_LAYOUT,
    value_range=_CLIP_RANGE,
    weights_licence=_EFFICIENTNET_WEIGHTS_LICENCE,
    tiny_config={"pretrained": False, "num_classes": 5},
    example_inputs=_tiny_clips,
    description="Mean of EfficientNet-Lite0 frame features → ImageNet head; no training needed.",
    feature_dim=_LITE0_FEATURES,
    **_PIPELINE_META,
)
def _frame_average(**config: Any) -> FrameAverage:
    return FrameAverage(EncoderConfig(**config))


# --------------------------------------------------------------------------------------------
# lrcn and convpool-lstm (recurrent heads over frame features)
# --------------------------------------------------------------------------------------------

AGGREGATES = ("mean", "linear", "last")


@dataclass(frozen=True, kw_only=True)
class RecurrentConfig(EncoderConfig):
    """An LSTM over per-frame features with a classifier at every step.

    ``aggregate`` combines the per-step logits: ``mean`` (LRCN's average over time), ``linear``
    (weights growing linearly with t, so later steps — which have seen more frames — count
    more), ``last`` (the final step only).
    """

    hidden_size: int = 256
    num_layers: int = 1
    lstm_dropout: float = 0.0
    aggregate: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")


class RecurrentClassifier(_ClipClassifier):
    """Frame CNN → LSTM → per-step linear classifier → weighted average over time.

    With a linear head, the weighted average of the per-step logits equals the head applied to
    the same weighted average of the LSTM outputs; ``forward_features`` returns the latter so
    ``forward == head(forward_features)`` holds exactly. ``step_logits`` exposes the per-step
    predictions.

    Inputs:  clips (B, T, 3, H, W), encoder-normalised.
    Outputs: logits (B, num_classes); ``forward_features`` → (B, hidden_size);
             ``step_logits`` → (B, T, num_classes).
    """

    def __init__(self, config: RecurrentConfig) -> None:
        super().__init__(config)
        self.lstm = nn.LSTM(
            self.encoder.feature_dim,
            config.hidden_size,
            config.num_layers,
            batch_first=True,
            dropout=config.lstm_dropout if config.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout_rate)
        self.fc = nn.Linear(config.hidden_size, config.num_classes)

    def time_weights(self, steps: int, like: torch.Tensor) -> torch.Tensor:
        """(T,) non-negative weights summing to 1 that combine the per-step predictions."""
        if self.config.aggregate == "mean":
            w = like.new_ones(steps)
        elif self.config.aggregate == "linear":
            w = torch.arange(1, steps + 1, dtype=like.dtype, device=like.device)
        else:  # last
            w = like.new_zeros(steps)
            w[-1] = 1.0
        return w / w.sum()

    def sequence(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) → LSTM outputs (B, T, hidden_size)."""
        _check_clips(clips)
        outputs, _ = self.lstm(encode_frames(self.encoder, clips))  # (B, T, hidden)
        return outputs

    def step_logits(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) → per-step logits (B, T, num_classes)."""
        return self.head(self.sequence(clips))

    def forward_features(self, clips: torch.Tensor) -> torch.Tensor:
        outputs = self.sequence(clips)  # (B, T, hidden)
        weights = self.time_weights(outputs.shape[1], outputs)
        return torch.einsum("bth,t->bh", outputs, weights)  # (B, hidden)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


@register_block(
    "lrcn",
    paper="Donahue et al., Long-term Recurrent Convolutional Networks for Visual Recognition "
    "and Description, CVPR 2015",
    arxiv="1411.4389",
    repo="https://github.com/LisaAnne/lisa-caffe-public (LRCN activity recognition)",
    input_layout=_CLIP_LAYOUT,
    value_range=_CLIP_RANGE,
    weights_licence=_EFFICIENTNET_WEIGHTS_LICENCE + "; LSTM and classifier untrained",
    tiny_config={"pretrained": False, "num_classes": 5, "hidden_size": 8},
    example_inputs=_tiny_clips,
    description="Per-frame EfficientNet-Lite0 → 1-layer LSTM (256) → per-step logits averaged.",
    feature_dim=256,
    untrained_head=True,
    **_PIPELINE_META,
)
def _lrcn(**config: Any) -> RecurrentClassifier:
    return RecurrentClassifier(RecurrentConfig(**config))


@register_block(
    "convpool-lstm",
    paper="Ng et al., Beyond Short Snippets: Deep Networks for Video Classification, CVPR 2015 "
    "(LSTM variant)",
    arxiv="1503.08909",
    repo=None,
    input_layout=_CLIP_LAYOUT,
    value_range=_CLIP_RANGE,
    weights_licence=_EFFICIENTNET_WEIGHTS_LICENCE + "; LSTM and classifier untrained",
    tiny_config={"pretrained": False, "num_classes": 5, "hidden_size": 8, "num_layers": 2},
    example_inputs=_tiny_clips,
    description="Per-frame EfficientNet-Lite0 → 5 stacked LSTM layers (512) → per-step logits, "
    "linearly weighted over time.",
    feature_dim=512,
    untrained_head=True,
    **_PIPELINE_META,
)
def _convpool_lstm(**config: Any) -> RecurrentClassifier:
    # The paper's deep LSTM: five stacked layers of 512 cells over the frame features.
    defaults = {"hidden_size": 512, "num_layers": 5, "aggregate": "linear"}
    return RecurrentClassifier(RecurrentConfig(**{**defaults, **config}))


# --------------------------------------------------------------------------------------------
# convpool
# --------------------------------------------------------------------------------------------


class ConvPool(_ClipClassifier):
    """Conv pooling (Ng et al. 2015): max over time of the last conv feature maps, then the head.

    The max runs over frames at each (channel, y, x) of the encoder's final feature map, before
    the spatial average, as in the paper's "Conv Pooling"; the encoder's classifier follows
    (the paper adds fully connected layers after the pooling, which training can add here).
    A static clip therefore gives the image model's output.

    Inputs:  clips (B, T, 3, H, W), encoder-normalised.
    Outputs: logits (B, num_classes); ``forward_features`` → (B, D).
    """

    def forward_features(self, clips: torch.Tensor) -> torch.Tensor:
        _check_clips(clips)
        b, t = clips.shape[:2]
        maps = self.encoder.forward_feature_map(clips.flatten(0, 1))  # (B*T, D, h, w)
        maps = maps.view(b, t, *maps.shape[1:])  # (B, T, D, h, w)
        return self.encoder.pool(maps.amax(dim=1))  # (B, D)


@register_block(
    "convpool",
    paper="Ng et al., Beyond Short Snippets: Deep Networks for Video Classification, CVPR 2015 "
    "(Conv Pooling)",
    arxiv="1503.08909",
    repo=None,
    input_layout=_CLIP_LAYOUT,
    value_range=_CLIP_RANGE,
    weights_licence=_EFFICIENTNET_WEIGHTS_LICENCE,
    tiny_config={"pretrained": False, "num_classes": 5},
    example_inputs=_tiny_clips,
    description="Temporal max-pool of EfficientNet-Lite0 feature maps → ImageNet head.",
    feature_dim=_LITE0_FEATURES,
    **_PIPELINE_META,
)
def _convpool(**config: Any) -> ConvPool:
    return ConvPool(EncoderConfig(**config))


# --------------------------------------------------------------------------------------------
# two-stream
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TwoStreamConfig(EncoderConfig):
    """RGB stream + optical-flow stream with late fusion of softmax scores.

    ``flow_stack`` (L in the paper, which used 10) consecutive flow fields from the centre of
    the clip are stacked into a 2L-channel input for the flow CNN, so clips need T >= L + 1.
    The flow comes from ``flow_model`` (an ``ifnet-*`` block built with ``flow_config``, loaded
    from ``flow_weights`` — e.g. RIFE's ``flownet.pkl`` — when given). Flow is divided by
    ``flow_scale`` pixels and clipped to [-1, 1] (TSN's ±20 px convention).
    ``fusion_weights`` = (w_rgb, w_flow): fused = (w_rgb p_rgb + w_flow p_flow) / (w_rgb + w_flow).
    """

    flow_model: str = "ifnet-v4"
    flow_config: Mapping[str, Any] = field(default_factory=dict)
    flow_weights: str | None = None
    freeze_flow: bool = True
    flow_stack: int = 5
    flow_scale: float = 20.0
    fusion_weights: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.flow_model.startswith("ifnet-"):
            raise ValueError(f"flow_model must be an ifnet-* block, got {self.flow_model!r}")
        if self.flow_stack < 1 or self.flow_scale <= 0:
            raise ValueError("flow_stack must be >= 1 and flow_scale > 0")
        w = tuple(self.fusion_weights)
        if len(w) != 2 or min(w) < 0 or sum(w) <= 0:
            raise ValueError(
                f"fusion_weights must be two non-negative numbers, not both 0, got {w}"
            )


class TwoStream(_ClipClassifier):
    """Two-stream network (Simonyan & Zisserman 2014) with a learned-flow front end.

    * RGB stream: the frame encoder on every frame, features averaged over time → logits.
    * Flow stream: clips are mapped back to RGB in [0, 1] (``to_unit_range``, the inverse of the
      encoder normalisation, since IFNet expects [0, 1] frames); IFNet estimates the intermediate
      flows F_t→0, F_t→1 (t = 1/2) of each consecutive pair; their difference
      F_t→1 − F_t→0 ≈ F_0→1 is the frame-to-frame displacement. L displacements are stacked
      (B, 2L, H, W) and classified by an encoder whose stem takes 2L channels (cross-modality
      initialised from the RGB stem).
    * Late fusion: a weighted average of the two softmax distributions.

    ``forward`` returns the log of the fused distribution, so ``softmax(forward(x))`` is exactly
    the fused score and every classifier here returns logits. ``fused_scores`` gives it directly.

    Inputs:  clips (B, T, 3, H, W), encoder-normalised, T >= flow_stack + 1.
    Outputs: log fused scores (B, num_classes); ``forward_features`` → (B, 2D) = [rgb, flow].
    """

    def __init__(self, config: TwoStreamConfig) -> None:
        super().__init__(config)
        self.flow_net = create_block(
            config.flow_model, weights=config.flow_weights, **dict(config.flow_config)
        )
        if not hasattr(self.flow_net, "estimate_flow"):
            raise TypeError(f"{config.flow_model} has no estimate_flow(img0, img1)")
        if config.freeze_flow:
            self.flow_net.requires_grad_(False)
        self.flow_encoder = build_encoder(
            config.encoder,
            config.pretrained,
            config.num_classes,
            in_channels=2 * config.flow_stack,
            dropout_rate=config.dropout_rate,
        )
        weights = torch.tensor(config.fusion_weights, dtype=torch.float32)
        self.register_buffer("fusion_weights", weights, persistent=False)

    def stacked_flow(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) → the L central displacement fields, scaled, stacked: (B, 2L, H, W)."""
        _check_clips(clips, self.config.flow_stack + 1)
        b, t = clips.shape[:2]
        n = self.config.flow_stack
        start = (t - (n + 1)) // 2
        frames = clips[:, start : start + n + 1]  # (B, L+1, 3, H, W)
        frames = to_unit_range(frames, self.preprocessing)  # IFNet wants RGB in [0, 1]
        img0 = frames[:, :-1].flatten(0, 1)  # (B*L, 3, H, W)
        img1 = frames[:, 1:].flatten(0, 1)  # (B*L, 3, H, W)
        flow, _mask = self.flow_net.estimate_flow(img0, img1)  # (B*L, 4, H, W): F_t→0, F_t→1
        displacement = flow[:, 2:4] - flow[:, 0:2]  # (B*L, 2, H, W) ≈ F_0→1
        stacked = displacement.reshape(b, 2 * n, *displacement.shape[-2:])  # (B, 2L, H, W)
        return (stacked / self.config.flow_scale).clamp(-1.0, 1.0)

    def forward_features(self, clips: torch.Tensor) -> torch.Tensor:
        _check_clips(clips, self.config.flow_stack + 1)
        rgb = encode_frames(self.encoder, clips).mean(dim=1)  # (B, D)
        flow = self.flow_encoder.forward_features(self.stacked_flow(clips))  # (B, D)
        return torch.cat([rgb, flow], dim=1)  # (B, 2D)

    def stream_logits(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2D) → (rgb logits, flow logits), each (B, num_classes)."""
        rgb, flow = features.split(self.encoder.feature_dim, dim=1)  # (B, D) each
        return self.encoder.head(rgb), self.flow_encoder.head(flow)

    def fuse(self, rgb_logits: torch.Tensor, flow_logits: torch.Tensor) -> torch.Tensor:
        """Weighted average of the streams' softmax scores → (B, num_classes) probabilities."""
        w = self.fusion_weights / self.fusion_weights.sum()
        return w[0] * rgb_logits.softmax(dim=-1) + w[1] * flow_logits.softmax(dim=-1)

    def fused_scores(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) → fused class probabilities (B, num_classes)."""
        return self.fuse(*self.stream_logits(self.forward_features(clips)))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        scores = self.fuse(*self.stream_logits(features))
        return scores.clamp_min(torch.finfo(scores.dtype).tiny).log()


# A tiny ifnet-v4 for the registry tests (fields of blocks.ifnet.IFNetV4Config); padding to a
# multiple of 64 instead of the official 128 keeps 32x32 test clips cheap.
_TINY_IFNET: dict[str, Any] = {
    "widths": (8, 8, 8, 8, 8),
    "block_depth": 1,
    "encoder_channels": 4,
    "pad_multiple": 64,
}


@register_block(
    "two-stream",
    paper="Simonyan & Zisserman, Two-Stream Convolutional Networks for Action Recognition in "
    "Videos, NeurIPS 2014 (flow from RIFE's IFNet instead of TV-L1)",
    arxiv="1406.2199",
    repo=None,
    input_layout=_CLIP_LAYOUT + ", T >= flow_stack + 1",
    value_range=_CLIP_RANGE + "; converted back to [0, 1] for the flow model",
    weights_licence=_EFFICIENTNET_WEIGHTS_LICENCE + " for the RGB stream; flow stream untrained; "
    "IFNet weights as supplied by the user (flow_weights)",
    tiny_config={
        "pretrained": False,
        "num_classes": 5,
        "flow_stack": 1,
        "flow_config": _TINY_IFNET,
    },
    example_inputs=_tiny_clips,
    description="RGB EfficientNet-Lite0 + stacked IFNet-flow stream, late softmax fusion.",
    feature_dim=2 * _LITE0_FEATURES,
    untrained_head=True,
    **_PIPELINE_META,
)
def _two_stream(**config: Any) -> TwoStream:
    return TwoStream(TwoStreamConfig(**config))


# --------------------------------------------------------------------------------------------
# i3d-inflated
# --------------------------------------------------------------------------------------------


class InflatedConv3d(nn.Conv3d):
    """A ``SamePadConv2d`` inflated to t×k×k (I3D): the 2D kernel repeated over t, divided by t.

    Temporal padding replicates the first/last frame ((t-1)/2 each side, stride 1), so a static
    clip stays static up to the borders and reproduces the 2D output exactly; spatial padding is
    the 2D layer's TensorFlow ``SAME`` padding. Depthwise layers stay depthwise (same groups).

    Inputs:  (B, C_in, T, H, W)
    Outputs: (B, C_out, T, ceil(H / s), ceil(W / s))
    """

    def __init__(self, conv: SamePadConv2d, time_kernel: int) -> None:
        if time_kernel < 1 or time_kernel % 2 == 0:
            raise ValueError(f"time_kernel must be odd and positive, got {time_kernel}")
        kh, kw = conv.kernel_size
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            (time_kernel, kh, kw),
            stride=(1, *conv.stride),
            padding=0,
            groups=conv.groups,
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            self.weight.copy_(conv.weight.unsqueeze(2).expand_as(self.weight) / time_kernel)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_t = (self.kernel_size[0] - 1) // 2
        if pad_t:
            x = F.pad(x, (0, 0, 0, 0, pad_t, pad_t), mode="replicate")  # (B, C, T + 2p, H, W)
        (top, bottom), (left, right) = (
            same_padding(x.shape[-2], self.kernel_size[1], self.stride[1]),
            same_padding(x.shape[-1], self.kernel_size[2], self.stride[2]),
        )
        if top == bottom and left == right:
            return F.conv3d(x, self.weight, self.bias, self.stride, (0, top, left), 1, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv3d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def _batchnorm3d_from(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    new = nn.BatchNorm3d(
        bn.num_features,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
        device=bn.weight.device,
        dtype=bn.weight.dtype,
    )
    new.load_state_dict(bn.state_dict())
    return new


def inflate_efficientnet_lite(model: EfficientNetLite, time_kernel: int = 3) -> EfficientNetLite:
    """A 3D copy of ``model``: k×k convs (k > 1) → ``time_kernel``×k×k, 1×1 convs → 1×1×1.

    The stem and every depthwise k×k conv get ``time_kernel`` taps (temporal receptive field grows
    by time_kernel − 1 frames per such layer); pointwise convs stay per-frame, as in I3D where
    1×1 convs are inflated to 1×1×1. BatchNorm stays per-channel. No temporal striding: the
    output keeps T and the pooling averages over (T, h, w). Keys are unchanged, so the inflated
    model has the 2D state-dict layout with 5D conv weights.
    """
    inflated = copy.deepcopy(model)
    for name, module in list(inflated.named_modules()):
        if isinstance(module, SamePadConv2d):
            t = time_kernel if max(module.kernel_size) > 1 else 1
            replacement: nn.Module = InflatedConv3d(module, t)
        elif isinstance(module, nn.BatchNorm2d):
            replacement = _batchnorm3d_from(module)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = inflated.get_submodule(parent_name) if parent_name else inflated
        setattr(parent, child, replacement)
    return inflated


@dataclass(frozen=True, kw_only=True)
class InflatedConfig(EncoderConfig):
    """``time_kernel``: temporal taps of the stem and the k×k depthwise convs (odd)."""

    time_kernel: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.time_kernel < 1 or self.time_kernel % 2 == 0:
            raise ValueError(f"time_kernel must be odd and positive, got {self.time_kernel}")


class InflatedClassifier(nn.Module):
    """I3D-style 3D network obtained by inflating the 2D encoder (Carreira & Zisserman 2017).

    A static clip (all frames equal) gives the 2D model's features and logits (the "boring
    video" property the inflation is designed for), so the ImageNet weights are a meaningful
    start and, with ``num_classes=1000``, give ImageNet labels zero-shot.

    Inputs:  clips (B, T, 3, H, W), encoder-normalised.
    Outputs: logits (B, num_classes); ``forward_features`` → (B, D).
    """

    def __init__(self, config: InflatedConfig) -> None:
        super().__init__()
        self.config = config
        image_model = build_encoder(
            config.encoder, config.pretrained, config.num_classes, dropout_rate=config.dropout_rate
        )
        self.net = inflate_efficientnet_lite(image_model, config.time_kernel)
        self.num_classes = config.num_classes
        self.labels = image_model.labels
        self.preprocessing = image_model.preprocessing

    def forward_features(self, clips: torch.Tensor) -> torch.Tensor:
        _check_clips(clips)
        x = clips.transpose(1, 2)  # (B, 3, T, H, W)
        return self.net.pool(self.net.trunk(x))  # (B, D)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.head(features)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) → logits (B, num_classes)."""
        return self.head(self.forward_features(clips))

    def to(self, *args: Any, **kwargs: Any) -> InflatedClassifier:
        # Callers that ask every model for channels_last (the 2D layout) would hit "required rank
        # 4 tensor" on the 5D conv weights; the 3D equivalent is what they mean here.
        if kwargs.get("memory_format") is torch.channels_last:
            kwargs["memory_format"] = torch.channels_last_3d
        return super().to(*args, **kwargs)


@register_block(
    "i3d-inflated",
    paper="Carreira & Zisserman, Quo Vadis, Action Recognition? A New Model and the Kinetics "
    "Dataset, CVPR 2017 (inflation of EfficientNet-Lite0)",
    arxiv="1705.07750",
    repo="https://github.com/google-deepmind/kinetics-i3d",
    input_layout=_CLIP_LAYOUT,
    value_range=_CLIP_RANGE,
    weights_licence=_EFFICIENTNET_WEIGHTS_LICENCE + " (inflated)",
    tiny_config={"pretrained": False, "num_classes": 5},
    example_inputs=_tiny_clips,
    description="EfficientNet-Lite0 inflated to 3D (t=3 stem/depthwise, 1x1x1 pointwise).",
    feature_dim=_LITE0_FEATURES,
    **_PIPELINE_META,
)
def _i3d_inflated(**config: Any) -> InflatedClassifier:
    return InflatedClassifier(InflatedConfig(**config))


__all__ = [
    "AGGREGATES",
    "ENCODERS",
    "PREPROCESS",
    "ConvPool",
    "EncoderConfig",
    "FrameAverage",
    "InflatedClassifier",
    "InflatedConfig",
    "InflatedConv3d",
    "RecurrentClassifier",
    "RecurrentConfig",
    "TwoStream",
    "TwoStreamConfig",
    "build_encoder",
    "encode_frames",
    "inflate_efficientnet_lite",
]

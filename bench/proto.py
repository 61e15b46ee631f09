"""Variants of the frame encoder measured by the blocks benchmark beside the pipeline's own
options: bfloat16 *weights* (``apply_bf16``: weights converted once, activations bf16, features
back to fp32 before the fp32 head) against the pipeline's bf16 *autocast*
(``options.precision = "bf16"``), and BatchNorm folding (``fold_bn``: the same folding the
pipeline applies by default through ``EfficientNetLite.fold_batchnorm``).
"""

from __future__ import annotations

import torch
from torch import nn


def fold_bn(encoder: nn.Module) -> nn.Module:
    """Fold every BatchNorm of an EfficientNet-Lite into its convolution (in place)."""
    return encoder.fold_batchnorm()


class Bf16Encoder(nn.Module):
    """A bf16, channels_last copy of an EfficientNet-Lite encoder behind the fp32 interface."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.fp32_head = encoder._fc
        self.inner = encoder.to(memory_format=torch.channels_last).to(torch.bfloat16)
        self.feature_dim = getattr(encoder, "feature_dim", None)
        self.preprocessing = encoder.preprocessing
        self.labels = encoder.labels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)  # (N, 3, H, W)
        return self.inner.forward_features(x).float()  # (N, D)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fp32_head.float()(features.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def apply_bf16(model: nn.Module) -> nn.Module:
    """frame-average (and the other encoder-based clip models): swap the encoder; a bare
    efficientnet-lite0: wrap it."""
    fp32_fc = None
    if hasattr(model, "encoder"):
        fp32_fc = model.encoder._fc
        model.encoder = Bf16Encoder(model.encoder)
        model.encoder.fp32_head = fp32_fc.float()
        return model
    return Bf16Encoder(model)

"""Prototypes of model-worker changes, measured end to end without editing ``pipeline/``.

``ProtoModelWorker`` is ``pipeline.workers.ModelWorker`` plus what a ``proto_*`` key in the
model's ``options`` asks for, applied to the built runner:

- ``proto_bf16 = true``: the frame encoder's weights and activations in bfloat16 (channels_last),
  features cast back to float32 before the (float32) head. On CPUs with AMX/AVX-512 BF16 units
  oneDNN runs bf16 convolutions several times faster than fp32. ``torch.autocast`` on CPU
  gets part of it; converting the weights once gets all of it (no per-call weight casts).
- ``proto_fold_bn = true``: every BatchNorm folded into the convolution before it (eval-mode
  BN is an affine map per channel: ``torch.nn.utils.fusion.fuse_conv_bn_eval``); BN is a
  fifth of the encoder's CPU time in the profile (docs/BENCHMARKS.md).
- ``proto_threads = N``: ``torch.set_num_threads(N)`` in the model actor, whatever its
  ``num_cpus`` (the runner uses ``ceil(num_cpus)``, so a 1-CPU actor gets 1 thread).

``python -m bench.proto_run JOB.toml [--set ...]`` is ``vmb run`` with this worker swapped in.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.workers import ModelWorker

PROTO_KEYS = ("proto_bf16", "proto_fold_bn", "proto_threads")

# (conv, bn) attribute pairs of EfficientNet-Lite: stem, head, and per MBConv block.
_STEM_HEAD = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
_MBCONV = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def fold_bn(encoder: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm of an EfficientNet-Lite into its convolution (in place)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(module: nn.Module, pairs) -> None:
        for conv_name, bn_name in pairs:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
                setattr(module, bn_name, nn.Identity())

    fold(encoder, _STEM_HEAD)
    for block in encoder._blocks:
        fold(block, _MBCONV)
    return encoder


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


def accelerate(runner: Any, options: dict[str, Any]) -> None:
    if options.get("proto_threads"):
        torch.set_num_threads(int(options["proto_threads"]))
    if options.get("proto_fold_bn"):
        fold_bn(getattr(runner.model, "encoder", runner.model))
    if options.get("proto_bf16") and runner.device.type == "cpu":
        runner.model = apply_bf16(runner.model)
        runner._forward = runner.model


class ProtoModelWorker(ModelWorker):
    def __init__(self, model: dict, *args: Any, **kwargs: Any):
        super().__init__(model, *args, **kwargs)
        accelerate(self.runner, dict(model.get("options") or {}))

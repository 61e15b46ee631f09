"""Strict, safe checkpoint loading shared by every block."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from blocks.registry import UnsafeCheckpointError, WeightsMismatchError, load_weights, strip_prefix


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_strict_load_lists_missing_and_unexpected(tmp_path):
    state = {"conv.weight": torch.zeros(4, 3, 3, 3), "extra.bias": torch.zeros(1)}
    with pytest.raises(WeightsMismatchError) as err:
        load_weights(_Tiny(), state)
    assert "conv.bias" in str(err.value) and "extra.bias" in str(err.value)


def test_shape_mismatch_is_reported():
    state = {"conv.weight": torch.zeros(4, 3, 5, 5), "conv.bias": torch.zeros(4)}
    with pytest.raises(WeightsMismatchError, match="conv.weight"):
        load_weights(_Tiny(), state)


def test_ddp_prefix_is_stripped_from_a_file(tmp_path):
    src = _Tiny()
    path = tmp_path / "ckpt.pkl"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)
    dst = load_weights(_Tiny(), str(path), strip_prefix("module."))
    torch.testing.assert_close(dst.conv.weight, src.conv.weight)


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": _Evil()}, path)
    with pytest.raises(UnsafeCheckpointError, match="refusing"):
        load_weights(_Tiny(), str(path))

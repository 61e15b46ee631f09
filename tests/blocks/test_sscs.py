"""Soft Split / Soft Composition: token grids derived from sizes, and SC∘SS as an identity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blocks.sscs import (
    SoftComposition,
    SoftCompositionConfig,
    SoftSplit,
    SoftSplitConfig,
    overlap_count,
    smallest_size_for_grid,
    token_grid,
)

# (kernel, stride, padding) where every pixel of every size is covered by some patch
# (stride <= kernel and stride <= padding + 1)
COVERING = [(7, 3, 3), (3, 1, 1), (3, 2, 1), (4, 2, 1), (5, 3, 2), (2, 1, 0)]


def _identity_pair(channels: int, kernel: int, stride: int, padding: int, normalize: bool):
    hidden = channels * kernel * kernel
    geometry = {"kernel_size": kernel, "stride": stride, "padding": padding}
    ss = SoftSplit(SoftSplitConfig(channels=channels, hidden=hidden, **geometry))
    sc = SoftComposition(
        SoftCompositionConfig(channels=channels, hidden=hidden, normalize=normalize, **geometry)
    )
    with torch.no_grad():
        for linear in (ss.embedding, sc.embedding):
            linear.weight.copy_(torch.eye(hidden))
            linear.bias.zero_()
    return ss.eval(), sc.eval()


@pytest.mark.parametrize("kernel, stride, padding", COVERING)
@pytest.mark.parametrize("size", [(13, 17), (20, 20), (11, 8)])
def test_normalised_soft_composition_inverts_soft_split(kernel, stride, padding, size):
    ss, sc = _identity_pair(3, kernel, stride, padding, normalize=True)
    x = torch.randn(2, 3, *size)
    assert (overlap_count(size, (kernel,) * 2, (stride,) * 2, (padding,) * 2, x) > 0).all()
    torch.testing.assert_close(sc(ss(x), size), x)


def test_soft_composition_leaves_uncovered_pixels_zero_not_nan():
    ss, sc = _identity_pair(1, 5, 5, 0, normalize=True)
    x = torch.randn(1, 1, 11, 8)  # 5x5 tiles cover only the top-left 10x5
    out = sc(ss(x), (11, 8))
    torch.testing.assert_close(out[..., :10, :5], x[..., :10, :5])
    assert torch.isfinite(out).all() and (out[..., 10:, :] == 0).all() and (out[..., 5:] == 0).all()


def test_unnormalised_soft_composition_counts_overlaps():
    """The official generator's SoftComp sums overlapping patches without dividing."""
    ss, sc = _identity_pair(2, 7, 3, 3, normalize=False)
    x = torch.randn(1, 2, 13, 17)
    count = overlap_count((13, 17), (7, 7), (3, 3), (3, 3), x)
    assert count.max() > 1  # the patches really overlap
    torch.testing.assert_close(sc(ss(x), (13, 17)), x * count)


def test_soft_composition_normalisation_equals_official_fold_of_ones():
    """F3N in the official code divides fold(x) by fold(ones(B, N, 49)) for 7x7 patches."""
    sc = SoftComposition(SoftCompositionConfig(channels=2, hidden=8, normalize=True))
    tokens = torch.randn(3, 5 * 6, 8)
    ours = sc(tokens, (13, 17))
    fold = torch.nn.Fold(output_size=(13, 17), kernel_size=7, stride=3, padding=3)
    patches = sc.embedding(tokens).permute(0, 2, 1)
    reference = fold(patches) / fold(torch.ones(3, 49, 30))
    torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize("size", [(60, 108), (13, 17), (1, 1), (7, 9), (59, 107), (16, 24)])
@pytest.mark.parametrize("kernel, stride, padding", COVERING + [(2, 3, 0), (5, 5, 0)])
def test_soft_split_token_grid_matches_unfold(size, kernel, stride, padding):
    if min(size) + 2 * padding < kernel:
        with pytest.raises(ValueError, match="smaller than one"):
            token_grid(size, (kernel,) * 2, (stride,) * 2, (padding,) * 2)
        return
    grid = token_grid(size, (kernel,) * 2, (stride,) * 2, (padding,) * 2)
    patches = F.unfold(torch.zeros(1, 1, *size), kernel, stride=stride, padding=padding)
    assert grid[0] * grid[1] == patches.shape[-1]


def test_soft_split_derives_the_official_numbers():
    """At FuseFormer's 60x108 map the official code hard-codes 720 tokens of 49-pixel patches."""
    ss = SoftSplit(SoftSplitConfig())
    assert ss.grid((60, 108)) == (20, 36)
    tokens = ss(torch.zeros(1, 128, 60, 108))
    assert tokens.shape == (1, 720, 512)
    assert ss.embedding.in_features == 128 * 49


@pytest.mark.parametrize("size", [(13, 17), (9, 11), (31, 5)])
def test_soft_split_and_composition_at_odd_sizes(size):
    ss = SoftSplit(SoftSplitConfig(channels=4, hidden=16, kernel_size=3, stride=2, padding=1))
    sc = SoftComposition(
        SoftCompositionConfig(channels=4, hidden=16, kernel_size=3, stride=2, padding=1)
    )
    x = torch.randn(2, 4, *size)
    tokens = ss(x)
    grid = ss.grid(size)
    assert grid == ((size[0] - 1) // 2 + 1, (size[1] - 1) // 2 + 1)
    assert tokens.shape == (2, grid[0] * grid[1], 16)
    assert sc(tokens, size).shape == (2, 4, *size)
    # gridded tokens without a size compose to the smallest size with that grid
    smallest = smallest_size_for_grid(grid, (3, 3), (2, 2), (1, 1))
    out = sc(tokens.reshape(2, *grid, 16))
    assert out.shape == (2, 4, *smallest) and ss.grid(smallest) == grid


def test_soft_split_token_is_the_embedded_patch():
    ss = SoftSplit(SoftSplitConfig(channels=2, hidden=5, kernel_size=3, stride=2, padding=1))
    x = torch.randn(1, 2, 7, 9)
    tokens = ss(x)  # (1, 4*5, 5)
    padded = F.pad(x, (1, 1, 1, 1))
    row, col = 2, 3
    patch = padded[0, :, 2 * row : 2 * row + 3, 2 * col : 2 * col + 3].reshape(-1)
    torch.testing.assert_close(tokens[0, row * 5 + col], ss.embedding(patch))


def test_soft_composition_bias_is_resized_to_other_sizes():
    sc = SoftComposition(
        SoftCompositionConfig(
            channels=2, hidden=8, kernel_size=3, stride=2, padding=1, bias_size=(9, 11)
        )
    )
    with torch.no_grad():
        sc.embedding.weight.zero_()
        sc.embedding.bias.zero_()
        sc.bias.copy_(torch.arange(2 * 9 * 11, dtype=torch.float32).reshape(2, 9, 11))
    torch.testing.assert_close(sc(torch.zeros(1, 30, 8), (9, 11))[0], sc.bias)
    resized = sc(torch.zeros(1, 6 * 7, 8), (12, 14))
    assert resized.shape == (1, 2, 12, 14)
    assert resized[0, 0].min() >= 0 and resized[0, 1].min() >= 99


def test_soft_wrong_shapes_name_the_expected_shape():
    sc = SoftComposition(
        SoftCompositionConfig(channels=2, hidden=8, kernel_size=3, stride=2, padding=1)
    )
    with pytest.raises(ValueError, match="5x6"):
        sc(torch.zeros(1, 31, 8), (9, 11))
    with pytest.raises(ValueError, match="output_size"):
        sc(torch.zeros(1, 30, 8))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        SoftSplit(SoftSplitConfig(channels=2, hidden=8))(torch.zeros(1, 3, 9, 11))

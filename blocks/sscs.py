"""Soft Split (SS) and Soft Composition (SC): overlapping patch tokens and their inverse.

FuseFormer (Liu et al., ICCV 2021, arXiv 2109.02974) cuts a feature map into *overlapping*
patches (``unfold`` with kernel > stride) and embeds each patch with a Linear layer; Soft
Composition maps tokens back to patches with a Linear layer and sums them into a map with
``fold``, so overlapping patches add up. Where tokens overlap, the sum counts each pixel
several times; dividing by ``fold(ones)`` (how many patches cover each pixel) turns the sum
into a mean. The official code uses that normalisation only inside the Fusion FFN (F3N,
``model/fuseformer.py: FusionFeedForward``); the generator's final Soft Composition
(``SoftComp``) sums without normalising and adds a learnable per-pixel bias. Both behaviours are
available here through ``SoftCompositionConfig.normalize`` and ``bias_size``.

The official code fixes the map size (``output_size=(60, 108)``) and the patch count (49 = 7x7)
at construction; here the token grid comes from the input size and the kernel at call time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from blocks.registry import register_block

Pair = tuple[int, int]

FUSEFORMER_PAPER = (
    "Liu et al., FuseFormer: Fusing Fine-Grained Information in Transformers for Video "
    "Inpainting, ICCV 2021"
)
FUSEFORMER_ARXIV = "2109.02974"
FUSEFORMER_REPO = "https://github.com/ruiliu-ai/FuseFormer"
# The official repository carries no licence file and its README states none.
FUSEFORMER_LICENCE = "none stated (ruiliu-ai/FuseFormer has no licence file)"


def as_pair(value: int | Pair | list[int]) -> Pair:
    """``3`` → ``(3, 3)``; pairs (also lists read from TOML) → ``(int, int)``."""
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def pair_fields(config: object, *names: str) -> None:
    """Normalise int-or-pair fields of a frozen dataclass to ``(int, int)`` tuples."""
    for name in names:
        value = getattr(config, name)
        if value is not None:
            object.__setattr__(config, name, as_pair(value))


def token_grid(size: Pair, kernel_size: Pair, stride: Pair, padding: Pair) -> Pair:
    """Rows and columns of patches ``unfold`` takes from a map of ``size`` (H, W)."""
    grid = tuple(
        (n + 2 * p - k) // s + 1
        for n, k, s, p in zip(size, kernel_size, stride, padding, strict=True)
    )
    if min(grid) < 1:
        raise ValueError(
            f"a {size[0]}x{size[1]} map is smaller than one {kernel_size[0]}x{kernel_size[1]} "
            f"patch with padding {padding}"
        )
    return grid  # type: ignore[return-value]


def smallest_size_for_grid(grid: Pair, kernel_size: Pair, stride: Pair, padding: Pair) -> Pair:
    """The smallest map size whose ``unfold`` gives ``grid``; up to ``stride - 1`` larger sizes
    give the same grid, so pass the size explicitly when it is known."""
    sizes = zip(grid, kernel_size, stride, padding, strict=True)
    return tuple((g - 1) * s + k - 2 * p for g, k, s, p in sizes)  # type: ignore[return-value]


def overlap_count(
    size: Pair, kernel_size: Pair, stride: Pair, padding: Pair, like: torch.Tensor
) -> torch.Tensor:
    """How many patches cover each pixel of a ``size`` map: ``fold(ones)``, shape (1, 1, H, W)."""
    grid = token_grid(size, kernel_size, stride, padding)
    area = kernel_size[0] * kernel_size[1]
    ones = like.new_ones(1, area, grid[0] * grid[1])  # (1, kh*kw, L)
    return F.fold(ones, size, kernel_size, stride=stride, padding=padding)  # (1, 1, H, W)


def fold_patches(
    patches: torch.Tensor,
    size: Pair,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    normalize: bool,
) -> torch.Tensor:
    """Sum patch columns (N, C*kh*kw, L) into maps (N, C, H, W); with ``normalize``, divide by
    the overlap count so each pixel is the mean of the patches covering it.

    Pixels no patch covers stay 0 instead of the 0/0 the official code would produce. Every
    pixel of every map size is covered when stride <= kernel and stride <= padding + 1, as with
    FuseFormer's 7/3/3 geometry; otherwise gaps or trailing rows/columns can be missed.
    """
    summed = F.fold(patches, size, kernel_size, stride=stride, padding=padding)  # (N, C, H, W)
    if not normalize:
        return summed
    count = overlap_count(size, kernel_size, stride, padding, patches)  # (1, 1, H, W)
    return summed / count.clamp_min(1.0)


def resize_map(bias: torch.Tensor, size: Pair) -> torch.Tensor:
    """A (C, h, w) learnable map resized bilinearly to ``size``; unchanged at its own size."""
    if tuple(bias.shape[-2:]) == tuple(size):
        return bias
    resized = F.interpolate(bias[None], size=size, mode="bilinear", align_corners=False)
    return resized[0]  # (C, H, W)


@dataclass(frozen=True, kw_only=True)
class SoftSplitConfig:
    """Soft Split: ``channels`` input maps → tokens of width ``hidden``.

    Defaults are FuseFormer's (128 channels, 7x7 patches, stride 3, padding 3, hidden 512).
    ``dropout`` follows the embedding, as in the official ``SoftSplit``.
    """

    channels: int = 128
    hidden: int = 512
    kernel_size: Pair = (7, 7)
    stride: Pair = (3, 3)
    padding: Pair = (3, 3)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        pair_fields(self, "kernel_size", "stride", "padding")
        if self.channels < 1 or self.hidden < 1:
            raise ValueError(
                f"channels and hidden must be positive, got {self.channels}, {self.hidden}"
            )


class SoftSplit(nn.Module):
    """Overlapping patches of a map, each flattened and embedded by a Linear layer.

    Inputs:
        x: (B, C, H, W) with C = ``config.channels``; any H, W of at least one patch.
    Outputs:
        (B, N, hidden) tokens, N = Gh * Gw with (Gh, Gw) = ``self.grid((H, W))``, row-major.
    """

    def __init__(self, config: SoftSplitConfig) -> None:
        super().__init__()
        self.config = config
        patch_dim = config.channels * config.kernel_size[0] * config.kernel_size[1]
        self.embedding = nn.Linear(patch_dim, config.hidden)
        self.dropout = nn.Dropout(config.dropout)

    def grid(self, size: Pair) -> Pair:
        c = self.config
        return token_grid(size, c.kernel_size, c.stride, c.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.channels:
            raise ValueError(
                f"soft-split expected a map of shape (B, {c.channels}, H, W), got {tuple(x.shape)}"
            )
        patches = F.unfold(x, c.kernel_size, stride=c.stride, padding=c.padding)  # (B, C*kh*kw, N)
        tokens = self.embedding(patches.transpose(1, 2))  # (B, N, hidden)
        return self.dropout(tokens)


@dataclass(frozen=True, kw_only=True)
class SoftCompositionConfig:
    """Soft Composition: tokens of width ``hidden`` → ``channels`` maps.

    Args:
        normalize: divide the folded sum by the overlap count. The official generator's final
            ``SoftComp`` does not (False); the F3N inside each FuseFormer block does (True).
        bias_size: (H, W) of the learnable per-pixel bias added after folding, as the official
            ``SoftComp`` does (``bias`` of shape (C, 60, 108) in ``fuseformer.pth``). At another
            output size the bias is bilinearly resized. None: no bias.
        output_size: default (H, W) when ``forward`` is not given one and the tokens are flat.
    """

    channels: int = 128
    hidden: int = 512
    kernel_size: Pair = (7, 7)
    stride: Pair = (3, 3)
    padding: Pair = (3, 3)
    normalize: bool = False
    bias_size: Pair | None = None
    output_size: Pair | None = None

    def __post_init__(self) -> None:
        pair_fields(self, "kernel_size", "stride", "padding", "bias_size", "output_size")
        if self.channels < 1 or self.hidden < 1:
            raise ValueError(
                f"channels and hidden must be positive, got {self.channels}, {self.hidden}"
            )


class SoftComposition(nn.Module):
    """Tokens → patches by a Linear layer → maps by ``fold`` (+ overlap normalisation, + bias).

    Inputs:
        tokens: (B, N, hidden) row-major over the token grid, or (B, Gh, Gw, hidden).
        output_size: (H, W) of the map to compose. If omitted: ``config.output_size`` for flat
            tokens, else the smallest size whose soft split gives (Gh, Gw) for gridded tokens.
            N must equal the token count of ``output_size``.
    Outputs:
        (B, C, H, W) with C = ``config.channels``.
    """

    def __init__(self, config: SoftCompositionConfig) -> None:
        super().__init__()
        self.config = config
        patch_dim = config.channels * config.kernel_size[0] * config.kernel_size[1]
        self.embedding = nn.Linear(config.hidden, patch_dim)
        if config.bias_size is not None:
            self.bias = nn.Parameter(torch.zeros(config.channels, *config.bias_size))
        else:
            self.register_parameter("bias", None)

    def forward(self, tokens: torch.Tensor, output_size: Pair | None = None) -> torch.Tensor:
        c = self.config
        if tokens.dim() not in (3, 4) or tokens.shape[-1] != c.hidden:
            raise ValueError(
                f"soft-composition expected tokens of shape (B, N, {c.hidden}) or "
                f"(B, Gh, Gw, {c.hidden}), got {tuple(tokens.shape)}"
            )
        if output_size is None and tokens.dim() == 4:
            output_size = smallest_size_for_grid(
                tuple(tokens.shape[1:3]), c.kernel_size, c.stride, c.padding
            )
        output_size = as_pair(output_size) if output_size is not None else c.output_size
        if output_size is None:
            raise ValueError("soft-composition needs output_size for flat (B, N, hidden) tokens")
        grid = token_grid(output_size, c.kernel_size, c.stride, c.padding)
        batch = tokens.shape[0]
        tokens = tokens.reshape(batch, -1, c.hidden)  # (B, N, hidden)
        if tokens.shape[1] != grid[0] * grid[1]:
            raise ValueError(
                f"soft-composition expected {grid[0]}x{grid[1]} = {grid[0] * grid[1]} tokens for a "
                f"{output_size[0]}x{output_size[1]} map, got shape {tuple(tokens.shape)}"
            )
        patches = self.embedding(tokens).transpose(1, 2)  # (B, C*kh*kw, N)
        maps = fold_patches(
            patches, output_size, c.kernel_size, c.stride, c.padding, c.normalize
        )  # (B, C, H, W)
        if self.bias is not None:
            maps = maps + resize_map(self.bias, output_size)[None]
        return maps


@register_block(
    "soft-split",
    paper=FUSEFORMER_PAPER,
    arxiv=FUSEFORMER_ARXIV,
    repo=FUSEFORMER_REPO,
    input_layout="(B, C, H, W) feature map, any H, W of at least one patch",
    value_range="any (features)",
    tiny_config={"channels": 4, "hidden": 16, "kernel_size": 3, "stride": 2, "padding": 1},
    example_inputs=lambda batch: (
        torch.randn(batch, 4, 9, 11, generator=torch.Generator().manual_seed(0)),
    ),
    weights_licence=FUSEFORMER_LICENCE,
    description="overlapping patch tokenisation (unfold + Linear)",
)
def soft_split(**config) -> SoftSplit:
    return SoftSplit(SoftSplitConfig(**config))


@register_block(
    "soft-composition",
    paper=FUSEFORMER_PAPER,
    arxiv=FUSEFORMER_ARXIV,
    repo=FUSEFORMER_REPO,
    input_layout="(B, N, hidden) tokens (+ output_size) or (B, Gh, Gw, hidden)",
    value_range="any (features)",
    tiny_config={
        "channels": 4,
        "hidden": 16,
        "kernel_size": 3,
        "stride": 2,
        "padding": 1,
        "normalize": True,
        "bias_size": (9, 11),
        "output_size": (9, 11),
    },
    # a 9x11 map with 3x3 patches, stride 2, padding 1 has a 5x6 token grid
    example_inputs=lambda batch: (
        torch.randn(batch, 30, 16, generator=torch.Generator().manual_seed(0)),
    ),
    weights_licence=FUSEFORMER_LICENCE,
    description="inverse of soft-split (Linear + fold [+ overlap normalisation] + bias)",
)
def soft_composition(**config) -> SoftComposition:
    return SoftComposition(SoftCompositionConfig(**config))


__all__ = [
    "SoftComposition",
    "SoftCompositionConfig",
    "SoftSplit",
    "SoftSplitConfig",
    "as_pair",
    "fold_patches",
    "overlap_count",
    "pair_fields",
    "resize_map",
    "smallest_size_for_grid",
    "token_grid",
]

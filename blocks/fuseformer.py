"""FuseFormer: the FuseFormer block (attention + Fusion FFN) and the video inpainting generator.

Liu et al., "FuseFormer: Fusing Fine-Grained Information in Transformers for Video Inpainting",
ICCV 2021, arXiv 2109.02974; official code github.com/ruiliu-ai/FuseFormer
(``model/fuseformer.py``). Module and parameter names follow the official generator so that the
released ``fuseformer.pth`` loads strictly; the numbers the official code fixes at construction
(``output_size=(60, 108)``, 49 = 7x7 patches per token, 720 tokens per frame) are derived here
from the input size and the kernel, so the generator runs at any frame size divisible by 4.

How masks are given: the generator has no mask input. Like the official ``test.py``, callers
blank the holes first (``mask_frames``: frames in [-1, 1] times ``1 - mask``, so holes read 0,
mid-grey) and, after the forward pass, keep the known pixels from the input and take only the
holes from the prediction (``composite``). ``FuseFormer.inpaint`` does both. The official test
script also dilates each binary mask with a 3x3 cross for 4 iterations before this; do that
upstream when reproducing its numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from blocks.registry import register_block
from blocks.sscs import (
    FUSEFORMER_ARXIV,
    FUSEFORMER_LICENCE,
    FUSEFORMER_PAPER,
    FUSEFORMER_REPO,
    Pair,
    SoftComposition,
    SoftCompositionConfig,
    SoftSplit,
    SoftSplitConfig,
    as_pair,
    fold_patches,
    pair_fields,
    token_grid,
)

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


# --------------------------------------------------------------------------------------------
# FuseFormer block
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FuseFormerBlockConfig:
    """One FuseFormer transformer block; defaults are the official generator's.

    Args:
        hidden: token width.
        num_heads: attention heads (``hidden`` must divide evenly).
        ffn_hidden: F3N inner width; it is folded as ``ffn_hidden / (kh * kw)`` channels, so it
            must be a multiple of the patch area (official: 1960 = 40 x 49).
        kernel_size, stride, padding: the soft split geometry the tokens came from.
        dropout: official placements: attention probabilities, the attention residual branch,
            after the F3N activation and after the F3N output. The generator uses 0.
        activation: F3N activation. The official code uses ReLU; "gelu" is offered because
            later FuseFormer-derived models (e.g. E2FGVI) switched to it.
        output_size: default (H, W) of the feature map the tokens tile, for calls that do not
            pass ``output_size``.
    """

    hidden: int = 512
    num_heads: int = 4
    ffn_hidden: int = 1960
    kernel_size: Pair = (7, 7)
    stride: Pair = (3, 3)
    padding: Pair = (3, 3)
    dropout: float = 0.0
    activation: str = "relu"
    output_size: Pair | None = None

    def __post_init__(self) -> None:
        pair_fields(self, "kernel_size", "stride", "padding", "output_size")
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by num_heads={self.num_heads}")
        area = self.kernel_size[0] * self.kernel_size[1]
        if self.ffn_hidden % area:
            raise ValueError(
                f"ffn_hidden={self.ffn_hidden} must be a multiple of the patch area "
                f"{self.kernel_size[0]}x{self.kernel_size[1]} = {area}"
            )
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}"
            )


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over every token of every frame at once.

    Inputs: x (B, L, hidden). Outputs: (B, L, hidden).
    """

    def __init__(self, hidden: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.query_embedding = nn.Linear(hidden, hidden)
        self.key_embedding = nn.Linear(hidden, hidden)
        self.value_embedding = nn.Linear(hidden, hidden)
        self.output_linear = nn.Linear(hidden, hidden)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        x = x.reshape(b, length, self.num_heads, c // self.num_heads)  # (B, L, heads, d)
        return x.transpose(1, 2)  # (B, heads, L, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        q = self._heads(self.query_embedding(x))
        k = self._heads(self.key_embedding(x))
        v = self._heads(self.value_embedding(x))
        att = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )  # (B, heads, L, d)
        att = att.transpose(1, 2).reshape(b, length, c)  # (B, L, hidden)
        return self.output_linear(att)


class FusionFeedForward(nn.Module):
    """F3N: Linear → soft composition → ÷ overlap count → soft split → activation → Linear.

    Folding the widened tokens back onto the feature map and re-splitting them mixes each
    token with the overlapping parts of its neighbours. The sub-module names ``conv1``/``conv2``
    (which hold Linear layers) are the official ones, kept for checkpoint compatibility.

    Inputs:
        x: (B, T * N, hidden), N = tokens per frame of an ``output_size`` map.
        output_size: (H, W) of that map.
    Outputs:
        (B, T * N, hidden).
    """

    def __init__(self, config: FuseFormerBlockConfig) -> None:
        super().__init__()
        self.config = config
        self.conv1 = nn.Sequential(nn.Linear(config.hidden, config.ffn_hidden))
        self.conv2 = nn.Sequential(
            _ACTIVATIONS[config.activation](),
            nn.Dropout(config.dropout),
            nn.Linear(config.ffn_hidden, config.hidden),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, output_size: Pair) -> torch.Tensor:
        c = self.config
        grid = token_grid(output_size, c.kernel_size, c.stride, c.padding)
        per_frame = grid[0] * grid[1]
        x = self.conv1(x)  # (B, T*N, F)
        b, length, width = x.shape
        patches = x.reshape(-1, per_frame, width).transpose(1, 2)  # (B*T, F, N), F = C'*kh*kw
        maps = fold_patches(
            patches, output_size, c.kernel_size, c.stride, c.padding, normalize=True
        )  # (B*T, C', H, W)
        patches = F.unfold(maps, c.kernel_size, stride=c.stride, padding=c.padding)  # (B*T, F, N)
        x = patches.transpose(1, 2).reshape(b, length, width)  # (B, T*N, F)
        return self.conv2(x)


class FuseFormerBlock(nn.Module):
    """Pre-norm transformer block: x + attention(norm1(x)), then + F3N(norm2(x)).

    Inputs:
        x: (B, T * N, hidden) soft-split tokens of T frames, frame-major, each frame's N tokens
            row-major over its token grid.
        output_size: (H, W) of the feature map the tokens tile; N and T are derived from it
            and the kernel. Defaults to ``config.output_size``.
    Outputs:
        (B, T * N, hidden).
    """

    def __init__(self, config: FuseFormerBlockConfig) -> None:
        super().__init__()
        self.config = config
        self.attention = MultiHeadAttention(config.hidden, config.num_heads, config.dropout)
        self.ffn = FusionFeedForward(config)
        self.norm1 = nn.LayerNorm(config.hidden)
        self.norm2 = nn.LayerNorm(config.hidden)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, output_size: Pair | None = None) -> torch.Tensor:
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.hidden:
            raise ValueError(
                f"fuseformer-block expected tokens of shape (B, T*N, {c.hidden}), "
                f"got {tuple(x.shape)}"
            )
        output_size = as_pair(output_size) if output_size is not None else c.output_size
        if output_size is None:
            raise ValueError(
                "fuseformer-block needs the (H, W) of the map its tokens tile (output_size)"
            )
        grid = token_grid(output_size, c.kernel_size, c.stride, c.padding)
        if x.shape[1] % (grid[0] * grid[1]):
            raise ValueError(
                f"fuseformer-block expected a multiple of {grid[0]}x{grid[1]} tokens per sample "
                f"for a {output_size[0]}x{output_size[1]} map, got shape {tuple(x.shape)}"
            )
        x = x + self.dropout(self.attention(self.norm1(x)))
        return x + self.ffn(self.norm2(x), output_size)


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FuseFormerConfig:
    """The FuseFormer inpainting generator; defaults reproduce the official one (36,591,299
    parameters).

    Args:
        channels: encoder width c (official 256). The encoder's widths are c/4, c/4, c/2, c,
            3c/2, then 2c, 3c/2, c, c/2 in the grouped fusion layers; the transformer works on
            the c/2-channel map at 1/4 resolution, and the decoder's widths are c/2 and c/4.
        hidden, num_blocks, num_heads, ffn_hidden, kernel_size, stride, padding, dropout,
        activation: the transformer (see ``FuseFormerBlockConfig``).
        native_size: frame (H, W) the learned positional embedding and the soft-composition
            bias are laid out for (official 240x432, i.e. a 60x108 map, 20x36 tokens). At other
            sizes both are resized (bicubic and bilinear) to the new token grid and map.
    """

    channels: int = 256
    hidden: int = 512
    num_blocks: int = 8
    num_heads: int = 4
    ffn_hidden: int = 1960
    kernel_size: Pair = (7, 7)
    stride: Pair = (3, 3)
    padding: Pair = (3, 3)
    dropout: float = 0.0
    activation: str = "relu"
    native_size: Pair = (240, 432)

    def __post_init__(self) -> None:
        pair_fields(self, "kernel_size", "stride", "padding", "native_size")
        if self.channels % 16:
            # the grouped fusion layers split c and 3c/2 channels into 8 groups
            raise ValueError(f"channels must be a multiple of 16, got {self.channels}")
        if self.native_size[0] % 4 or self.native_size[1] % 4:
            raise ValueError(f"native_size must be divisible by 4, got {self.native_size}")
        self.block_config()  # validates heads / ffn_hidden / activation

    @property
    def feature_size(self) -> Pair:
        """(H, W) of the encoder's map at ``native_size``."""
        return (self.native_size[0] // 4, self.native_size[1] // 4)

    def block_config(self) -> FuseFormerBlockConfig:
        return FuseFormerBlockConfig(
            hidden=self.hidden,
            num_heads=self.num_heads,
            ffn_hidden=self.ffn_hidden,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dropout=self.dropout,
            activation=self.activation,
        )


class Encoder(nn.Module):
    """Four convolutions to 1/4 resolution, then four grouped "fusion" convolutions that each see
    the 4th layer's output alongside the previous one, interleaved group by group.

    ``layers`` alternates Conv2d and LeakyReLU so its indices match the official keys
    (``encoder.layers.0`` … ``encoder.layers.16``).

    Inputs: (N, 3, H, W), H and W divisible by 4. Outputs: (N, c/2, H/4, W/4).
    """

    fusion_groups = (2, 4, 8, 1)

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        plain = [
            (3, c // 4, 2),
            (c // 4, c // 4, 1),
            (c // 4, c // 2, 2),
            (c // 2, c, 1),
            (c, 3 * c // 2, 1),
        ]
        fusion_out = (2 * c, 3 * c // 2, c, c // 2)
        layers: list[nn.Module] = []
        for cin, cout, stride in plain:
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2)]
        previous = plain[-1][1]
        for groups, cout in zip(self.fusion_groups, fusion_out, strict=True):
            layers += [
                nn.Conv2d(c + previous, cout, 3, padding=1, groups=groups),
                nn.LeakyReLU(0.2),
            ]
            previous = cout
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:8]:
            x = layer(x)
        skip = x  # (N, c, H/4, W/4), fed to every fusion layer
        x = self.layers[9](self.layers[8](x))  # (N, 3c/2, H/4, W/4)
        n, _, h, w = x.shape
        for i, groups in enumerate(self.fusion_groups):
            conv, act = self.layers[10 + 2 * i], self.layers[11 + 2 * i]
            # group g of the conv sees group g of the skip followed by group g of x
            mixed = torch.cat(
                [skip.reshape(n, groups, -1, h, w), x.reshape(n, groups, -1, h, w)], dim=2
            )  # (N, groups, (c + C_x) / groups, h, w)
            x = act(conv(mixed.reshape(n, -1, h, w)))  # (N, C_out, h, w)
        return x


class UpConv(nn.Module):
    """x2 bilinear upsampling (align_corners=True, as official) then a 3x3 convolution."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


class PositionEmbedding(nn.Module):
    """A learned embedding per token position of one frame, shared by all frames.

    ``pos_emb`` has the official layout (1, 1, Gh*Gw, hidden) for the native token grid; for
    another grid it is resized bicubically, as timm does for ViT position embeddings.

    Inputs: x (B, T * N, hidden), grid (Gh, Gw) with N = Gh * Gw. Outputs: same shape.
    """

    def __init__(self, grid: Pair, hidden: int) -> None:
        super().__init__()
        self.grid = grid
        self.pos_emb = nn.Parameter(torch.zeros(1, 1, grid[0] * grid[1], hidden))

    def resized(self, grid: Pair) -> torch.Tensor:
        if tuple(grid) == tuple(self.grid):
            return self.pos_emb
        hidden = self.pos_emb.shape[-1]
        table = self.pos_emb.reshape(1, *self.grid, hidden)  # (1, Gh0, Gw0, hidden)
        table = table.permute(0, 3, 1, 2)  # (1, hidden, Gh0, Gw0)
        table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
        table = table.permute(0, 2, 3, 1)  # (1, Gh, Gw, hidden)
        return table.reshape(1, 1, grid[0] * grid[1], hidden)  # (1, 1, N, hidden)

    def forward(self, x: torch.Tensor, grid: Pair) -> torch.Tensor:
        b, length, hidden = x.shape
        x = x.reshape(b, -1, grid[0] * grid[1], hidden) + self.resized(grid)  # (B, T, N, hidden)
        return x.reshape(b, length, hidden)  # (B, T*N, hidden)


class FuseFormer(nn.Module):
    """FuseFormer video inpainting generator: encoder → soft split → position embedding →
    FuseFormer blocks over all frames' tokens jointly → soft composition (+ encoder features,
    residually) → decoder → tanh.

    Inputs:
        masked_frames: (B, T, 3, H, W) in [-1, 1], holes already set to 0 (see ``mask_frames``);
            H and W divisible by 4. Official weights were trained at 240x432.
    Outputs:
        (B, T, 3, H, W) in [-1, 1]: a prediction for every pixel; use ``composite`` (or
        ``inpaint``) to keep the known pixels.
    """

    def __init__(self, config: FuseFormerConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        feature_channels = c // 2
        self.encoder = Encoder(c)
        self.ss = SoftSplit(
            SoftSplitConfig(
                channels=feature_channels,
                hidden=config.hidden,
                kernel_size=config.kernel_size,
                stride=config.stride,
                padding=config.padding,
                dropout=config.dropout,
            )
        )
        native_grid = self.ss.grid(config.feature_size)
        self.add_pos_emb = PositionEmbedding(native_grid, config.hidden)
        self.transformer = nn.ModuleList(
            FuseFormerBlock(config.block_config()) for _ in range(config.num_blocks)
        )
        self.sc = SoftComposition(
            SoftCompositionConfig(
                channels=feature_channels,
                hidden=config.hidden,
                kernel_size=config.kernel_size,
                stride=config.stride,
                padding=config.padding,
                normalize=False,
                bias_size=config.feature_size,
            )
        )
        self.decoder = nn.Sequential(
            UpConv(feature_channels, c // 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c // 2, c // 4, 3, padding=1),
            nn.LeakyReLU(0.2),
            UpConv(c // 4, c // 4),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c // 4, 3, 3, padding=1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: N(0, 0.02) conv/linear weights, zero biases,
        N(0, 0.02) position embedding, zero soft-composition bias, unit LayerNorms."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, 0.02)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.add_pos_emb.pos_emb, 0.0, 0.02)

    def forward(self, masked_frames: torch.Tensor) -> torch.Tensor:
        if masked_frames.dim() != 5 or masked_frames.shape[2] != 3:
            raise ValueError(
                "fuseformer expected masked frames of shape (B, T, 3, H, W), "
                f"got {tuple(masked_frames.shape)}"
            )
        b, t, _, h, w = masked_frames.shape
        if h % 4 or w % 4:
            raise ValueError(
                "fuseformer expected H and W divisible by 4, "
                f"got shape {tuple(masked_frames.shape)}"
            )
        features = self.encoder(masked_frames.reshape(b * t, 3, h, w))  # (B*T, c/2, H/4, W/4)
        size = tuple(features.shape[-2:])
        grid = self.ss.grid(size)
        tokens = self.ss(features)  # (B*T, N, hidden)
        tokens = tokens.reshape(b, -1, self.config.hidden)  # (B, T*N, hidden)
        tokens = self.add_pos_emb(tokens, grid)
        for block in self.transformer:
            tokens = block(tokens, size)
        tokens = tokens.reshape(b * t, grid[0] * grid[1], self.config.hidden)  # (B*T, N, hidden)
        features = features + self.sc(tokens, size)  # (B*T, c/2, H/4, W/4)
        frames = torch.tanh(self.decoder(features))  # (B*T, 3, H, W)
        return frames.reshape(b, t, 3, h, w)  # (B, T, 3, H, W)

    @torch.no_grad()
    def inpaint(self, frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Fill the holes of ``frames`` (B, T, 3, H, W) in [-1, 1] where ``masks``
        (B, T, 1, H, W) is 1; known pixels are returned unchanged."""
        return composite(self(mask_frames(frames, masks)), frames, masks)


def _check_masks(frames: torch.Tensor, masks: torch.Tensor) -> None:
    if (
        frames.dim() != 5
        or masks.dim() != 5
        or masks.shape[2] != 1
        or (masks.shape[:2] + masks.shape[3:] != frames.shape[:2] + frames.shape[3:])
    ):
        raise ValueError(
            f"expected frames (B, T, 3, H, W) and masks (B, T, 1, H, W), got "
            f"{tuple(frames.shape)} and {tuple(masks.shape)}"
        )


def mask_frames(frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The generator's input: ``frames`` (B, T, 3, H, W) in [-1, 1] with the pixels where
    ``masks`` (B, T, 1, H, W; 1 = hole, 0 = known) is 1 set to 0, as the official test does."""
    _check_masks(frames, masks)
    return frames * (1 - masks)


def composite(generated: torch.Tensor, frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Known pixels from ``frames``, holes (``masks`` == 1) from ``generated``.

    Shapes: generated and frames (B, T, 3, H, W), masks (B, T, 1, H, W).
    """
    _check_masks(frames, masks)
    return generated * masks + frames * (1 - masks)


def checkpoint_filter(state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Official FuseFormer checkpoints → our state dict.

    Handles the released ``fuseformer.pth`` (a plain generator state dict, loaded as-is by the
    official ``test.py``/``evaluate.py``), training snapshots ``gen_XXXXX.pth`` written by
    ``core/trainer.py`` (``{"netG": state_dict}``), and a leading ``module.`` left by
    DataParallel/DDP. The key names are otherwise identical.
    """
    if "netG" in state and isinstance(state["netG"], Mapping):
        state = state["netG"]
    return {key.removeprefix("module."): value for key, value in state.items()}  # type: ignore[misc]


def _tiny_frames(batch: int) -> tuple[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(batch, 2, 3, 32, 32, generator=generator) * 2 - 1,)


@register_block(
    "fuseformer-block",
    paper=FUSEFORMER_PAPER,
    arxiv=FUSEFORMER_ARXIV,
    repo=FUSEFORMER_REPO,
    input_layout="(B, T*N, hidden) soft-split tokens, frame-major (+ output_size of the map)",
    value_range="any (features)",
    tiny_config={
        "hidden": 32,
        "num_heads": 2,
        "ffn_hidden": 18,
        "kernel_size": 3,
        "stride": 2,
        "padding": 1,
        "output_size": (8, 10),
    },
    # an 8x10 map with 3x3 patches, stride 2, padding 1 → 4x5 tokens; two frames
    example_inputs=lambda batch: (
        torch.randn(batch, 2 * 20, 32, generator=torch.Generator().manual_seed(0)),
    ),
    weights_licence=FUSEFORMER_LICENCE,
    description="pre-norm attention + Fusion FFN (soft composition / soft split inside the MLP)",
)
def fuseformer_block(**config) -> FuseFormerBlock:
    return FuseFormerBlock(FuseFormerBlockConfig(**config))


@register_block(
    "fuseformer",
    paper=FUSEFORMER_PAPER,
    arxiv=FUSEFORMER_ARXIV,
    repo=FUSEFORMER_REPO,
    input_layout=(
        "(B, T, 3, H, W) RGB frames with holes set to 0 (see fuseformer.mask_frames), "
        "H, W divisible by 4; native 240x432"
    ),
    value_range="[-1, 1] in and out",
    tiny_config={
        "channels": 32,
        "hidden": 32,
        "num_blocks": 1,
        "num_heads": 2,
        "ffn_hidden": 98,
        "native_size": (32, 32),
    },
    example_inputs=_tiny_frames,
    checkpoint_filter=checkpoint_filter,
    official_checkpoint=(
        "fuseformer.pth (Google Drive link in the official README, "
        "https://drive.google.com/file/d/1BuSE42QAAUoQAJawbr5mMRXcqRRKeELc)"
    ),
    weights_licence=FUSEFORMER_LICENCE,
    needs_weights=True,
    description="FuseFormer video inpainting generator (encoder, 8 FuseFormer blocks, decoder)",
    tasks=("inpaint",),
    input_kind="masked-clip",
)
def fuseformer(**config) -> FuseFormer:
    return FuseFormer(FuseFormerConfig(**config))


__all__ = [
    "FuseFormer",
    "FuseFormerBlock",
    "FuseFormerBlockConfig",
    "FuseFormerConfig",
    "FusionFeedForward",
    "checkpoint_filter",
    "composite",
    "mask_frames",
]

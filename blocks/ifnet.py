"""RIFE's IFNet: coarse-to-fine intermediate flow + fusion mask → the frame between two frames.

Two registered variants, each key-compatible with an official ``flownet.pkl``:

- ``ifnet-eccv``: the IFNet of the paper (Huang et al., ECCV 2022, arXiv 2011.06294;
  hzwer/ECCV2022-RIFE ``model/IFNet.py`` + ``model/refine.py``). Three IFBlocks (widths
  240/150/90) refine a flow/mask pair at scales 4, 2, 1; a context net and a U-Net then add a
  residual to the mask-blended warped frames. A teacher block (``block_tea``), which also sees
  the ground-truth middle frame, is part of the checkpoint and runs only in ``forward_train``.
- ``ifnet-v4``: Practical-RIFE 4.25 (hzwer/Practical-RIFE ``train_log/IFNet_HDv3.py``). Five
  IFBlocks (widths 192/128/96/64/32) of ResConvs with a learnable per-channel ``beta``, a
  PixelShuffle head that also emits an 8-channel feature passed to the next level, a small
  feature encoder (``encode``) whose warped features feed every level, and an arbitrary
  timestep. No refinement net: the output is the mask-blended warped frames.

Flow convention (both variants): ``flow[:, 0:2]`` moves from the middle frame to ``img0`` and
``flow[:, 2:4]`` to ``img1``, in pixels at the input resolution, channel order (x, y); the
middle frame is ``warp(img0, flow[:, :2]) * mask + warp(img1, flow[:, 2:]) * (1 - mask)``
(see ``blocks.warp.backward_warp``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from blocks.registry import register_block, strip_prefix
from blocks.warp import backward_warp

RGB = 3
FLOW_CHANNELS = 4  # two 2-D flows: middle → img0, middle → img1
MASK_CHANNELS = 1  # fusion-mask logit
TIMESTEP_CHANNELS = 1
LEAKY_SLOPE = 0.2
MIDPOINT = 0.5


class Interpolation(NamedTuple):
    """Result of one pass: ``frame`` (B, 3, H, W), ``flow`` (B, 4, H, W), ``mask`` (B, 1, H, W)."""

    frame: torch.Tensor
    flow: torch.Tensor
    mask: torch.Tensor

    def crop(self, height: int, width: int) -> Interpolation:
        return Interpolation(*(t[..., :height, :width] for t in self))


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bilinear resize by ``factor`` (half-pixel centres), as every RIFE resize is done."""
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def _check_pair(img0: torch.Tensor, img1: torch.Tensor) -> None:
    if img0.dim() != 4 or img0.shape[1] != RGB or img1.shape != img0.shape:
        raise ValueError(
            f"expected img0 and img1 of the same shape (B, 3, H, W), "
            f"got {tuple(img0.shape)} and {tuple(img1.shape)}"
        )


def _check_scales(scale_list: Sequence[float], levels: int) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scale_list)
    if len(scales) != levels:
        raise ValueError(f"expected {levels} scales (one per IFBlock), got {scales}")
    for s in scales:
        if s <= 0 or not math.log2(s).is_integer():
            raise ValueError(f"scales must be powers of two, as in the official scripts: {scales}")
    return scales


class _FrameInterpolator(nn.Module):
    """Shared public API; subclasses implement ``_predict`` on padded inputs.

    The official scripts zero-pad bottom/right so every level divides evenly
    (``inference_video.py``: to a multiple of ``max(P, P / scale)``, where the official
    ``scale`` shrinks the default scale list), run ``Model.inference`` and crop. We do the
    same, so results equal the official ones, padding included.
    """

    levels: int
    default_scales: tuple[float, ...]
    pad_multiple: int

    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        """The middle frame; see ``interpolate``."""
        return self.interpolate(img0, img1)

    def interpolate(
        self,
        img0: torch.Tensor,
        img1: torch.Tensor,
        timestep: float | torch.Tensor = MIDPOINT,
        scale_list: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """The frame at ``timestep`` between ``img0`` (t=0) and ``img1`` (t=1).

        Inputs:
            img0, img1: (B, 3, H, W) RGB in [0, 1], any H, W.
            timestep: a float, or a (B,) / (B, 1, 1, 1) tensor for per-sample times.
            scale_list: one downscale factor per IFBlock, coarse → fine (powers of two);
                default is the config's. The official ``scale=s`` argument equals
                ``[x / s for x in default]`` (try s=0.5 for 4K).

        Outputs:
            (B, 3, H, W) in [0, 1].
        """
        return self._run(img0, img1, timestep, scale_list).frame

    def estimate_flow(
        self,
        img0: torch.Tensor,
        img1: torch.Tensor,
        timestep: float | torch.Tensor = MIDPOINT,
        scale_list: Sequence[float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The final intermediate flow and fusion mask that ``interpolate`` blends with.

        Inputs: as ``interpolate``.

        Outputs:
            flow: (B, 4, H, W) in pixels at the input resolution; channels 0-1 are the (x, y)
                displacement from the frame at ``timestep`` to ``img0``, channels 2-3 to
                ``img1``.
            mask: (B, 1, H, W) in [0, 1], the weight of warped ``img0`` in the blend.
        """
        out = self._run(img0, img1, timestep, scale_list)
        return out.flow, out.mask

    def _run(self, img0, img1, timestep, scale_list) -> Interpolation:
        _check_pair(img0, img1)
        scales = self._scales(scale_list)
        height, width = img0.shape[-2:]
        shrink = max(self.default_scales) / max(scales)  # the official ``scale`` argument
        multiple = max(self.pad_multiple, int(self.pad_multiple / shrink))
        pad = (0, -width % multiple, 0, -height % multiple)  # (left, right, top, bottom)
        out = self._predict(F.pad(img0, pad), F.pad(img1, pad), timestep, scales)
        return out.crop(height, width)

    def _scales(self, scale_list: Sequence[float] | None) -> tuple[float, ...]:
        return _check_scales(self.default_scales if scale_list is None else scale_list, self.levels)

    def _predict(self, img0, img1, timestep, scales) -> Interpolation:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# ifnet-eccv
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class IFNetECCVConfig:
    widths: tuple[int, ...] = (240, 150, 90)  # IFBlock channels per level, coarse → fine
    scale_list: tuple[float, ...] = (4.0, 2.0, 1.0)  # input downscale per level
    teacher_width: int = 90  # block_tea, training-only
    block_depth: int = 8  # 3×3 convs in each IFBlock trunk
    context_width: int = 16  # first ContextNet width; the U-Net widths are multiples of it
    pad_multiple: int = 32  # official inference_img.py / inference_video.py at scale 1

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.scale_list):
            raise ValueError(f"one width per scale: {self.widths} vs {self.scale_list}")


class ConvPReLU(nn.Sequential):
    """3×3 conv + per-channel PReLU (a Sequential, so keys read ``0.weight``, ``1.weight``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.PReLU(out_channels))


class DeconvPReLU(nn.Sequential):
    """×2 transposed conv + per-channel PReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1), nn.PReLU(out_channels)
        )


class ConvPair(nn.Module):
    """Two ConvPReLUs, the first with stride 2 (``Conv2`` in the official refine.py)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvPReLU(in_channels, out_channels, stride=2)
        self.conv2 = ConvPReLU(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class IFBlock(nn.Module):
    """One ECCV IFBlock: predicts a flow and mask-logit (update) at ``1/scale`` resolution.

    Inputs:
        x: (B, in_channels - 4, H, W) images (and, after level 0, warped images + mask logit).
        flow: (B, 4, H, W) current flow in pixels, or None at the first level.
        scale: the downscale factor of this level.

    Outputs:
        flow: (B, 4, H, W) in pixels; mask: (B, 1, H, W) logit. H, W must be divisible by
        ``4 * scale``.
    """

    def __init__(self, in_channels: int, width: int, depth: int) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(
            ConvPReLU(in_channels, width // 2, stride=2), ConvPReLU(width // 2, width, stride=2)
        )
        self.convblock = nn.Sequential(*(ConvPReLU(width, width) for _ in range(depth)))
        self.lastconv = nn.ConvTranspose2d(width, FLOW_CHANNELS + MASK_CHANNELS, 4, 2, 1)

    def forward(
        self, x: torch.Tensor, flow: torch.Tensor | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if scale != 1:
            x = _resize(x, 1.0 / scale)
        if flow is not None:
            x = torch.cat((x, _resize(flow, 1.0 / scale) / scale), dim=1)
        x = self.conv0(x)  # (B, width, H/(4s), W/(4s))
        x = self.convblock(x) + x
        out = self.lastconv(x)  # (B, 5, H/(2s), W/(2s))
        upscale = 2 * scale  # lastconv already undid one of conv0's two stride-2 convs
        out = _resize(out, upscale)
        return out[:, :FLOW_CHANNELS] * upscale, out[:, FLOW_CHANNELS:]


class ContextNet(nn.Module):
    """Four stride-2 stages; each stage's features are warped by the (resized) flow.

    Inputs: x (B, 3, H, W); flow (B, 2, H, W) in pixels. H, W divisible by 16.
    Outputs: four tensors (B, c·2^i, H/2^(i+1), W/2^(i+1)), i = 0..3.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = ConvPair(RGB, width)
        self.conv2 = ConvPair(width, 2 * width)
        self.conv3 = ConvPair(2 * width, 4 * width)
        self.conv4 = ConvPair(4 * width, 8 * width)

    def forward(self, x: torch.Tensor, flow: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = stage(x)
            flow = _resize(flow, 0.5) * 0.5  # half the resolution, half the pixels
            features.append(backward_warp(x, flow))
        return features


class RefineUNet(nn.Module):
    """The U-Net that predicts a residual for the blended frame (``Unet`` in refine.py).

    Inputs:
        img0, img1, warped0, warped1: (B, 3, H, W); mask: (B, 1, H, W) logit;
        flow: (B, 4, H, W); ctx0, ctx1: ContextNet features of img0 / img1.

    Outputs:
        (B, 3, H, W) in (0, 1); the residual is ``2 * out - 1``.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        c = width
        in_channels = 4 * RGB + MASK_CHANNELS + FLOW_CHANNELS
        self.down0 = ConvPair(in_channels, 2 * c)
        self.down1 = ConvPair(4 * c, 4 * c)  # s0 + two context maps of width c
        self.down2 = ConvPair(8 * c, 8 * c)
        self.down3 = ConvPair(16 * c, 16 * c)
        self.up0 = DeconvPReLU(32 * c, 8 * c)
        self.up1 = DeconvPReLU(16 * c, 4 * c)  # up0 + skip s2
        self.up2 = DeconvPReLU(8 * c, 2 * c)
        self.up3 = DeconvPReLU(4 * c, c)
        self.conv = nn.Conv2d(c, RGB, 3, 1, 1)

    def forward(self, img0, img1, warped0, warped1, mask, flow, ctx0, ctx1) -> torch.Tensor:
        x = torch.cat((img0, img1, warped0, warped1, mask, flow), 1)  # (B, 17, H, W)
        s0 = self.down0(x)  # (B, 2c, H/2, W/2)
        s1 = self.down1(torch.cat((s0, ctx0[0], ctx1[0]), 1))  # (B, 4c, H/4, W/4)
        s2 = self.down2(torch.cat((s1, ctx0[1], ctx1[1]), 1))  # (B, 8c, H/8, W/8)
        s3 = self.down3(torch.cat((s2, ctx0[2], ctx1[2]), 1))  # (B, 16c, H/16, W/16)
        x = self.up0(torch.cat((s3, ctx0[3], ctx1[3]), 1))  # (B, 8c, H/8, W/8)
        x = self.up1(torch.cat((x, s2), 1))  # (B, 4c, H/4, W/4)
        x = self.up2(torch.cat((x, s1), 1))  # (B, 2c, H/2, W/2)
        x = self.up3(torch.cat((x, s0), 1))  # (B, c, H, W)
        return torch.sigmoid(self.conv(x))


@dataclass
class IFNetTrainOutputs:
    """Everything the official training step needs (the distillation loss is the caller's).

    Per student level: ``flows`` (B, 4, H, W), ``masks`` (B, 1, H, W) after sigmoid and
    ``merged`` (B, 3, H, W) blends; ``merged[-1]`` is the refined frame. ``teacher_flow`` and
    ``teacher_merged`` come from ``block_tea``, which also sees the ground truth.
    """

    flows: list[torch.Tensor]
    masks: list[torch.Tensor]
    merged: list[torch.Tensor]
    teacher_flow: torch.Tensor
    teacher_merged: torch.Tensor


class IFNetECCV(_FrameInterpolator):
    """RIFE IFNet (ECCV 2022): midpoint interpolation with a context U-Net refinement.

    Inputs: img0, img1 (B, 3, H, W) in [0, 1]. Outputs: the middle frame (B, 3, H, W) in
    [0, 1]. This network was trained for t = 0.5 only (the official code ignores other
    timesteps; ``interpolate`` rejects them).
    """

    def __init__(self, config: IFNetECCVConfig) -> None:
        super().__init__()
        self.config = config
        self.levels = len(config.widths)
        self.default_scales = config.scale_list
        self.pad_multiple = config.pad_multiple
        first_in = 2 * RGB
        # img0, img1, warped0, warped1, mask logit (+ the current flow, added by the block)
        refine_in = 4 * RGB + MASK_CHANNELS + FLOW_CHANNELS
        for level, width in enumerate(config.widths):
            in_channels = first_in if level == 0 else refine_in
            self.add_module(f"block{level}", IFBlock(in_channels, width, config.block_depth))
        self.block_tea = IFBlock(refine_in + RGB, config.teacher_width, config.block_depth)
        self.contextnet = ContextNet(config.context_width)
        self.unet = RefineUNet(config.context_width)

    @property
    def students(self) -> list[IFBlock]:
        return [getattr(self, f"block{level}") for level in range(self.levels)]

    def _student_flows(self, img0, img1, scales):
        """Run the student IFBlocks; yields (flow, mask_logit, warped0, warped1) per level."""
        flow = mask = None
        warped0, warped1 = img0, img1
        for block, scale in zip(self.students, scales):
            if flow is None:
                flow, mask = block(torch.cat((img0, img1), 1), None, scale)
            else:
                x = torch.cat((img0, img1, warped0, warped1, mask), 1)  # (B, 13, H, W)
                d_flow, d_mask = block(x, flow, scale)
                flow, mask = flow + d_flow, mask + d_mask
            warped0 = backward_warp(img0, flow[:, :2])
            warped1 = backward_warp(img1, flow[:, 2:])
            yield flow, mask, warped0, warped1

    def _refine(self, img0, img1, flow, mask_logit, warped0, warped1) -> torch.Tensor:
        alpha = torch.sigmoid(mask_logit)
        blended = warped0 * alpha + warped1 * (1 - alpha)
        ctx0 = self.contextnet(img0, flow[:, :2])
        ctx1 = self.contextnet(img1, flow[:, 2:])
        residual = self.unet(img0, img1, warped0, warped1, mask_logit, flow, ctx0, ctx1) * 2 - 1
        return torch.clamp(blended + residual, 0, 1)

    def _predict(self, img0, img1, timestep, scales) -> Interpolation:
        if not bool(torch.all(torch.as_tensor(timestep) == MIDPOINT)):
            raise ValueError(
                "ifnet-eccv interpolates the midpoint only (timestep=0.5); use ifnet-v4 for "
                "arbitrary timesteps"
            )
        *_, (flow, mask, warped0, warped1) = self._student_flows(img0, img1, scales)
        frame = self._refine(img0, img1, flow, mask, warped0, warped1)
        return Interpolation(frame, flow, torch.sigmoid(mask))

    def forward_train(
        self,
        img0: torch.Tensor,
        img1: torch.Tensor,
        gt: torch.Tensor,
        scale_list: Sequence[float] | None = None,
    ) -> IFNetTrainOutputs:
        """Training pass: students, then the teacher block that also sees ``gt``.

        Inputs: img0, img1, gt (B, 3, H, W) in [0, 1], H and W divisible by the padding
        multiple (training crops are). Outputs: ``IFNetTrainOutputs``.
        """
        _check_pair(img0, img1)
        _check_pair(img0, gt)
        scales = self._scales(scale_list)
        flows, masks, merged = [], [], []
        for flow, mask, warped0, warped1 in self._student_flows(img0, img1, scales):
            alpha = torch.sigmoid(mask)
            flows.append(flow)
            masks.append(alpha)
            merged.append(warped0 * alpha + warped1 * (1 - alpha))
        x = torch.cat((img0, img1, warped0, warped1, mask, gt), 1)  # (B, 16, H, W)
        d_flow, d_mask = self.block_tea(x, flow, 1)
        teacher_flow = flow + d_flow
        teacher_alpha = torch.sigmoid(mask + d_mask)
        teacher_merged = backward_warp(img0, teacher_flow[:, :2]) * teacher_alpha + backward_warp(
            img1, teacher_flow[:, 2:]
        ) * (1 - teacher_alpha)
        merged[-1] = self._refine(img0, img1, flow, mask, warped0, warped1)
        return IFNetTrainOutputs(flows, masks, merged, teacher_flow, teacher_merged)


# --------------------------------------------------------------------------------------------
# ifnet-v4 (Practical-RIFE 4.25)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class IFNetV4Config:
    widths: tuple[int, ...] = (192, 128, 96, 64, 32)  # IFBlock channels per level, coarse → fine
    scale_list: tuple[float, ...] = (16.0, 8.0, 4.0, 2.0, 1.0)  # input downscale per level
    block_depth: int = 8  # ResConvs in each IFBlock trunk
    encoder_channels: int = 16  # per-frame features from the ``encode`` head
    feature_channels: int = 8  # features each level hands to the next
    pad_multiple: int = 128  # official inference_video.py at scale 1

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.scale_list):
            raise ValueError(f"one width per scale: {self.widths} vs {self.scale_list}")


class ConvLeaky(nn.Sequential):
    """3×3 conv + LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.LeakyReLU(LEAKY_SLOPE)
        )


class ResConv(nn.Module):
    """``leaky(conv(x) * beta + x)`` with a learnable per-channel ``beta`` (initialised to 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.relu = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x) * self.beta + x)


class FeatureEncoder(nn.Module):
    """Per-frame features at full resolution (``Head`` in the official code).

    Inputs: (B, 3, H, W), H and W even. Outputs: (B, channels, H, W).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cnn0 = nn.Conv2d(RGB, channels, 3, 2, 1)
        self.cnn1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.cnn2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(channels, channels, 4, 2, 1)
        self.relu = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.cnn0(x))  # (B, C, H/2, W/2)
        x = self.relu(self.cnn1(x))
        x = self.relu(self.cnn2(x))
        return self.cnn3(x)  # (B, C, H, W)


class IFBlockV4(nn.Module):
    """One 4.x IFBlock: flow update, mask logit and features for the next level.

    Inputs:
        x: (B, in_channels - 4, H, W); flow: (B, 4, H, W) in pixels or None at level 0;
        scale: the downscale factor of this level (H, W divisible by ``4 * scale``).

    Outputs:
        flow (B, 4, H, W) in pixels, mask (B, 1, H, W) logit, features (B, F, H, W).
    """

    SHUFFLE = 2  # the PixelShuffle factor of the head

    def __init__(self, in_channels: int, width: int, depth: int, feature_channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(
            ConvLeaky(in_channels, width // 2, stride=2), ConvLeaky(width // 2, width, stride=2)
        )
        self.convblock = nn.Sequential(*(ResConv(width) for _ in range(depth)))
        out_channels = FLOW_CHANNELS + MASK_CHANNELS + feature_channels
        self.lastconv = nn.Sequential(
            nn.ConvTranspose2d(width, out_channels * self.SHUFFLE**2, 4, 2, 1),
            nn.PixelShuffle(self.SHUFFLE),
        )

    def forward(
        self, x: torch.Tensor, flow: torch.Tensor | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = _resize(x, 1.0 / scale)
        if flow is not None:
            x = torch.cat((x, _resize(flow, 1.0 / scale) / scale), dim=1)
        x = self.convblock(self.conv0(x))  # (B, width, H/(4s), W/(4s))
        out = _resize(self.lastconv(x), scale)  # (B, 4 + 1 + F, H, W)
        flow_end = FLOW_CHANNELS + MASK_CHANNELS
        return out[:, :FLOW_CHANNELS] * scale, out[:, FLOW_CHANNELS:flow_end], out[:, flow_end:]


class IFNetV4(_FrameInterpolator):
    """Practical-RIFE 4.25 IFNet: arbitrary-timestep interpolation without refinement.

    Inputs: img0, img1 (B, 3, H, W) in [0, 1]. Outputs: the frame at ``timestep`` (B, 3, H, W)
    in [0, 1] (a convex blend of the two warped inputs).
    """

    def __init__(self, config: IFNetV4Config) -> None:
        super().__init__()
        self.config = config
        self.levels = len(config.widths)
        self.default_scales = config.scale_list
        self.pad_multiple = config.pad_multiple
        enc, feat = config.encoder_channels, config.feature_channels
        first_in = 2 * RGB + 2 * enc + TIMESTEP_CHANNELS
        # warped images + warped features + timestep + mask logit + features (+ flow, by the block)
        refine_in = first_in + MASK_CHANNELS + feat + FLOW_CHANNELS
        for level, width in enumerate(config.widths):
            in_channels = first_in if level == 0 else refine_in
            block = IFBlockV4(in_channels, width, config.block_depth, feat)
            self.add_module(f"block{level}", block)
        self.encode = FeatureEncoder(enc)

    @property
    def blocks(self) -> list[IFBlockV4]:
        return [getattr(self, f"block{level}") for level in range(self.levels)]

    def _predict(self, img0, img1, timestep, scales) -> Interpolation:
        batch, _, height, width = img0.shape
        if torch.is_tensor(timestep):
            t = timestep.to(img0).reshape(-1, 1, 1, 1)  # (B or 1, 1, 1, 1)
            t = t.expand(batch, 1, height, width)  # (B, 1, H, W)
        else:
            t = img0.new_full((batch, 1, height, width), float(timestep))  # (B, 1, H, W)
        feat0, feat1 = self.encode(img0), self.encode(img1)
        flow = mask = features = None
        warped0, warped1 = img0, img1
        for block, scale in zip(self.blocks, scales):
            if flow is None:
                x = torch.cat((img0, img1, feat0, feat1, t), 1)  # (B, 6 + 2E + 1, H, W)
                flow, mask, features = block(x, None, scale)
            else:
                warped_feat0 = backward_warp(feat0, flow[:, :2])
                warped_feat1 = backward_warp(feat1, flow[:, 2:])
                x = torch.cat((warped0, warped1, warped_feat0, warped_feat1, t, mask, features), 1)
                d_flow, mask, features = block(x, flow, scale)  # the mask is replaced, not summed
                flow = flow + d_flow
            warped0 = backward_warp(img0, flow[:, :2])
            warped1 = backward_warp(img1, flow[:, 2:])
        alpha = torch.sigmoid(mask)
        return Interpolation(warped0 * alpha + warped1 * (1 - alpha), flow, alpha)


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------

_TRAINING_ONLY_V4_PREFIXES = ("teacher.", "caltime.")


def _v4_checkpoint_filter(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DDP's ``module.`` and drop the 4.x training-only heads the checkpoint may carry."""
    state = strip_prefix("module.")(state)
    return {k: v for k, v in state.items() if not k.startswith(_TRAINING_ONLY_V4_PREFIXES)}


def _example_pair(
    batch: int, height: int = 32, width: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two smooth frames in [0, 1], the second a shifted copy of the first."""
    ys = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width)
    phase = torch.arange(batch * RGB, dtype=torch.float32).view(batch, RGB, 1, 1)

    def frame(shift: float) -> torch.Tensor:
        return 0.5 + 0.4 * torch.sin(0.3 * (xs - shift) + 0.2 * ys + phase)  # (B, 3, H, W)

    return frame(0.0), frame(2.0)


_RIFE_PAPER = (
    "Huang et al., Real-Time Intermediate Flow Estimation for Video Frame Interpolation, ECCV 2022"
)


@register_block(
    "ifnet-eccv",
    paper=_RIFE_PAPER,
    arxiv="2011.06294",
    repo="https://github.com/hzwer/ECCV2022-RIFE",
    input_layout="img0, img1: (B, 3, H, W) RGB, any H, W (padded internally to a multiple of 32)",
    value_range="[0, 1]",
    tiny_config={"widths": (16, 12, 8), "teacher_width": 8, "block_depth": 2, "context_width": 4},
    example_inputs=_example_pair,
    checkpoint_filter=strip_prefix("module."),
    official_checkpoint=(
        "flownet.pkl from the 'RIFE model' reported by the paper (README of hzwer/ECCV2022-RIFE, "
        "Evaluation section); not the 'HD' models, which are a different architecture"
    ),
    weights_licence="MIT",
    needs_weights=True,
    description="IFNet: coarse-to-fine intermediate flow + fusion mask + U-Net refinement",
    tasks=("motion",),
    input_kind="frame-pair",
)
def ifnet_eccv(**config) -> IFNetECCV:
    return IFNetECCV(IFNetECCVConfig(**config))


@register_block(
    "ifnet-v4",
    paper=_RIFE_PAPER + " (Practical-RIFE 4.25 model)",
    arxiv="2011.06294",
    repo="https://github.com/hzwer/Practical-RIFE",
    input_layout="img0, img1: (B, 3, H, W) RGB, any H, W (padded internally to a multiple of 128)",
    value_range="[0, 1]",
    tiny_config={"widths": (8, 8, 8, 8, 8), "block_depth": 1, "encoder_channels": 4},
    example_inputs=_example_pair,
    checkpoint_filter=_v4_checkpoint_filter,
    official_checkpoint=(
        "train_log/flownet.pkl of model v4.25 (model list in the README of hzwer/Practical-RIFE)"
    ),
    weights_licence="MIT",
    needs_weights=True,
    description="Practical-RIFE 4.25 IFNet: 5-level flow with feature encoder, any timestep",
    tasks=("motion",),
    input_kind="frame-pair",
)
def ifnet_v4(**config) -> IFNetV4:
    return IFNetV4(IFNetV4Config(**config))

"""Backward warping by a dense optical flow, with RIFE's grid normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at each pixel displaced by ``flow`` (bilinear, border-clamped).

    ``out[..., y, x] = image[..., y + flow_y, x + flow_x]``, so a flow pointing right (+x)
    pulls content from the right. The sampling grid uses ``align_corners=True`` with pixel
    centres at ``linspace(-1, 1, size)``, i.e. a flow of ``(size - 1) / 2`` pixels spans
    half the image: this is the normalisation RIFE was trained with, and the one its
    checkpoints need.

    Inputs:
        image: (B, C, H, W) float.
        flow: (B, 2, H, W) displacement in pixels; channel 0 is x (width), channel 1 is y.

    Outputs:
        (B, C, H, W) warped image.
    """
    if image.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(
            f"expected image (B, C, H, W) and flow (B, 2, H, W), "
            f"got {tuple(image.shape)} and {tuple(flow.shape)}"
        )
    batch, _, height, width = flow.shape
    xs = torch.linspace(-1.0, 1.0, width, device=flow.device, dtype=flow.dtype)
    ys = torch.linspace(-1.0, 1.0, height, device=flow.device, dtype=flow.dtype)
    base = torch.cat(
        (
            xs.view(1, 1, 1, width).expand(batch, 1, height, width),  # (B, 1, H, W)
            ys.view(1, 1, height, 1).expand(batch, 1, height, width),  # (B, 1, H, W)
        ),
        dim=1,
    )
    # Pixels → normalised units, measured on the sampled image (as the official code does).
    offset = torch.cat(
        (
            flow[:, 0:1] / ((image.shape[3] - 1.0) / 2.0),
            flow[:, 1:2] / ((image.shape[2] - 1.0) / 2.0),
        ),
        dim=1,
    )
    grid = (base + offset).permute(0, 2, 3, 1)  # (B, H, W, 2) as grid_sample expects
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)

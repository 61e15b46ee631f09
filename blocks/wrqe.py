"""Weighted Recurrent Quality Enhancement (WRQE) for decoded video frames.

Yang, Mentzer, Van Gool, Timofte, "Learning for Video Compression with Hierarchical Quality and
Recurrent Enhancement" (HLVC), CVPR 2020, arXiv 2003.01966; official TensorFlow 1.12 code:
github.com/RenYang-home/HLVC (``WRQE.py``, ``enh_networks.py``, ``cell.py``). This is an
independent PyTorch re-implementation.

How it works:

1. Side information ``(B, T, 10)`` per frame (min-max normalised quality and bits of the 5
   frames around it, see :func:`derive_side_info`) goes through an LSTM run forwards and
   backwards (one set of weights for both directions: the official code passes the same cell
   object twice, which TF ≥ 1.x Layer-based cells share) and a per-frame linear layer → logit
   ``x_t``; the update weight is ``u_t = sigmoid(x_t / a)`` with a learnable temperature ``a``
   (init 5.0) and the forget weight ``f_t = 1 - u_t``.
2. Every frame goes through a CNN encoder.
3. A bidirectional ConvLSTM-style cell without learned input/forget gates (again one set of
   weights for both directions): ``[j, o] = conv([x_t ‖ h_{t-1}])``,
   ``c_t = f_t * c_{t-1} + u_t * act(j)``, ``h_t = sigmoid(o) * act(c_t)``, zero initial state.
   With ``u_t = 1`` the memory is replaced by the current frame's candidate; with ``u_t = 0``
   it is carried over unchanged.
4. A CNN decoder maps ``[h_fw ‖ h_bw]`` to a residual: ``enhanced = decoded + residual``
   (not clipped; clip to [0, 1] when writing images, as the official demo does).

Variants (``config.variant``), as in the official ``net_bi_wcell`` / ``net_bi_wcell_ssim``:

* ``"psnr"``: encoder = conv, 3 residual blocks (``x + conv(relu(conv(relu(x))))``), a long skip
  and a conv; decoder mirrors it and adds the encoder's three block outputs in reverse order
  (U-Net-like skips); cell activation ReLU; ``u`` forced to 1 at the first and last frame (the
  high-quality key frames that bound an official 11-frame window).
* ``"msssim"``: plain 5-layer CNNs (ReLU after every encoder conv and every decoder conv but the
  last), no skips, cell activation tanh, no forced edge weights.

The official demo enhances GOP windows of 11 frames (key frame to key frame, overlapping by one);
pretrained weights expect ``T = 11`` with key frames at both ends.

State-dict naming and the TF checkpoint mapping, implemented by :func:`convert_tf_checkpoint`
(the registered ``checkpoint_filter``). TF conv kernels are HWIO and go to PyTorch's OIHW; dense
kernels are ``[in, out]`` and are transposed. The official graph has no ``bw`` variables.

* ``LSTM_1D/bidirectional_rnn/fw/basic_lstm_cell/kernel`` ``[10 + H, 4H]`` →
  ``side_lstm.weight_ih_l0`` (rows ``[:10]``) and ``side_lstm.weight_hh_l0`` (rows ``[10:]``),
  transposed, gate blocks reordered from TF's i, j, f, o to PyTorch's i, f, g (= j), o.
* ``.../basic_lstm_cell/bias`` ``[4H]`` → ``side_lstm.bias_ih_l0`` (reordered, plus TF's
  run-time ``forget_bias`` 1.0 on the f block); ``side_lstm.bias_hh_l0`` = 0.
* ``LSTM_1D/dense/{kernel,bias}`` → ``side_dense.{weight,bias}``.
* ``W/a`` → ``temperature``.
* ``ConvLSTM_2D/bidirectional_rnn/fw/conv_lstm_cell/{kernel,bias}`` → ``cell.conv.*``.
* psnr: ``ConvLSTM_2D/res1_0`` → ``encoder.head``; ``res1_{i}l1`` / ``res1_{i}l2`` →
  ``encoder.blocks.{i-1}.conv1`` / ``.conv2``; ``res1_4`` → ``encoder.tail``; ``res2_*``
  likewise → ``decoder.*``.
* msssim: ``ConvLSTM_2D/conv1_{i}`` → ``encoder.layers.{i}`` (i < 4), ``conv1_4`` →
  ``encoder.tail``; ``conv2_*`` likewise → ``decoder.*``.

Optimizer slots (``*/Adam``, ``*/Adam_1``, ``beta*_power``) and ``global_step`` are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from blocks.registry import register_block

SIDE_INFO_DIM = 10
WINDOW = 5  # frames in the side-information window: t-2 .. t+2


# --------------------------------------------------------------------------- side information


def derive_side_info(
    frame_bytes: Sequence[float],
    qualities: Sequence[float],
    *,
    higher_is_better: bool = True,
) -> np.ndarray:
    """Per-frame WRQE side information from encoded frame sizes and quality estimates.

    For frame ``t`` the window is frames ``t-2 .. t+2``; indices outside the sequence are
    replaced by the nearest edge frame (replication: frame 0 is used three times in the window of
    frame 0). Within each window the 5 qualities and, separately, the 5 sizes are min-max
    normalised to [0, 1]: ``(v - min) / (max - min)``. The official code does exactly this per
    11-frame GOP window (padding at the window's ends); call this function once per such window
    to reproduce it. A constant window (``max == min``; the official code divides by zero there)
    gives 0.5 for all five values.

    Sizes may be in bytes, bits or bits per pixel: the normalisation removes the scale.

    Args:
        frame_bytes: encoded size of every frame (e.g. packet sizes from the demuxer), length T.
        qualities: a per-frame quality estimate, length T (PSNR / MS-SSIM as in the official code,
            or a decoder-side proxy).
        higher_is_better: False for proxies where lower means better (e.g. QP): they are negated
            so that 1 still marks the best frame of the window.

    Returns:
        ``(T, 10)`` float32: columns 0-4 the qualities of frames t-2..t+2, columns 5-9 their sizes.
    """
    sizes = np.asarray(frame_bytes, dtype=np.float64)
    quality = np.asarray(qualities, dtype=np.float64)
    if sizes.ndim != 1 or quality.ndim != 1 or sizes.shape != quality.shape or sizes.size == 0:
        raise ValueError(
            f"expected two 1-D sequences of the same non-zero length T, got shapes "
            f"{sizes.shape} and {quality.shape}"
        )
    if not (np.isfinite(sizes).all() and np.isfinite(quality).all()):
        raise ValueError("frame sizes and qualities must be finite")
    if not higher_is_better:
        quality = -quality
    t = sizes.size
    half = WINDOW // 2
    index = np.clip(np.arange(t)[:, None] + np.arange(-half, half + 1)[None, :], 0, t - 1)  # (T, 5)
    return np.concatenate(
        [_minmax_rows(quality[index]), _minmax_rows(sizes[index])], axis=1
    ).astype(np.float32)


def _minmax_rows(windows: np.ndarray) -> np.ndarray:
    """Min-max normalise each row of ``(T, 5)``; constant rows become 0.5."""
    low = windows.min(axis=1, keepdims=True)
    span = windows.max(axis=1, keepdims=True) - low
    flat = span == 0
    return np.where(flat, 0.5, (windows - low) / np.where(flat, 1.0, span))


# --------------------------------------------------------------------------- modules


@dataclass(frozen=True, kw_only=True)
class WRQEConfig:
    """WRQE configuration; defaults are the official ones.

    Attributes:
        variant: ``"psnr"`` (residual blocks + skips, ReLU cell) or ``"msssim"`` (plain CNNs,
            tanh cell).
        channels: feature width of the CNNs and the ConvLSTM (official ``filter_num`` 24).
        kernel_size: every conv's kernel (official 5; odd, "same" padding).
        side_dim: side-information values per frame.
        side_hidden: LSTM units of the side-information branch (official 256).
        num_res_blocks: residual blocks per CNN in the psnr variant (official 3).
        cnn_layers: conv layers per CNN in the msssim variant (official 5).
        force_edge_update: force ``u = 1`` at the first and last frame; None means the official
            per-variant choice (psnr True, msssim False).
        temperature_init: initial value of the learnable temperature ``a``.
    """

    variant: str = "psnr"
    channels: int = 24
    kernel_size: int = 5
    side_dim: int = SIDE_INFO_DIM
    side_hidden: int = 256
    num_res_blocks: int = 3
    cnn_layers: int = 5
    force_edge_update: bool | None = None
    temperature_init: float = 5.0

    def __post_init__(self) -> None:
        if self.variant not in ("psnr", "msssim"):
            raise ValueError(f"variant must be 'psnr' or 'msssim', got {self.variant!r}")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {self.kernel_size}")
        if self.num_res_blocks < 1 or self.cnn_layers < 2:
            raise ValueError("num_res_blocks must be >= 1 and cnn_layers >= 2")

    @property
    def forces_edges(self) -> bool:
        return self.variant == "psnr" if self.force_edge_update is None else self.force_edge_update


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class ResBlock(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` (official ``resblock`` with IC == OC)."""

    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, k)
        self.conv2 = _conv(channels, channels, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ResEncoder(nn.Module):
    """psnr-variant encoder: head conv, residual blocks, long skip, tail conv.

    Returns the tail output and the skips ``[x_1, ..., x_{n-1}, x_n + x_0]`` for the decoder.
    """

    def __init__(self, cin: int, channels: int, k: int, num_blocks: int) -> None:
        super().__init__()
        self.head = _conv(cin, channels, k)
        self.blocks = nn.ModuleList(ResBlock(channels, k) for _ in range(num_blocks))
        self.tail = _conv(channels, channels, k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x0 = self.head(x)
        skips, cur = [], x0
        for block in self.blocks:
            cur = block(cur)
            skips.append(cur)
        skips[-1] = skips[-1] + x0
        return self.tail(skips[-1]), skips


class ResDecoder(nn.Module):
    """psnr-variant decoder: the encoder's skips enter its residual blocks in reverse order."""

    def __init__(self, cin: int, channels: int, cout: int, k: int, num_blocks: int) -> None:
        super().__init__()
        self.head = _conv(cin, channels, k)
        self.blocks = nn.ModuleList(ResBlock(channels, k) for _ in range(num_blocks))
        self.tail = _conv(channels, cout, k)

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        y0 = self.head(x)
        cur = y0
        for block, skip in zip(self.blocks, reversed(skips), strict=True):
            cur = block(cur + skip)
        return self.tail(cur + y0)


class PlainCNN(nn.Module):
    """msssim-variant CNN: ReLU after each of ``layers``; after ``tail`` only if ``relu_last``."""

    def __init__(
        self, cin: int, channels: int, cout: int, k: int, num_layers: int, relu_last: bool
    ) -> None:
        super().__init__()
        widths = [cin] + [channels] * (num_layers - 1)
        self.layers = nn.ModuleList(
            _conv(a, b, k) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.tail = _conv(channels, cout, k)
        self.relu_last = relu_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.layers:
            x = F.relu(conv(x))
        x = self.tail(x)
        return F.relu(x) if self.relu_last else x


class WeightedConvLSTMCell(nn.Module):
    """ConvLSTM step whose input/forget gates are given (``u``, ``f``) instead of learned.

    Inputs:
        x: ``(B, C, H, W)``; state ``(h, c)`` each ``(B, C, H, W)``; ``f``, ``u``: ``(B,)``.
    Outputs:
        ``(h, c)`` with ``c = f*c_prev + u*act(j)``, ``h = sigmoid(o)*act(c)``,
        ``[j, o] = conv([x ‖ h_prev])``.
    """

    def __init__(self, channels: int, k: int, activation: str) -> None:
        super().__init__()
        self.conv = _conv(2 * channels, 2 * channels, k)
        self.act = torch.relu if activation == "relu" else torch.tanh

    def forward(
        self,
        x: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
        f: torch.Tensor,
        u: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        j, o = self.conv(torch.cat([x, h], dim=1)).chunk(2, dim=1)  # each (B, C, H, W)
        f = f.reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
        u = u.reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
        c = f * c + u * self.act(j)
        return torch.sigmoid(o) * self.act(c), c


class WRQE(nn.Module):
    """Weighted Recurrent Quality Enhancement network.

    Inputs:
        frames: ``(B, T, 3, H, W)`` decoded frames in [0, 1].
        side_info: ``(B, T, side_dim)`` (see :func:`derive_side_info`).
    Outputs:
        enhanced frames ``(B, T, 3, H, W)`` = ``frames`` + predicted residual (unclipped).
    """

    def __init__(self, config: WRQEConfig) -> None:
        super().__init__()
        self.config = config
        c, k = config.channels, config.kernel_size
        self.side_lstm = nn.LSTM(config.side_dim, config.side_hidden, batch_first=True)
        self.side_dense = nn.Linear(2 * config.side_hidden, 1)
        self.temperature = nn.Parameter(torch.tensor(float(config.temperature_init)))
        if config.variant == "psnr":
            self.encoder: nn.Module = ResEncoder(3, c, k, config.num_res_blocks)
            self.decoder: nn.Module = ResDecoder(2 * c, c, 3, k, config.num_res_blocks)
            self.cell = WeightedConvLSTMCell(c, k, "relu")
        else:
            self.encoder = PlainCNN(3, c, c, k, config.cnn_layers, relu_last=True)
            self.decoder = PlainCNN(2 * c, c, 3, k, config.cnn_layers, relu_last=False)
            self.cell = WeightedConvLSTMCell(c, k, "tanh")
        self._init_like_official()

    def _init_like_official(self) -> None:
        # TF defaults of the official graph: glorot-uniform kernels, zero biases, N(0, 1) dense
        # kernel, LSTM forget bias 1.0 (TF adds it at run time; here it lives in bias_ih).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.side_dense.weight, std=1.0)
        nn.init.zeros_(self.side_dense.bias)
        hidden = self.config.side_hidden
        with torch.no_grad():
            for name, p in self.side_lstm.named_parameters():
                if name.startswith("weight"):
                    nn.init.xavier_uniform_(p)
                else:
                    p.zero_()
            self.side_lstm.bias_ih_l0[hidden : 2 * hidden] = 1.0

    def update_weights(self, side_info: torch.Tensor) -> torch.Tensor:
        """Update weights ``u`` ``(B, T)`` in [0, 1] (``f = 1 - u``) from ``(B, T, side_dim)``."""
        fw, _ = self.side_lstm(side_info)  # (B, T, H)
        bw, _ = self.side_lstm(side_info.flip(1))  # (B, T, H), reversed time
        both = torch.cat([fw, bw.flip(1)], dim=-1)  # (B, T, 2H)
        logits = self.side_dense(both).squeeze(-1)  # (B, T)
        u = torch.sigmoid(logits / self.temperature)
        if self.config.forces_edges:
            ones = torch.ones_like(u[:, :1])  # (B, 1)
            u = ones.expand_as(u) if u.shape[1] <= 2 else torch.cat([ones, u[:, 1:-1], ones], dim=1)
        return u

    def _recur(
        self, feats: torch.Tensor, f: torch.Tensor, u: torch.Tensor, reverse: bool
    ) -> torch.Tensor:
        """Run the cell over ``feats`` ``(B, T, C, H, W)`` in one direction; ``(B, T, C, H, W)``."""
        steps = range(feats.shape[1] - 1, -1, -1) if reverse else range(feats.shape[1])
        h = feats.new_zeros(feats[:, 0].shape)  # (B, C, H, W)
        c = torch.zeros_like(h)
        out: list[torch.Tensor] = [h] * feats.shape[1]
        for t in steps:
            h, c = self.cell(feats[:, t], (h, c), f[:, t], u[:, t])
            out[t] = h
        return torch.stack(out, dim=1)

    def forward(self, frames: torch.Tensor, side_info: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(
                f"WRQE expected frames of shape (B, T, 3, H, W), got {tuple(frames.shape)}"
            )
        b, t, _, height, width = frames.shape
        if tuple(side_info.shape) != (b, t, self.config.side_dim):
            raise ValueError(
                f"WRQE expected side_info of shape ({b}, {t}, {self.config.side_dim}), "
                f"got {tuple(side_info.shape)}"
            )
        u = self.update_weights(side_info.to(frames.dtype))  # (B, T)
        f = 1.0 - u
        flat = frames.reshape(b * t, 3, height, width)  # (B*T, 3, H, W)
        if self.config.variant == "psnr":
            feats, skips = self.encoder(flat)  # (B*T, C, H, W), skips each (B*T, C, H, W)
        else:
            feats, skips = self.encoder(flat), None
        feats = feats.reshape(b, t, *feats.shape[1:])  # (B, T, C, H, W)
        hidden = torch.cat(
            [self._recur(feats, f, u, False), self._recur(feats, f, u, True)], dim=2
        )  # (B, T, 2C, H, W)
        hidden = hidden.reshape(b * t, -1, height, width)  # (B*T, 2C, H, W)
        residual = self.decoder(hidden, skips) if skips is not None else self.decoder(hidden)
        return frames + residual.reshape(b, t, 3, height, width)  # (B, T, 3, H, W)


# --------------------------------------------------------------------------- TF checkpoint


_DROP = re.compile(r"(/Adam(_\d+)?$|^beta\d_power$|^global_step$)")


def _conv_target(tf_name: str) -> str | None:
    """PyTorch module path of a TF conv scope under ``ConvLSTM_2D/`` (None if not a CNN conv)."""
    m = re.fullmatch(r"res([12])_(\d+)(l[12])?", tf_name)
    if m:
        part = "encoder" if m.group(1) == "1" else "decoder"
        idx, sub = int(m.group(2)), m.group(3)
        if sub:
            return f"{part}.blocks.{idx - 1}.conv{sub[1]}"
        return f"{part}.head" if idx == 0 else f"{part}.tail"
    m = re.fullmatch(r"conv([12])_(\d+)", tf_name)
    if m:
        return f"{'encoder' if m.group(1) == '1' else 'decoder'}.layers.{int(m.group(2))}"
    return None


def convert_tf_checkpoint(
    tf_state: Mapping[str, object], forget_bias: float = 1.0
) -> dict[str, torch.Tensor]:
    """Map official TF variable names/layouts to this module's state dict (see module docstring).

    A state dict already in PyTorch naming (no ``/`` in its keys) is returned unchanged, so this
    works as the registry's ``checkpoint_filter`` for both kinds of file. The last ``conv1_*`` /
    ``conv2_*`` of the msssim variant becomes ``encoder.tail`` / ``decoder.tail``.
    """
    if not any("/" in k for k in tf_state):
        return {k: torch.as_tensor(v) for k, v in tf_state.items()}
    state: dict[str, torch.Tensor] = {}
    tensors = {
        k: torch.as_tensor(np.asarray(v), dtype=torch.float32)
        for k, v in tf_state.items()
        if not _DROP.search(k)
    }
    plain_layers: dict[str, int] = {}
    for name, value in tensors.items():
        if name.startswith("LSTM_1D/bidirectional_rnn/fw/basic_lstm_cell/"):
            i, j, f, o = value.chunk(4, dim=-1)  # TF gate order i, j, f, o
            torch_order = torch.cat([i, f, j, o], dim=-1)  # PyTorch order i, f, g, o
            if name.endswith("kernel"):
                hidden = value.shape[1] // 4
                n_in = value.shape[0] - hidden
                state["side_lstm.weight_ih_l0"] = torch_order[:n_in].T.contiguous()  # (4H, in)
                state["side_lstm.weight_hh_l0"] = torch_order[n_in:].T.contiguous()  # (4H, H)
            else:
                hidden = value.shape[0] // 4
                bias = torch_order.clone()
                bias[hidden : 2 * hidden] += forget_bias
                state["side_lstm.bias_ih_l0"] = bias
                state["side_lstm.bias_hh_l0"] = torch.zeros_like(bias)
        elif name.startswith("LSTM_1D/dense/"):
            key = "weight" if name.endswith("kernel") else "bias"
            state[f"side_dense.{key}"] = value.T.contiguous() if key == "weight" else value
        elif name == "W/a":
            state["temperature"] = value.reshape(())
        elif name.startswith("ConvLSTM_2D/"):
            scope, _, leaf = name[len("ConvLSTM_2D/") :].rpartition("/")
            target = "cell.conv" if scope.endswith("conv_lstm_cell") else _conv_target(scope)
            if target is None:
                raise ValueError(f"unrecognised WRQE TF variable {name!r}")
            m = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)", target)
            if m:
                plain_layers[m.group(1)] = max(plain_layers.get(m.group(1), -1), int(m.group(2)))
            key = "weight" if leaf == "kernel" else "bias"
            state[f"{target}.{key}"] = (
                value.permute(3, 2, 0, 1).contiguous() if key == "weight" else value
            )
        else:
            raise ValueError(f"unrecognised WRQE TF variable {name!r}")
    for part, last in plain_layers.items():  # msssim: the last conv of each CNN is its tail
        for key in ("weight", "bias"):
            state[f"{part}.tail.{key}"] = state.pop(f"{part}.layers.{last}.{key}")
    return state


def _example_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(batch, 3, 3, 16, 16, generator=g)  # (B, T, 3, H, W)
    side = torch.from_numpy(derive_side_info([900, 300, 500], [36.0, 31.0, 33.0]))  # (T, 10)
    return frames, side.expand(batch, -1, -1).clone()  # (B, T, 10)


@register_block(
    "wrqe",
    paper="Yang et al., Learning for Video Compression with Hierarchical Quality and Recurrent "
    "Enhancement (HLVC), CVPR 2020",
    arxiv="2003.01966",
    repo="https://github.com/RenYang-home/HLVC",
    input_layout="frames (B, T, 3, H, W) RGB float + side_info (B, T, 10) -> (B, T, 3, H, W)",
    value_range="[0, 1]",
    tiny_config={"channels": 4, "kernel_size": 3, "side_hidden": 8},
    example_inputs=_example_inputs,
    checkpoint_filter=convert_tf_checkpoint,
    weights_licence="BSD-3-Clause (official code); no bundled weights",
    needs_weights=True,
    description="Bidirectional quality-weighted ConvLSTM enhancement of decoded frames",
    tasks=("enhance",),
    input_kind="clip+side-info",
)
def build_wrqe(**config) -> WRQE:
    """Build a :class:`WRQE` from :class:`WRQEConfig` fields."""
    return WRQE(WRQEConfig(**config))


__all__ = [
    "WRQE",
    "WRQEConfig",
    "WeightedConvLSTMCell",
    "convert_tf_checkpoint",
    "derive_side_info",
]

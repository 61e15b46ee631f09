"""Models of a job: one wrapper per task kind, turning a batch of decoded clips into results.

A wrapper owns one block (built once per model actor, weights loaded once) and maps
``frames (B, T, H, W, 3) uint8`` plus per-clip metadata to ``ClipResult``s. What a block is
(its tasks, input kind, feature size, preprocessing, class names) is read from its registry
entry (``blocks.block_info``); nothing here names a block. The task kinds:

- ``classify``: top-k labels + scores + the clip feature;
- ``embed``: the clip feature only;
- ``motion``: optical-flow statistics from a frame-pair flow model (and optional 2x rate clips);
- ``enhance``: enhanced clips + per-clip metrics;
- ``inpaint``: masked clips (rectangles or mask videos) inpainted → output clips.
"""

from __future__ import annotations

import fnmatch
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import decord
import numpy as np
import torch

import blocks
from blocks.wrqe import derive_side_info
from pipeline.errors import UserError
from pipeline.inference_runtime import RuntimeUnavailable, compile_for_cpu, openvino_available
from pipeline.media import clip_media_uri, encode_clip
from pipeline.model_options import (
    ClassifyOptions,
    InpaintOptions,
    MotionOptions,
    OptionsError,
    TaskOptions,
    parse_options,
)
from pipeline.model_registry import resolve_model_uri
from pipeline.spec import ModelSpec, TaskKind
from pipeline.uris import filesystem


class ModelConfigError(UserError, ValueError):
    """A model entry of the spec cannot run as given (missing weights, unknown task, bad option)."""


@dataclass
class ClipResult:
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    feature: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    media_uri: str | None = None

    def __repr__(self) -> str:
        shape = None if self.feature is None else self.feature.shape
        return (
            f"ClipResult(labels={self.labels[:3]}, feature={shape}, metrics={list(self.metrics)})"
        )


def infer_task(spec: ModelSpec) -> TaskKind:
    """The spec's task, or the block's default one."""
    if spec.task:
        return spec.task
    task = blocks.block_info(spec.name).default_task
    if task is None:
        raise ModelConfigError(
            f"model {spec.name!r}: set `task` (one of classify, embed, motion, enhance, inpaint)"
        )
    return task


def model_options(spec: ModelSpec, task: TaskKind | None = None) -> TaskOptions:
    """``spec.options`` validated for the task; a bad key or value is a ``ModelConfigError``."""
    try:
        return parse_options(task or infer_task(spec), spec.options)
    except OptionsError as err:
        raise ModelConfigError(f"model {spec.output_key!r}: {err}") from None


def check_model_spec(spec: ModelSpec) -> None:
    """Fail fast (before Ray starts) on unknown blocks, incompatible tasks, bad options and
    missing weights."""
    info = blocks.block_info(spec.name)
    task = infer_task(spec)
    if task not in info.tasks:
        runnable = [name for name in blocks.list_blocks() if task in blocks.block_info(name).tasks]
        raise ModelConfigError(
            f"model {spec.name!r} cannot run task {task!r}; blocks for it: {runnable}"
        )
    check_runtime_options(spec, task)
    if task == "classify" and info.untrained_head and not spec.weights:
        raise ModelConfigError(
            f"model {spec.name!r} has an untrained temporal head: give `weights` (a trained "
            "checkpoint) for task 'classify', or use task 'embed'"
        )
    if info.needs_weights and not spec.weights and task != "embed":
        raise ModelConfigError(
            f"model {spec.name!r} needs weights: set `weights` to a checkpoint path/URL or an "
            "MLflow model URI (models:/name/version). Official checkpoint: "
            f"{info.official_checkpoint or 'n/a'}"
        )


def check_runtime_options(spec: ModelSpec, task: TaskKind) -> None:
    """Options that cannot be honoured (bad keys or values, a runtime the model or machine cannot
    use) fail before Ray starts."""
    options = model_options(spec, task)
    if options.runtime != "openvino":
        return
    if task not in ("classify", "embed"):
        raise ModelConfigError(
            f"model {spec.output_key!r}: runtime 'openvino' runs classify and embed models; "
            f"task {task!r} runs in PyTorch (runtime 'torch')"
        )
    clashing = [k for k, on in (("compile", options.compile), ("quantize", options.quantize)) if on]
    if clashing or (spec.num_gpus or 0) > 0:
        raise ModelConfigError(
            f"model {spec.output_key!r}: runtime 'openvino' is a CPU runtime and excludes "
            f"{clashing or ['num_gpus']}; use runtime 'torch' for those"
        )
    if not openvino_available():
        raise ModelConfigError(
            f"model {spec.output_key!r}: runtime 'openvino' needs the openvino package, which is "
            "not installed in this environment"
        )


def block_config(spec: ModelSpec) -> dict[str, Any]:
    """The block's config from the spec, plus what the registry says the pipeline must fill in:
    a frame-features head takes the width of its frame encoder's features."""
    info = blocks.block_info(spec.name)
    config = dict(spec.config)
    if info.frame_encoder and info.frame_encoder_dim_key:
        encoder_dim = blocks.block_info(info.frame_encoder).feature_dim
        config.setdefault(info.frame_encoder_dim_key, encoder_dim)
    return config


def check_weights(spec: ModelSpec, tracking_uri: str | None) -> None:
    """Load the model's checkpoint once on the driver, strictly and safely, so that a missing file,
    a pickle carrying code or mismatched keys fail the job before any Ray work."""
    weights = resolve_weights(spec.weights, tracking_uri)
    blocks.create_block(spec.name, weights=weights, **block_config(spec))


def resolve_weights(weights: str | None, tracking_uri: str | None) -> str | None:
    if weights and weights.startswith(("models:/", "runs:/")):
        return resolve_model_uri(weights, tracking_uri)
    return weights


class ClipModel:
    """Base: builds the block, places it, and sets torch threads to the actor's CPU allotment."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        output: str,
        storage_options: Mapping[str, Any] | None = None,
        tracking_uri: str | None = None,
        clip_shape: tuple[int, int, int] | None = None,
    ):
        self.spec = spec
        self.info = blocks.block_info(spec.name)
        self.task = infer_task(spec)
        check_runtime_options(spec, self.task)  # also when built outside a job
        self.options = model_options(spec, self.task)
        self.clip_shape = tuple(clip_shape) if clip_shape else None  # (T, H, W) of every clip
        self.output = output
        self.storage_options = dict(storage_options or {})
        use_gpu = torch.cuda.is_available() and (spec.num_gpus or 0) > 0
        self.device = torch.device("cuda" if use_gpu else "cpu")
        weights = resolve_weights(spec.weights, tracking_uri)
        block = blocks.create_block(spec.name, weights=weights, **block_config(spec))
        self.model = block.eval().to(self.device)
        self.model_version = os.path.basename(weights) if weights else "builtin"
        self._optimise_for_inference()
        self.runtime = "torch"
        self._graph: torch.nn.Module | None = None
        self._compiled = None

    def _optimise_for_inference(self) -> None:
        """Apply the ``options`` that change how the model runs, not what it computes.

        - ``runtime``: ``auto`` (default), ``torch`` or ``openvino`` — see ``prepare_runtime``;
        - ``threads``: torch (or OpenVINO) threads of this actor (default: ceil of its
          ``num_cpus``);
        - ``fold_bn`` (default true): BatchNorm folded into the convolutions of frame encoders;
        - ``channels_last`` (default true);
        - ``precision = "bf16"``: bfloat16 autocast on CPU (fast on CPUs with AMX / AVX-512 BF16
          units; top-1 can differ on near-ties, see docs/BENCHMARKS.md); on GPU, fp16 autocast
          is always on;
        - ``quantize = "int8"``: dynamic int8 quantisation of Linear/LSTM layers.
        """
        self.threads = max(1, self.options.threads or math.ceil(self.spec.num_cpus or 1))
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        if self.options.fold_bn:
            for encoder in [m for m in self.model.modules() if hasattr(m, "fold_batchnorm")]:
                encoder.fold_batchnorm()
        if self.options.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.precision = self.options.precision
        self.cpu_bf16 = self.precision == "bf16" and self.device.type == "cpu"
        if self.options.quantize == "int8" and self.device.type == "cpu":
            self.model = torch.ao.quantization.quantize_dynamic(
                self.model, {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8
            )

    def prepare_runtime(self, graph: torch.nn.Module, *, compile: bool = False) -> None:
        """Choose where ``graph`` (uint8 batch → tuple of tensors) runs.

        ``runtime = "auto"`` compiles it with OpenVINO on CPU actors (same function, fused
        convolutions; see ``pipeline.inference_runtime``) unless ``compile`` or ``quantize`` ask
        for a PyTorch-side transformation; it stays in PyTorch on GPU actors and wherever OpenVINO
        cannot convert the model. The conversion happens here when the clip shape is known (the
        actor is built before the first batch arrives), otherwise on the first batch.
        """
        torch_only = self.device.type != "cpu" or compile or self.options.quantize
        self.runtime = "torch" if torch_only else self.options.runtime
        self._graph = torch.compile(graph, dynamic=False) if compile else graph
        if self.runtime != "torch" and self.clip_shape:
            shape = (self.spec.batch_size, *self.clip_shape, 3)
            self._compile(torch.zeros(shape, dtype=torch.uint8))

    def _compile(self, example: torch.Tensor) -> None:
        try:
            self._compiled = compile_for_cpu(
                self._graph,
                example,
                runtime=self.runtime,
                precision=self.precision,
                threads=self.threads,
            )
        except RuntimeUnavailable as err:
            raise ModelConfigError(f"model {self.spec.output_key!r}: {err}") from err
        self.runtime = "openvino" if self._compiled is not None else "torch"

    def forward_graph(self, frames: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Run the prepared graph on a uint8 batch; outputs as torch tensors."""
        if self.runtime != "torch" and self._compiled is None:
            shape = (self.spec.batch_size, *frames.shape[1:])
            self._compile(torch.zeros(shape, dtype=torch.uint8))
        if self._compiled is not None and frames.shape[1:] == self._compiled.shape[1:]:
            return tuple(torch.from_numpy(out) for out in self._compiled(frames))
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        with self.autocast():
            return tuple(self._graph(x))

    def autocast(self) -> torch.autocast:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16)

    def to_unit(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) → float (B, T, 3, H, W) in [0, 1] on the model's device."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        return x.permute(0, 1, 4, 2, 3).float().div_(255.0)  # (B, T, 3, H, W)

    def encode(self, frames_unit: torch.Tensor, meta: Mapping[str, Any], fps: float) -> str:
        """Encode (T, 3, H, W) in [0, 1] as the clip's media file; returns its URI."""
        uri = clip_media_uri(
            self.output, self.spec.output_key, meta["video_id"], int(meta["clip_index"])
        )
        arr = (frames_unit.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        encode_clip(arr, uri, fps=fps, storage_options=self.storage_options)
        return uri

    def run(self, frames: np.ndarray, metas: list[Mapping[str, Any]]) -> list[ClipResult]:
        raise NotImplementedError


class ClassifyGraph(torch.nn.Module):
    """uint8 clips (B, T, H, W, 3) → features (B, D), logits (B, K): normalisation and model in one
    graph, so the whole forward can be handed to an inference runtime.

    How a clip reaches the model follows the block's ``input_kind``: "image" models see every
    frame and their features are averaged over time; "frame-features" heads see the features of
    ``frame_encoder`` per frame, as (B, num_clips, frames_per_clip, D); "clip" models the clip.
    """

    def __init__(
        self,
        *,
        name: str,
        input_kind: str,
        model: torch.nn.Module,
        frame_encoder: torch.nn.Module | None,
        mean: Sequence[float],
        std: Sequence[float],
    ):
        super().__init__()
        self.name = name
        self.input_kind = input_kind
        self.model = model
        self.frame_encoder = frame_encoder
        pixel_stats = {"dtype": torch.float32}
        self.register_buffer("mean", torch.tensor(mean, **pixel_stats).view(1, 1, 3, 1, 1) / 255.0)
        self.register_buffer("std", torch.tensor(std, **pixel_stats).view(1, 1, 3, 1, 1) / 255.0)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = frames.permute(0, 1, 4, 2, 3).float().div(255.0)  # (B, T, 3, H, W) in [0, 1]
        return self.features_and_logits((x - self.mean) / self.std)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, 3, H, W) normalised → features (B, D), logits (B, K)."""
        model = self.model
        b, t = x.shape[:2]
        if self.input_kind == "image":  # a frame model: average over time
            flat = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)  # (B*T, 3, H, W)
            feats = model.forward_features(flat).view(b, t, -1).mean(1)  # (B, D)
            return feats, model.head(feats)
        if self.input_kind == "frame-features":  # clip = num_clips x frames_per_clip frames
            flat = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)  # (B*T, 3, H, W)
            cfg = model.config
            if t != cfg.num_clips * cfg.frames_per_clip:
                raise ValueError(
                    f"{self.name} expects clips of num_clips * frames_per_clip = "
                    f"{cfg.num_clips * cfg.frames_per_clip} frames, got {t}"
                )
            frame_feats = self.frame_encoder.forward_features(flat)
            frame_feats = frame_feats.view(b, cfg.num_clips, cfg.frames_per_clip, -1)  # (B,C,F,D)
            feats = model.forward_features(frame_feats)
            return feats, model.head(feats)
        feats = model.forward_features(x)
        return feats, model.head(feats)


class ClassifyModel(ClipModel):
    """Top-k labels, scores and the clip feature from a clip classifier (or a frame encoder)."""

    options: ClassifyOptions

    def __init__(self, spec: ModelSpec, **kw: Any):
        super().__init__(spec, **kw)
        self.embed_only = self.task == "embed"
        self.top_k = self.options.top_k
        self.labels = list(self.options.labels) if self.options.labels else None
        self.class_names = self.info.class_names() if self.info.class_names else None
        frame_encoder = None
        prep = self.info.preprocessing
        if self.info.frame_encoder:
            encoder_info = blocks.block_info(self.info.frame_encoder)
            prep = prep or encoder_info.preprocessing
            frame_encoder = blocks.create_block(self.info.frame_encoder).eval().to(self.device)
            if self.options.fold_bn:
                frame_encoder.fold_batchnorm()
        if prep is None:
            raise ModelConfigError(
                f"model {spec.name!r}: its registry entry gives no preprocessing (mean/std)"
            )
        graph = ClassifyGraph(
            name=spec.name,
            input_kind=self.info.input_kind,
            model=self.model,
            frame_encoder=frame_encoder,
            mean=prep.mean,
            std=prep.std,
        )
        graph = graph.to(self.device).eval().requires_grad_(False)
        self.prepare_runtime(graph, compile=self.options.compile)

    def label_names(self, num_classes: int) -> Sequence[str] | None:
        """``options.labels``, else the block's class names when its head has that many."""
        if self.labels:
            return self.labels
        if self.class_names and len(self.class_names) == num_classes:
            return self.class_names
        return None

    @torch.inference_mode()
    def run(self, frames: np.ndarray, metas: list[Mapping[str, Any]]) -> list[ClipResult]:
        feats, logits = self.forward_graph(frames)
        feats = feats.float().cpu().numpy()
        if self.embed_only:
            return [ClipResult(feature=f) for f in feats]
        probs = torch.softmax(logits.float(), dim=-1)
        k = min(self.top_k, probs.shape[-1])
        top = probs.topk(k, dim=-1)
        labels = self.label_names(probs.shape[-1])
        out = []
        for f, idx, val in zip(feats, top.indices.cpu().tolist(), top.values.cpu().tolist()):
            names = [labels[i] if labels else f"class_{i}" for i in idx]
            out.append(ClipResult(labels=names, scores=[float(v) for v in val], feature=f))
        return out


class MotionModel(ClipModel):
    """Flow statistics between consecutive frames of each clip (RIFE IFNet ``estimate_flow``).

    The flow's 4 channels are the intermediate flows F(t→0) and F(t→1) at t = 0.5; their
    difference is the 0→1 motion, in pixels at the decoded size. ``motion_score`` is the mean
    magnitude per frame step scaled to a 256-pixel-wide frame, so scores compare across sizes.
    With ``options.interpolate = true`` the runner also writes a 2x frame-rate clip.
    """

    options: MotionOptions

    @torch.inference_mode()
    def run(self, frames: np.ndarray, metas: list[Mapping[str, Any]]) -> list[ClipResult]:
        x = self.to_unit(frames)  # (B, T, 3, H, W)
        b, t, _, h, w = x.shape
        if t < 2:
            return [ClipResult(metrics={"motion_score": 0.0}) for _ in metas]
        img0 = x[:, :-1].flatten(0, 1)  # (B*(T-1), 3, H, W)
        img1 = x[:, 1:].flatten(0, 1)
        with self.autocast():
            flow, _mask = self.model.estimate_flow(img0, img1)
        motion = (flow[:, 2:4] - flow[:, 0:2]).float()  # (N, 2, H, W): displacement 0 → 1
        mag = motion.norm(dim=1).view(b, t - 1, -1)  # (B, T-1, H*W)
        results = []
        for i, meta in enumerate(metas):
            m = mag[i].flatten()
            q = torch.quantile(
                m[:: max(1, m.numel() // 65536)], torch.tensor([0.5, 0.9, 0.99], device=m.device)
            )
            metrics = {
                "flow_mean": float(m.mean()),
                "flow_p50": float(q[0]),
                "flow_p90": float(q[1]),
                "flow_p99": float(q[2]),
                "flow_max": float(m.max()),
                "motion_score": float(m.mean() * 256.0 / w),
            }
            media = None
            if self.options.interpolate:
                mids = self.model.interpolate(x[i, :-1], x[i, 1:], timestep=0.5)  # (T-1, 3, H, W)
                both = torch.stack([x[i, :-1], mids], 1).flatten(0, 1)  # (2(T-1), 3, H, W)
                media = self.encode(torch.cat([both, x[i, -1:]]), meta, 2 * float(meta["fps"]))
            results.append(ClipResult(metrics=metrics, media_uri=media))
        return results


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(1.0 / mse)


class EnhanceModel(ClipModel):
    """WRQE enhancement of each clip; side information derived per frame when none is given.

    Side information per frame: encoded size of the frame's packet (bits) and a quality
    estimate (sharpness: variance of the Laplacian of the decoded luma), turned into the
    10-value window by ``blocks.wrqe.derive_side_info``.
    """

    @torch.inference_mode()
    def run(self, frames: np.ndarray, metas: list[Mapping[str, Any]]) -> list[ClipResult]:
        x = self.to_unit(frames)  # (B, T, 3, H, W)
        side = []
        for i, meta in enumerate(metas):
            bits = (
                np.asarray(
                    meta.get("frame_bytes")
                    if meta.get("frame_bytes") is not None
                    else np.ones(x.shape[1]),
                    dtype=np.float64,
                )
                * 8
            )
            quality = _sharpness(x[i])
            side.append(
                torch.as_tensor(np.asarray(derive_side_info(bits, quality)), dtype=torch.float32)
            )
        side_t = torch.stack(side).to(self.device)  # (B, T, 10)
        with self.autocast():
            y = self.model(x, side_t).float().clamp(0, 1)
        out = []
        for i, meta in enumerate(metas):
            metrics = {
                "psnr_vs_decoded": _psnr(y[i], x[i]),
                "mean_abs_change": float((y[i] - x[i]).abs().mean() * 255),
            }
            out.append(
                ClipResult(metrics=metrics, media_uri=self.encode(y[i], meta, float(meta["fps"])))
            )
        return out


def _sharpness(clip: torch.Tensor) -> np.ndarray:
    """Variance of the Laplacian of each frame's luma: (T, 3, H, W) → (T,)."""
    luma = (0.299 * clip[:, 0] + 0.587 * clip[:, 1] + 0.114 * clip[:, 2]).unsqueeze(
        1
    )  # (T, 1, H, W)
    kernel = clip.new_tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    lap = torch.nn.functional.conv2d(luma, kernel)
    return lap.flatten(1).var(dim=1).cpu().numpy()


class InpaintModel(ClipModel):
    """FuseFormer over masked clips; the known region is kept, the masked one generated.

    Masks come from ``options.masks``: a list of ``{video = "glob on video_uri", rects =
    [[x, y, w, h], ...]}`` in fractions of the frame (0..1), and/or ``options.mask_video``: a
    URI template (``{stem}`` = video file stem) of mask videos decoded at the clip's frames,
    white = to inpaint.
    """

    options: InpaintOptions

    @torch.inference_mode()
    def run(self, frames: np.ndarray, metas: list[Mapping[str, Any]]) -> list[ClipResult]:
        x = self.to_unit(frames)  # (B, T, 3, H, W)
        b, t, _, h, w = x.shape
        masks = torch.stack([self.mask_for(meta, t, h, w) for meta in metas]).to(
            self.device
        )  # (B, T, 1, H, W)
        masked = (x * 2 - 1) * (1 - masks)  # [-1, 1], hole = 0
        with self.autocast():
            pred = self.model(masked).float()  # (B, T, 3, H, W) in [-1, 1]
        comp = ((pred + 1) / 2).clamp(0, 1) * masks + x * (1 - masks)
        out = []
        for i, meta in enumerate(metas):
            metrics = {"masked_fraction": float(masks[i].mean())}
            out.append(
                ClipResult(
                    metrics=metrics, media_uri=self.encode(comp[i], meta, float(meta["fps"]))
                )
            )
        return out

    def mask_for(self, meta: Mapping[str, Any], t: int, h: int, w: int) -> torch.Tensor:
        mask = torch.zeros(t, 1, h, w)
        for entry in self.options.masks:
            if fnmatch.fnmatch(str(meta["video_uri"]), entry.video):
                for x0, y0, rw, rh in entry.rects:
                    rows = slice(int(y0 * h), int(math.ceil((y0 + rh) * h)))
                    cols = slice(int(x0 * w), int(math.ceil((x0 + rw) * w)))
                    mask[:, :, rows, cols] = 1
        if self.options.mask_video:
            mask = torch.maximum(mask, self._mask_video(self.options.mask_video, meta, t, h, w))
        return mask

    def _mask_video(
        self, template: str, meta: Mapping[str, Any], t: int, h: int, w: int
    ) -> torch.Tensor:
        stem = os.path.splitext(os.path.basename(str(meta["video_uri"]).split("#")[-1]))[0]
        fs, path = filesystem(template.format(stem=stem), self.storage_options)
        if not fs.exists(path):
            return torch.zeros(t, 1, h, w)
        vr = decord.VideoReader(io.BytesIO(fs.cat_file(path)), width=w, height=h)
        idx = [min(int(i), len(vr) - 1) for i in meta["frame_indices"]]
        frames = torch.from_numpy(vr.get_batch(idx).asnumpy())  # (T, H, W, 3)
        m = frames.float().mean(-1, keepdim=True) > 127  # (T, H, W, 1)
        return m.permute(0, 3, 1, 2).float()


_MODELS_BY_TASK: dict[str, type[ClipModel]] = {
    "classify": ClassifyModel,
    "embed": ClassifyModel,
    "motion": MotionModel,
    "enhance": EnhanceModel,
    "inpaint": InpaintModel,
}


def build_model(spec: ModelSpec, **kw: Any) -> ClipModel:
    """The wrapper for the spec's task, built (block and weights loaded) and ready to ``run``."""
    return _MODELS_BY_TASK[infer_task(spec)](spec, **kw)

"""Model runners: one per task kind, turning a batch of decoded clips into per-clip results.

A runner owns one block (built once per model actor, weights loaded once) and maps
``frames (B, T, H, W, 3) uint8`` plus per-clip metadata to ``ClipResult``s. The job kinds:

- ``classify``: top-k labels + scores + the clip feature;
- ``embed``: the clip feature only;
- ``motion``: optical-flow statistics from an ``ifnet-*`` block (and optional 2x frame rate clips);
- ``enhance``: ``wrqe`` enhanced clips + per-clip metrics;
- ``inpaint``: ``fuseformer`` over masked clips (rectangles or mask videos) → output clips.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

import blocks
from pipeline.spec import ModelSpec, TaskKind

log = logging.getLogger(__name__)

CLASSIFIERS = {"frame-average", "lrcn", "convpool", "convpool-lstm", "two-stream", "i3d-inflated",
               "efficientnet-lite0", "hcrn-classifier"}


# Classifiers whose temporal head (or flow stream) has no pretrained weights: they embed without
# weights, but their labels mean something only with a trained checkpoint.
UNTRAINED_HEADS = {"lrcn", "convpool-lstm", "two-stream", "hcrn-classifier"}
# Heads over per-frame features: the runner encodes frames with the pretrained encoder first.
FRAME_FEATURE_HEADS = {"hcrn-classifier"}


class ModelConfigError(ValueError):
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
        return f"ClipResult(labels={self.labels[:3]}, feature={shape}, metrics={list(self.metrics)})"


def infer_task(spec: ModelSpec) -> TaskKind:
    """The spec's task, or the natural one for the block."""
    if spec.task:
        return spec.task
    if spec.name in CLASSIFIERS:
        return "classify"
    if spec.name.startswith("ifnet"):
        return "motion"
    if spec.name == "wrqe":
        return "enhance"
    if spec.name == "fuseformer":
        return "inpaint"
    raise ModelConfigError(f"model {spec.name!r}: set `task` (one of classify, embed, motion, "
                           "enhance, inpaint)")


def check_model_spec(spec: ModelSpec) -> None:
    """Fail fast (before Ray starts) on unknown blocks, incompatible tasks and missing weights."""
    info = blocks.block_info(spec.name)
    task = infer_task(spec)
    compatible = {
        "classify": CLASSIFIERS, "embed": CLASSIFIERS,
        "motion": {"ifnet-eccv", "ifnet-v4"}, "enhance": {"wrqe"}, "inpaint": {"fuseformer"},
    }[task]
    if spec.name not in compatible:
        raise ModelConfigError(f"model {spec.name!r} cannot run task {task!r}; "
                               f"blocks for it: {sorted(compatible)}")
    check_runtime_options(spec, task)
    if task == "classify" and spec.name in UNTRAINED_HEADS and not spec.weights:
        raise ModelConfigError(
            f"model {spec.name!r} has an untrained temporal head: give `weights` (a trained "
            "checkpoint) for task 'classify', or use task 'embed'")
    if info.needs_weights and not spec.weights and task != "embed":
        raise ModelConfigError(
            f"model {spec.name!r} needs weights: set `weights` to a checkpoint path/URL or an MLflow "
            f"model URI (models:/name/version). Official checkpoint: {info.official_checkpoint or 'n/a'}")


def check_runtime_options(spec: ModelSpec, task: TaskKind) -> None:
    """``options.runtime`` / ``options.precision`` that cannot be honoured fail before Ray starts."""
    from pipeline.inference_runtime import PRECISIONS, RUNTIMES, openvino_available

    runtime = spec.options.get("runtime", "auto")
    if runtime not in RUNTIMES:
        raise ModelConfigError(f"model {spec.output_key!r}: options.runtime must be one of "
                               f"{list(RUNTIMES)}, got {runtime!r}")
    precision = spec.options.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ModelConfigError(f"model {spec.output_key!r}: options.precision must be one of "
                               f"{list(PRECISIONS)}, got {precision!r}")
    if runtime != "openvino":
        return
    if task not in ("classify", "embed"):
        raise ModelConfigError(f"model {spec.output_key!r}: runtime 'openvino' runs classify and "
                               f"embed models; task {task!r} runs in PyTorch (runtime 'torch')")
    clashing = [k for k in ("compile", "quantize") if spec.options.get(k)]
    if clashing or (spec.num_gpus or 0) > 0:
        raise ModelConfigError(f"model {spec.output_key!r}: runtime 'openvino' is a CPU runtime and "
                               f"excludes {clashing or ['num_gpus']}; use runtime 'torch' for those")
    if not openvino_available():
        raise ModelConfigError(f"model {spec.output_key!r}: runtime 'openvino' needs the openvino "
                               "package, which is not installed in this environment")


def check_weights(spec: ModelSpec, tracking_uri: str | None) -> None:
    """Load the model's checkpoint once on the driver, strictly and safely, so that a missing file,
    a pickle carrying code or mismatched keys fail the job before any Ray work."""
    weights = resolve_weights(spec.weights, tracking_uri)
    config = dict(spec.config)
    if spec.name in FRAME_FEATURE_HEADS:
        config.setdefault("vision_dim", 1280)
    blocks.create_block(spec.name, weights=weights, **config)


def resolve_weights(weights: str | None, tracking_uri: str | None) -> str | None:
    if weights and weights.startswith(("models:/", "runs:/")):
        from pipeline.tracking import resolve_model_uri

        return resolve_model_uri(weights, tracking_uri)
    return weights


class ModelRunner:
    """Base: builds the block, places it, and sets torch threads to the actor's CPU allotment."""

    def __init__(self, spec: ModelSpec, *, output: str,
                 storage_options: Mapping[str, Any] | None = None, tracking_uri: str | None = None,
                 clip_shape: tuple[int, int, int] | None = None):
        self.spec = spec
        self.clip_shape = tuple(clip_shape) if clip_shape else None  # (T, H, W) of every clip
        self.options = dict(spec.options)
        self.output = output
        self.storage_options = dict(storage_options or {})
        self.device = torch.device("cuda" if torch.cuda.is_available() and (spec.num_gpus or 0) > 0
                                   else "cpu")
        weights = resolve_weights(spec.weights, tracking_uri)
        config = dict(spec.config)
        if spec.name in FRAME_FEATURE_HEADS:
            config.setdefault("vision_dim", 1280)  # efficientnet-lite0 features
        self.model = blocks.create_block(spec.name, weights=weights, **config).eval().to(self.device)
        self.model_version = os.path.basename(weights) if weights else "builtin"
        check_runtime_options(spec, infer_task(spec))  # also when built outside a job
        self._optimise_for_inference()
        self.runtime = "torch"
        self._graph: torch.nn.Module | None = None
        self._compiled = None

    def _optimise_for_inference(self) -> None:
        """Apply the ``options`` that change how the model runs, not what it computes.

        - ``runtime``: ``auto`` (default), ``torch`` or ``openvino`` — see ``prepare_runtime``;
        - ``threads``: torch (or OpenVINO) threads of this actor (default: ceil of its ``num_cpus``);
        - ``fold_bn`` (default true): BatchNorm folded into the convolutions of frame encoders;
        - ``channels_last`` (default true);
        - ``precision = "bf16"``: bfloat16 autocast on CPU (fast on CPUs with AMX / AVX-512 BF16
          units; top-1 can differ on near-ties, see docs/BENCHMARKS.md); on GPU, fp16 autocast
          is always on;
        - ``quantize = "int8"``: dynamic int8 quantisation of Linear/LSTM layers.
        """
        self.threads = max(1, int(self.options.get("threads") or math.ceil(self.spec.num_cpus or 1)))
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        encoders = [m for m in self.model.modules() if hasattr(m, "fold_batchnorm")]
        if self.options.get("fold_bn", True):
            for encoder in encoders:
                encoder.fold_batchnorm()
        if self.options.get("channels_last", True):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.precision = self.options.get("precision", "fp32")
        self.cpu_bf16 = self.precision == "bf16" and self.device.type == "cpu"
        if self.options.get("quantize") == "int8" and self.device.type == "cpu":
            self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear, torch.nn.LSTM},
                                                                dtype=torch.qint8)

    def prepare_runtime(self, graph: torch.nn.Module) -> None:
        """Choose where ``graph`` (uint8 batch → tuple of tensors) runs.

        ``runtime = "auto"`` compiles it with OpenVINO on CPU actors (same function, fused
        convolutions; see ``pipeline.inference_runtime``) unless ``compile`` or ``quantize`` ask
        for a PyTorch-side transformation; it stays in PyTorch on GPU actors and wherever OpenVINO
        cannot convert the model. The conversion happens here when the clip shape is known (the
        actor is built before the first batch arrives), otherwise on the first batch.
        """
        runtime = self.options.get("runtime", "auto")
        torch_only = self.device.type != "cpu" or self.options.get("compile") or self.options.get("quantize")
        self.runtime = "torch" if torch_only else runtime
        self._graph = graph
        if self.options.get("compile", False):
            self._graph = torch.compile(graph, dynamic=False)
        if self.runtime != "torch" and self.clip_shape:
            self._compile(torch.zeros((self.spec.batch_size, *self.clip_shape, 3), dtype=torch.uint8))

    def _compile(self, example: torch.Tensor) -> None:
        from pipeline.inference_runtime import RuntimeUnavailable, compile_for_cpu

        try:
            self._compiled = compile_for_cpu(self._graph, example, runtime=self.runtime,
                                             precision=self.precision, threads=self.threads)
        except RuntimeUnavailable as err:
            raise ModelConfigError(f"model {self.spec.output_key!r}: {err}") from err
        self.runtime = "openvino" if self._compiled is not None else "torch"

    def forward_graph(self, frames: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Run the prepared graph on a uint8 batch; outputs as torch tensors."""
        if self.runtime != "torch" and self._compiled is None:
            self._compile(torch.zeros((self.spec.batch_size, *frames.shape[1:]), dtype=torch.uint8))
        if self._compiled is not None and frames.shape[1:] == self._compiled.shape[1:]:
            return tuple(torch.from_numpy(out) for out in self._compiled(frames))
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        with self.autocast():
            return tuple(self._graph(x))

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16)

    def to_unit(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) → float (B, T, 3, H, W) in [0, 1] on the model's device."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        return x.permute(0, 1, 4, 2, 3).float().div_(255.0)  # (B, T, 3, H, W)

    def media_uri(self, meta: Mapping[str, Any]) -> str:
        from pipeline.media import clip_media_uri

        return clip_media_uri(self.output, self.spec.output_key, meta["video_id"], int(meta["clip_index"]))

    def encode(self, frames_unit: torch.Tensor, meta: Mapping[str, Any], fps: float) -> str:
        """Encode (T, 3, H, W) in [0, 1] as the clip's media file; returns its URI."""
        from pipeline.media import encode_clip

        uri = self.media_uri(meta)
        arr = (frames_unit.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        encode_clip(arr, uri, fps=fps, storage_options=self.storage_options)
        return uri

    def run(self, frames: np.ndarray, metas: list[Mapping[str, Any]]) -> list[ClipResult]:
        raise NotImplementedError


class ClassifyGraph(torch.nn.Module):
    """uint8 clips (B, T, H, W, 3) → features (B, D), logits (B, K): normalisation and model in one
    graph, so the whole forward can be handed to an inference runtime."""

    def __init__(self, name: str, model: torch.nn.Module, frame_encoder: torch.nn.Module | None,
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.name = name
        self.model = model
        self.frame_encoder = frame_encoder
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 1, 3, 1, 1) / 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 1, 3, 1, 1) / 255.0)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = frames.permute(0, 1, 4, 2, 3).float().div(255.0)  # (B, T, 3, H, W) in [0, 1]
        return self.features_and_logits((x - self.mean) / self.std)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, 3, H, W) normalised → features (B, D), logits (B, K)."""
        model = self.model
        b, t = x.shape[:2]
        if self.name == "efficientnet-lite0":  # a frame model: average over time
            flat = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)  # (B*T, 3, H, W)
            feats = model.forward_features(flat).view(b, t, -1).mean(1)  # (B, D)
            return feats, model.head(feats)
        if self.frame_encoder is not None:  # HCRN: clip = num_clips x frames_per_clip frames
            flat = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)  # (B*T, 3, H, W)
            cfg = model.config
            if t != cfg.num_clips * cfg.frames_per_clip:
                raise ValueError(f"hcrn-classifier expects clips of num_clips * frames_per_clip = "
                                 f"{cfg.num_clips * cfg.frames_per_clip} frames, got {t}")
            frame_feats = self.frame_encoder.forward_features(flat)
            frame_feats = frame_feats.view(b, cfg.num_clips, cfg.frames_per_clip, -1)  # (B, C, F, D)
            feats = model.forward_features(frame_feats)
            return feats, model.head(feats)
        feats = model.forward_features(x)
        return feats, model.head(feats)


class ClassifyRunner(ModelRunner):
    """Top-k labels, scores and the clip feature from a clip classifier (or the frame encoder)."""

    def __init__(self, spec: ModelSpec, *, embed_only: bool = False, **kw: Any):
        super().__init__(spec, **kw)
        self.embed_only = embed_only
        self.top_k = int(self.options.get("top_k", 5))
        prep = getattr(self.model, "preprocessing", None) or _encoder_preprocessing(self.model)
        labels = self.options.get("labels") or getattr(self.model, "labels", None)
        self.labels = list(labels) if labels else None
        frame_encoder = None
        if spec.name in FRAME_FEATURE_HEADS:
            frame_encoder = blocks.create_block("efficientnet-lite0").eval().to(self.device)
            if self.options.get("fold_bn", True):
                frame_encoder.fold_batchnorm()
        graph = ClassifyGraph(spec.name, self.model, frame_encoder, prep.mean, prep.std)
        self.prepare_runtime(graph.to(self.device).eval().requires_grad_(False))

    @torch.inference_mode()
    def run(self, frames: np.ndarray, metas: list[Mapping[str, Any]]) -> list[ClipResult]:
        feats, logits = self.forward_graph(frames)
        feats = feats.float().cpu().numpy()
        if self.embed_only:
            return [ClipResult(feature=f) for f in feats]
        probs = torch.softmax(logits.float(), dim=-1)
        k = min(self.top_k, probs.shape[-1])
        top = probs.topk(k, dim=-1)
        out = []
        for f, idx, val in zip(feats, top.indices.cpu().tolist(), top.values.cpu().tolist()):
            names = [self.labels[i] if self.labels else f"class_{i}" for i in idx]
            out.append(ClipResult(labels=names, scores=[float(v) for v in val], feature=f))
        return out


def _encoder_preprocessing(model):
    from blocks.efficientnet_lite import PREPROCESS

    return getattr(getattr(model, "encoder", None), "preprocessing", None) or PREPROCESS


class MotionRunner(ModelRunner):
    """Flow statistics between consecutive frames of each clip (RIFE IFNet ``estimate_flow``).

    The flow's 4 channels are the intermediate flows F(t→0) and F(t→1) at t = 0.5; their
    difference is the 0→1 motion, in pixels at the decoded size. ``motion_score`` is the mean
    magnitude per frame step scaled to a 256-pixel-wide frame, so scores compare across sizes.
    With ``options.interpolate = true`` the runner also writes a 2x frame-rate clip.
    """

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
            q = torch.quantile(m[:: max(1, m.numel() // 65536)], torch.tensor([0.5, 0.9, 0.99], device=m.device))
            metrics = {
                "flow_mean": float(m.mean()), "flow_p50": float(q[0]), "flow_p90": float(q[1]),
                "flow_p99": float(q[2]), "flow_max": float(m.max()),
                "motion_score": float(m.mean() * 256.0 / w),
            }
            media = None
            if self.options.get("interpolate", False):
                mids = self.model.interpolate(x[i, :-1], x[i, 1:], timestep=0.5)  # (T-1, 3, H, W)
                both = torch.stack([x[i, :-1], mids], 1).flatten(0, 1)  # (2(T-1), 3, H, W)
                media = self.encode(torch.cat([both, x[i, -1:]]), meta, 2 * float(meta["fps"]))
            results.append(ClipResult(metrics=metrics, media_uri=media))
        return results


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(1.0 / mse)


class EnhanceRunner(ModelRunner):
    """WRQE enhancement of each clip; side information derived per frame when none is given.

    Side information per frame: encoded size of the frame's packet (bits) and a quality
    estimate (sharpness: variance of the Laplacian of the decoded luma), turned into the
    10-value window by ``blocks.wrqe.derive_side_info``.
    """

    @torch.inference_mode()
    def run(self, frames: np.ndarray, metas: list[Mapping[str, Any]]) -> list[ClipResult]:
        from blocks.wrqe import derive_side_info

        x = self.to_unit(frames)  # (B, T, 3, H, W)
        side = []
        for i, meta in enumerate(metas):
            bits = np.asarray(meta.get("frame_bytes") if meta.get("frame_bytes") is not None
                              else np.ones(x.shape[1]), dtype=np.float64) * 8
            quality = _sharpness(x[i])
            side.append(torch.as_tensor(np.asarray(derive_side_info(bits, quality)), dtype=torch.float32))
        side_t = torch.stack(side).to(self.device)  # (B, T, 10)
        with self.autocast():
            y = self.model(x, side_t).float().clamp(0, 1)
        out = []
        for i, meta in enumerate(metas):
            metrics = {"psnr_vs_decoded": _psnr(y[i], x[i]),
                       "mean_abs_change": float((y[i] - x[i]).abs().mean() * 255)}
            out.append(ClipResult(metrics=metrics, media_uri=self.encode(y[i], meta, float(meta["fps"]))))
        return out


def _sharpness(clip: torch.Tensor) -> np.ndarray:
    """Variance of the Laplacian of each frame's luma: (T, 3, H, W) → (T,)."""
    luma = (0.299 * clip[:, 0] + 0.587 * clip[:, 1] + 0.114 * clip[:, 2]).unsqueeze(1)  # (T, 1, H, W)
    kernel = clip.new_tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    lap = torch.nn.functional.conv2d(luma, kernel)
    return lap.flatten(1).var(dim=1).cpu().numpy()


class InpaintRunner(ModelRunner):
    """FuseFormer over masked clips; the known region is kept, the masked one generated.

    Masks come from ``options.masks``: a list of ``{video = "glob on video_uri", rects =
    [[x, y, w, h], ...]}`` in fractions of the frame (0..1), and/or ``options.mask_video``: a
    URI template (``{stem}`` = video file stem) of mask videos decoded at the clip's frames,
    white = to inpaint.
    """

    @torch.inference_mode()
    def run(self, frames: np.ndarray, metas: list[Mapping[str, Any]]) -> list[ClipResult]:
        x = self.to_unit(frames)  # (B, T, 3, H, W)
        b, t, _, h, w = x.shape
        masks = torch.stack([self.mask_for(meta, t, h, w) for meta in metas]).to(self.device)  # (B, T, 1, H, W)
        masked = (x * 2 - 1) * (1 - masks)  # [-1, 1], hole = 0
        with self.autocast():
            pred = self.model(masked).float()  # (B, T, 3, H, W) in [-1, 1]
        comp = ((pred + 1) / 2).clamp(0, 1) * masks + x * (1 - masks)
        out = []
        for i, meta in enumerate(metas):
            metrics = {"masked_fraction": float(masks[i].mean())}
            out.append(ClipResult(metrics=metrics, media_uri=self.encode(comp[i], meta, float(meta["fps"]))))
        return out

    def mask_for(self, meta: Mapping[str, Any], t: int, h: int, w: int) -> torch.Tensor:
        mask = torch.zeros(t, 1, h, w)
        for entry in self.options.get("masks", []):
            if fnmatch.fnmatch(str(meta["video_uri"]), entry.get("video", "*")):
                for x0, y0, rw, rh in entry["rects"]:
                    mask[:, :, int(y0 * h):int(math.ceil((y0 + rh) * h)),
                         int(x0 * w):int(math.ceil((x0 + rw) * w))] = 1
        template = self.options.get("mask_video")
        if template:
            mask = torch.maximum(mask, self._mask_video(template, meta, t, h, w))
        return mask

    def _mask_video(self, template: str, meta: Mapping[str, Any], t: int, h: int, w: int) -> torch.Tensor:
        import io

        import decord

        from pipeline.uris import filesystem

        stem = os.path.splitext(os.path.basename(str(meta["video_uri"]).split("#")[-1]))[0]
        fs, path = filesystem(template.format(stem=stem), self.storage_options)
        if not fs.exists(path):
            return torch.zeros(t, 1, h, w)
        vr = decord.VideoReader(io.BytesIO(fs.cat_file(path)), width=w, height=h)
        idx = [min(int(i), len(vr) - 1) for i in meta["frame_indices"]]
        m = torch.from_numpy(vr.get_batch(idx).asnumpy()).float().mean(-1, keepdim=True) > 127  # (T, H, W, 1)
        return m.permute(0, 3, 1, 2).float()


def build_runner(spec: ModelSpec, **kw: Any) -> ModelRunner:
    task = infer_task(spec)
    if task in ("classify", "embed"):
        return ClassifyRunner(spec, embed_only=(task == "embed"), **kw)
    return {"motion": MotionRunner, "enhance": EnhanceRunner, "inpaint": InpaintRunner}[task](spec, **kw)

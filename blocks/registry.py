"""Name → builder registry for every block and model, with weights metadata and strict loading."""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

StateDict = Mapping[str, torch.Tensor]


class UnknownBlockError(KeyError):
    """Raised for a name that is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class WeightsMismatchError(RuntimeError):
    """A checkpoint whose keys or shapes do not match the model exactly."""


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded with ``weights_only=True`` (it carries code)."""


# The jobs a pipeline model can run (``pipeline.spec.TaskKind``); a block lists the ones it serves.
Task = Literal["classify", "embed", "motion", "enhance", "inpaint"]
TASKS: tuple[Task, ...] = ("classify", "embed", "motion", "enhance", "inpaint")

# What ``forward`` consumes, which decides how the pipeline feeds a batch of decoded clips:
# - "image": one frame (B, 3, H, W); a clip is encoded frame by frame and averaged over time;
# - "clip": a clip (B, T, 3, H, W) normalised with ``preprocessing``;
# - "frame-features": per-frame features of ``frame_encoder`` (B, num_clips, frames_per_clip, D);
# - "frame-pair": two frames (B, 3, H, W) in [0, 1];
# - "clip+side-info": a clip in [0, 1] plus per-frame side information;
# - "masked-clip": a clip in [-1, 1] with holes set to 0;
# - "tensors": feature tensors (building blocks, not run by the pipeline on their own).
InputKind = Literal[
    "image", "clip", "frame-features", "frame-pair", "clip+side-info", "masked-clip", "tensors"
]


@dataclass(frozen=True, kw_only=True)
class Preprocess:
    """How uint8 RGB frames become a model's input (timm's ``pretrained_cfg`` mean/std/size).

    ``resize`` the shorter side to ``round(size / crop_fraction)``, centre-crop ``size`` x ``size``
    (the TF EfficientNet eval transform: crop 224 out of 256), then ``(pixel - mean) / std`` with
    mean/std in 0..255 pixel units.
    """

    size: int = 224
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std must be 3 values with std > 0, got {self.mean}, {self.std}")


@dataclass(frozen=True)
class BlockInfo:
    """Metadata that travels with a registered block.

    ``tiny_config`` and ``example_inputs`` let the test-suite build every block small and
    feed it: ``example_inputs(batch)`` returns the positional inputs of ``forward`` for a model
    built with ``tiny_config``. The first input must be the one whose shape ``forward`` checks.

    The fields from ``tasks`` on are what the pipeline reads to run the block as a model (like
    torchvision's ``weights.meta`` and ``weights.transforms()``); a new block needs no edit in
    ``pipeline/``:

    - ``tasks``: the pipeline tasks it serves, the first being the default; empty for blocks
      that are parts of models;
    - ``input_kind``: see ``InputKind``;
    - ``feature_dim``: width of ``forward_features`` at the default configuration;
    - ``preprocessing``: mean/std/size of the input the weights expect (for "image"/"clip");
    - ``class_names``: loader of the label names of the pretrained head (used when the built
      model's head has that many classes);
    - ``untrained_head``: the head (or a stream) ships without weights, so labels need a trained
      checkpoint while features do not;
    - ``frame_encoder`` / ``frame_encoder_dim_key``: for "frame-features" heads, the registered
      image model that encodes frames and the config field that takes its ``feature_dim``.
    """

    name: str
    builder: Callable[..., nn.Module]
    paper: str
    arxiv: str | None
    repo: str | None
    input_layout: str
    value_range: str
    example_inputs: Callable[[int], tuple[torch.Tensor, ...]]
    tiny_config: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_filter: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    weights_licence: str | None = None
    official_checkpoint: str | None = None
    needs_weights: bool = False
    description: str = ""
    tasks: tuple[Task, ...] = ()
    input_kind: InputKind = "tensors"
    feature_dim: int | None = None
    preprocessing: Preprocess | None = None
    class_names: Callable[[], tuple[str, ...]] | None = None
    untrained_head: bool = False
    frame_encoder: str | None = None
    frame_encoder_dim_key: str | None = None

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"block {self.name!r}: unknown tasks {unknown}; known: {list(TASKS)}")
        if self.input_kind == "frame-features" and not (
            self.frame_encoder and self.frame_encoder_dim_key
        ):
            raise ValueError(
                f"block {self.name!r}: a frame-features head names its frame_encoder "
                "and frame_encoder_dim_key"
            )

    @property
    def default_task(self) -> Task | None:
        """The task a model entry without ``task`` runs: the first of ``tasks``."""
        return self.tasks[0] if self.tasks else None


_REGISTRY: dict[str, BlockInfo] = {}


def register_block(
    name: str, **meta: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder`` under ``name`` with the metadata in ``meta``
    (see ``BlockInfo``)."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"block name {name!r} is already registered")
        _REGISTRY[name] = BlockInfo(name=name, builder=builder, **meta)
        return builder

    return decorator


def list_blocks() -> list[str]:
    """Every registered name, sorted."""
    _import_all()
    return sorted(_REGISTRY)


def block_info(name: str) -> BlockInfo:
    """Metadata of a registered block; unknown names raise ``UnknownBlockError``."""
    _import_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownBlockError(
            f"unknown block {name!r}; known blocks: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create_block(
    name: str, weights: str | os.PathLike | StateDict | None = None, **config: Any
) -> nn.Module:
    """Build the block registered as ``name`` and optionally load weights strictly.

    Args:
        name: a registered name (see ``list_blocks()``).
        weights: a path or fsspec URL of a checkpoint, a state dict, or None. Official checkpoint
            layouts are converted by the block's ``checkpoint_filter`` before a strict load.
        **config: fields of the block's config dataclass.
    """
    info = block_info(name)
    model = info.builder(**config)
    if weights is not None:
        load_weights(model, weights, info.checkpoint_filter)
    model.block_info = info  # type: ignore[attr-defined]
    return model


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def read_checkpoint(weights: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint from a local path or any fsspec URL with ``weights_only=True``."""
    import fsspec

    with fsspec.open(os.fspath(weights), "rb") as f:
        payload = f.read()
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing to load {weights}: it is not a plain tensor checkpoint "
            f"(loading it would run code). Re-save it as a state dict. Detail: {err}"
        ) from None


def load_weights(
    model: nn.Module,
    weights: str | os.PathLike | StateDict,
    checkpoint_filter: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> nn.Module:
    """Load ``weights`` into ``model`` strictly; raise ``WeightsMismatchError`` listing any
    mismatch."""
    state = dict(weights) if isinstance(weights, Mapping) else read_checkpoint(weights)
    for wrapper in ("state_dict", "model", "netG"):
        if wrapper in state and isinstance(state[wrapper], Mapping) and len(state) <= 4:
            state = dict(state[wrapper])
            break
    if checkpoint_filter is not None:
        state = checkpoint_filter(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or wrong_shape:
        raise WeightsMismatchError(
            "checkpoint does not match the model: "
            f"missing keys {missing[:20]}{' …' if len(missing) > 20 else ''} ({len(missing)}); "
            f"unexpected keys {unexpected[:20]}{' …' if len(unexpected) > 20 else ''} "
            f"({len(unexpected)}); "
            f"shape mismatches {wrong_shape[:20]} ({len(wrong_shape)})"
        )
    model.load_state_dict(state, strict=True)
    return model


def strip_prefix(prefix: str) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """A checkpoint filter removing ``prefix`` (e.g. DDP's ``module.``) from every key that has
    it."""

    def filter_fn(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}

    return filter_fn


_BLOCK_MODULES = ("crn", "ifnet", "wrqe", "sscs", "fuseformer", "efficientnet_lite", "classifiers")


def _import_all() -> None:
    """Import every block module so their ``register_block`` decorators run (idempotent)."""
    import importlib

    for mod in _BLOCK_MODULES:
        try:
            importlib.import_module(f"blocks.{mod}")
        except ModuleNotFoundError as err:
            if err.name != f"blocks.{mod}":
                raise

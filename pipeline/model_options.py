"""``models.options`` of a job spec, typed: one pydantic model per task kind.

A spec's ``options`` table stays a plain mapping in ``ModelSpec`` (so the job fingerprint is the
one the user wrote); ``parse_options`` validates it against the model of the entry's task, which
rejects unknown keys with the list of valid ones and wrong values with the allowed ones. The
spec parser checks the keys (any task's), ``pipeline.models.check_model_spec`` the whole table for
the task; both run before Ray starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Runtime = Literal["auto", "torch", "openvino"]
Precision = Literal["fp32", "bf16"]


class OptionsError(ValueError):
    """``options`` that do not fit the model's task (unknown key or bad value)."""


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime: Runtime = "auto"
    """``auto``: classify/embed models compiled by OpenVINO on CPU actors, PyTorch elsewhere;
    ``torch``: eager PyTorch (exact numerics); ``openvino``: required, an error if impossible."""
    precision: Precision = "fp32"
    """``bf16``: bfloat16 autocast on CPU (top-1 may flip on near-ties); GPUs always use fp16."""
    threads: int | None = Field(None, ge=1)
    """Torch (or OpenVINO) threads of the model actor; default ceil(``num_cpus``)."""
    fold_bn: bool = True
    """BatchNorm folded into the convolutions of frame encoders (same outputs)."""
    channels_last: bool = True
    quantize: Literal["int8"] | None = None
    """Dynamic int8 quantisation of Linear/LSTM layers; implies PyTorch."""


class ClassifyOptions(_Options):
    """``classify`` and ``embed``: the same table, so a classify job switches to embed with
    ``--set models.0.task=embed`` (``top_k`` and ``labels`` are then unused)."""

    top_k: int = Field(5, ge=1)
    labels: list[str] | None = None
    """Class names of a trained head, in class-index order (default: the block's own)."""
    compile: bool = False
    """``torch.compile`` the graph once per actor (tens of seconds); implies PyTorch."""


class MotionOptions(_Options):
    interpolate: bool = False
    """Also write a 2x frame-rate clip per input clip."""


class EnhanceOptions(_Options):
    pass


class MaskRects(BaseModel):
    """Rectangles to inpaint in the videos whose URI matches ``video`` (a glob)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    video: str = "*"
    rects: list[tuple[float, float, float, float]]
    """``[x, y, w, h]`` in fractions of the frame (0..1)."""


class InpaintOptions(_Options):
    masks: list[MaskRects] = Field(default_factory=list)
    mask_video: str | None = None
    """URI template of mask videos (``{stem}`` = video file stem); white = to inpaint."""


TaskOptions = ClassifyOptions | MotionOptions | EnhanceOptions | InpaintOptions

OPTIONS_BY_TASK: dict[str, type[_Options]] = {
    "classify": ClassifyOptions,
    "embed": ClassifyOptions,
    "motion": MotionOptions,
    "enhance": EnhanceOptions,
    "inpaint": InpaintOptions,
}
ALL_OPTION_KEYS = frozenset(key for cls in OPTIONS_BY_TASK.values() for key in cls.model_fields)


def parse_options(task: str, options: Mapping[str, Any]) -> TaskOptions:
    """Validate ``options`` for ``task``; raise ``OptionsError`` naming the key and what fits."""
    cls = OPTIONS_BY_TASK[task]
    try:
        return cls.model_validate(dict(options))
    except ValidationError as err:
        raise OptionsError(_describe(err, task, cls)) from None


def check_option_keys(options: Mapping[str, Any]) -> None:
    """Reject keys that no task knows (a typo such as ``precison``), without knowing the task."""
    unknown = sorted(set(options) - ALL_OPTION_KEYS)
    if unknown:
        raise OptionsError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(sorted(ALL_OPTION_KEYS))}"
        )


def _describe(err: ValidationError, task: str, cls: type[_Options]) -> str:
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            problems.append(
                f"unknown option {key!r} for task {task!r}; "
                f"valid options: {', '.join(sorted(cls.model_fields))}"
            )
        elif e["type"] == "literal_error" and len(e["loc"]) == 1:
            allowed = _literal_values(cls.model_fields[key].annotation)
            problems.append(f"options.{key} must be one of {allowed}, got {e['input']!r}")
        else:
            problems.append(f"options.{key}: {e['msg']}")
    return "; ".join(problems)


def _literal_values(annotation: Any) -> list[Any]:
    """The values a ``Literal[...]`` (or ``Literal[...] | None``) annotation admits, None aside."""
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return list(args)
    return [v for arg in args for v in _literal_values(arg)]

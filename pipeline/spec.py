"""The job spec: TOML validated by pydantic before any Ray work starts. Unknown keys are errors."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import UserError
from pipeline.model_options import check_option_keys

TaskKind = Literal["classify", "embed", "motion", "enhance", "inpaint"]


class SpecError(UserError, ValueError):
    """The job spec is invalid; raised before anything runs or is written."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingSpec(_Strict):
    """How clips are cut from each video (MMAction2 / PyTorchVideo conventions).

    Sliding windows: a clip is ``clip_len`` frames taken every ``frame_interval`` frames; clip
    starts advance by ``stride`` frames (default: one clip span, i.e. non-overlapping).
    Uniform: ``num_clips`` > 0 places that many clips evenly over each video instead.
    """

    clip_len: int = Field(8, ge=1)
    frame_interval: int = Field(1, ge=1)
    stride: int | None = Field(None, ge=1)
    num_clips: int = Field(0, ge=0)
    size: tuple[int, int] = (224, 224)
    short_video: Literal["pad", "skip"] = "pad"
    segment_s: float = Field(120.0, gt=0)

    @field_validator("size", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) else v

    @property
    def span(self) -> int:
        """Frames covered by one clip, first to last inclusive."""
        return (self.clip_len - 1) * self.frame_interval + 1


class DecodeSpec(_Strict):
    backend: Literal["decord", "pyav"] = "decord"
    threads: int = Field(1, ge=0)
    timeout_s: float = Field(300.0, gt=0)
    actors: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, gt=0)
    isolation: Literal["process", "none"] = "process"


class ModelSpec(_Strict):
    """One model of the job; its rows in ``clips`` carry ``key`` in the ``model`` column."""

    name: str
    task: TaskKind | None = None
    key: str | None = None
    weights: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(8, ge=1)
    actors: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float | None = Field(None, ge=0)

    @field_validator("options")
    @classmethod
    def _known_option_keys(cls, options: dict[str, Any]) -> dict[str, Any]:
        check_option_keys(options)  # values, per task: pipeline.models.check_model_spec
        return options

    @property
    def output_key(self) -> str:
        return self.key or self.name


class RaySpec(_Strict):
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    object_store_memory: int | None = None


class MlflowSpec(_Strict):
    tracking_uri: str | None = None
    experiment: str = "vmb"
    run_name: str | None = None
    fail_fast: bool = False
    enabled: bool = True


class JobSpec(_Strict):
    name: str = "vmb-job"
    input: str
    output: str
    storage_options: dict[str, Any] = Field(default_factory=dict)
    max_error_fraction: float = Field(1.0, ge=0, le=1)
    shard_size: int = Field(1000, ge=1)
    sampling: SamplingSpec = SamplingSpec()
    decode: DecodeSpec = DecodeSpec()
    models: list[ModelSpec] = Field(min_length=1)
    ray: RaySpec = RaySpec()
    mlflow: MlflowSpec = MlflowSpec()

    @model_validator(mode="after")
    def _unique_model_keys(self) -> JobSpec:
        keys = [m.output_key for m in self.models]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"model keys must be unique; repeated: {dupes} (set `key` on each)")
        return self

    def fingerprint(self) -> str:
        """Hash of what determines the rows and where they go: input, sampling, models and shard
        size. Resume checks it."""
        basis = {
            "input": self.input,
            "shard_size": self.shard_size,
            "sampling": self.sampling.model_dump(),
            "models": [m.model_dump() for m in self.models],
        }
        return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]


def parse_spec(data: dict[str, Any]) -> JobSpec:
    """Validate a spec dict; errors become one readable ``SpecError``."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"  {where}: {msg}")
        raise SpecError("invalid job spec:\n" + "\n".join(lines)) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (value parsed as TOML, else a string); list items by
    index."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set expects key=value, got {item!r}")
        path, raw = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node: Any = data
        parts = path.strip().split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None) -> tuple[JobSpec, str]:
    """Read and validate a TOML job spec; returns the spec and the TOML text (for tracking)."""
    text = Path(path).read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: not valid TOML: {err}") from None
    return parse_spec(apply_overrides(data, overrides or [])), text

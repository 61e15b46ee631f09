"""Errors the CLI reports as one message (exit 2) instead of a traceback."""

from __future__ import annotations

from blocks.registry import UnknownBlockError, UnsafeCheckpointError, WeightsMismatchError
from pipeline.archive import ArchiveError
from pipeline.model_runners import ModelConfigError
from pipeline.spec import SpecError


def _optional(module: str, name: str) -> tuple[type[BaseException], ...]:
    import importlib

    try:
        return (getattr(importlib.import_module(module), name),)
    except (ImportError, AttributeError):
        return ()


USER_ERRORS: tuple[type[BaseException], ...] = (
    SpecError, ArchiveError, ModelConfigError, UnknownBlockError, UnsafeCheckpointError,
    WeightsMismatchError, OSError,
    *_optional("pipeline.runner", "OutputConflictError"),
    *_optional("pipeline.query", "QueryError"),
    *_optional("pipeline.similar", "SimilarError"),
    *_optional("pipeline.tracking", "TrackingUnavailableError"),
    *_optional("pipeline.tracking", "ModelResolutionError"),
    *_optional("pipeline.submit", "SubmitError"),
)

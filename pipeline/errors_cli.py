"""Errors the CLI reports as one message (exit 2) instead of a traceback."""

from __future__ import annotations

from blocks.registry import UnknownBlockError, UnsafeCheckpointError, WeightsMismatchError
from pipeline.archive import ArchiveError
from pipeline.model_runners import ModelConfigError
from pipeline.query import QueryError
from pipeline.runner import OutputConflictError
from pipeline.similar import SimilarityError
from pipeline.spec import SpecError
from pipeline.submit import SubmitError
from pipeline.tracking import ModelResolutionError, TrackingUnavailableError

USER_ERRORS: tuple[type[BaseException], ...] = (
    SpecError, ArchiveError, ModelConfigError, UnknownBlockError, UnsafeCheckpointError,
    WeightsMismatchError, OutputConflictError, QueryError, SimilarityError, SubmitError,
    ModelResolutionError, TrackingUnavailableError, OSError,
)

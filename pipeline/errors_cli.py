"""Errors the CLI reports as one message (exit 2) instead of a traceback.

Matched by qualified class name along the exception's MRO, so that checking an error never
imports a heavy module (``blocks`` imports torch) that the command did not need.
"""

from __future__ import annotations

USER_ERRORS = frozenset({
    "pipeline.spec.SpecError",
    "pipeline.archive.ArchiveError",
    "pipeline.model_runners.ModelConfigError",
    "pipeline.job.OutputConflictError",
    "pipeline.query.QueryError",
    "pipeline.similar.SimilarityError",
    "pipeline.submit.SubmitError",
    "pipeline.tracking.ModelResolutionError",
    "pipeline.tracking.TrackingUnavailableError",
    "blocks.registry.UnknownBlockError",
    "blocks.registry.UnsafeCheckpointError",
    "blocks.registry.WeightsMismatchError",
    "builtins.OSError",
})


def is_user_error(err: BaseException) -> bool:
    """True for errors caused by the request (bad spec, input, output, query), not by a bug."""
    return any(f"{cls.__module__}.{cls.__qualname__}" in USER_ERRORS for cls in type(err).__mro__)

"""Old name of ``pipeline.models``, kept only while ``pipeline.runner`` and ``pipeline.workers``
still import from it. Delete this file once they import ``pipeline.models``."""

from pipeline.models import build_model as build_runner
from pipeline.models import check_model_spec, check_weights, infer_task

__all__ = ["build_runner", "check_model_spec", "check_weights", "infer_task"]

"""vmb pipeline: run video jobs on Ray and query their tables.

The public Python API (the CLI is ``pipeline.cli``)::

    from pipeline import load_spec, query, run_job

    spec, text = load_spec("jobs/classify.toml")
    result = run_job(spec, spec_text=text)
    table = query(spec.output, "select video_uri, labels[1] from clips")

The names are resolved on first use, so ``import pipeline`` imports neither Ray, torch nor
DuckDB.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.job import JobResult, run_job
    from pipeline.query import query
    from pipeline.spec import JobSpec, load_spec

_LAZY = {
    "run_job": "pipeline.job",
    "JobResult": "pipeline.job",
    "query": "pipeline.query",
    "load_spec": "pipeline.spec",
    "JobSpec": "pipeline.spec",
}
__all__ = ["JobResult", "JobSpec", "load_spec", "query", "run_job"]  # the keys of _LAZY


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """``pipeline.query`` is both the function (the public name) and a submodule. Importing a
    submodule sets it as an attribute of the package, which would hide the function; this keeps
    the function. The module stays importable as usual (``from pipeline.query import ...``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

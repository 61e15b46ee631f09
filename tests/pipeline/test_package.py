"""The package surface without Ray: lazy exports, the shipped demo job, which errors are the
user's, and the quiet terminal of `vmb run`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.errors_cli import is_user_error

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_import_pipeline_is_cheap_and_exports_resolve_lazily():
    out = _python("""
        import sys
        import pipeline
        print(sorted(m for m in ("ray", "torch", "duckdb") if m in sys.modules))
        from pipeline import similar  # imports the pipeline.query module first
        print(pipeline.query.__module__, pipeline.query.__name__, callable(pipeline.query))
        from pipeline import run_job
        print(run_job.__module__)
    """).stdout.split("\n")
    assert out[:3] == ["[]", "pipeline.query query True", "pipeline.job"]


def test_the_demo_job_ships_as_package_data_and_is_the_users_job():
    shipped = resources.files("pipeline").joinpath("jobs/classify.toml").read_text()
    assert shipped == (ROOT / "jobs" / "classify.toml").read_text()


def test_user_errors_are_decided_by_type():
    from blocks.registry import UnknownBlockError
    from pipeline.model_registry import ModelResolutionError
    from pipeline.models import ModelConfigError
    from pipeline.spec import SpecError
    from pipeline.tracking import TrackingUnavailableError

    for err in (
        SpecError("x"),
        ModelConfigError("x"),
        ModelResolutionError("x"),
        TrackingUnavailableError("x"),
        UnknownBlockError("x"),
        FileNotFoundError("x"),
    ):
        assert is_user_error(err), type(err)
    assert all(issubclass(cls, UserError) for cls in (SpecError, ModelConfigError))
    assert not is_user_error(RuntimeError("a bug")) and not is_user_error(KeyError("a bug"))


@pytest.mark.parametrize("redirect", [True, False])
def test_native_stderr_goes_to_a_file_while_python_stderr_stays(tmp_path, redirect):
    log = tmp_path / "native.err"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from pipeline.ray_logging import native_stderr_to_file
        if {redirect}:
            with native_stderr_to_file(Path({str(log)!r})):
                os.write(2, b"native line\\n")
                print("our line", file=sys.stderr)
        os.write(2, b"after\\n")
    """),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    if redirect:
        assert proc.stderr == "our line\nafter\n" and log.read_text() == "native line\n"
    else:
        assert proc.stderr == "after\n" and not log.exists()


def test_ray_init_kwargs_quiet_ray_unless_verbose():
    import logging

    from pipeline.ray_logging import ray_init_kwargs

    assert ray_init_kwargs() == {"logging_level": logging.ERROR, "log_to_driver": False}
    assert ray_init_kwargs(verbose=True)["logging_level"] == logging.INFO

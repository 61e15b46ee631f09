"""The ``python -m bench`` runs that ``tests/test_bench_quick.py`` checks, each a subprocess
started when its test asks for it and kept for the session.

Each writes only under its own folder of a temporary root (``VMB_BENCH_CACHE``,
``VMB_BENCH_RESULTS``, its MLflow store and graph cache), removed with the session; a run
interrupted (a timeout, Ctrl-C) is stopped with its process group. Started in the background
at the start of the session instead, they overlapped the rest of the suite (647-801 s against
820-898 s here), but at a load of 40-60 a Ray start inside them timed out ("The current node
timed out during startup"): they run in their tests, one at a time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The bench arguments of each run.
RUNS = {
    "quick": ("--quick",),
    "archive": ("archive", "--quick", "--archive-sizes", "20", "--first-clip-rounds", "1"),
}
RUN_TIMEOUT_S = 850

_root: Path | None = None
_outputs: dict[str, str] = {}


def bench_env(work: Path) -> dict[str, str]:
    """The environment of a ``python -m bench`` run that writes only under ``work``."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    env["VMB_BENCH_CACHE"] = str(work / "cache")
    env["VMB_BENCH_RESULTS"] = str(work / "results")
    env["VMB_CACHE_DIR"] = str(work / "vmb-cache")
    env["PYTHONPATH"] = str(REPO)
    env.pop("RAY_ADDRESS", None)
    return env


def result(name: str) -> tuple[Path, str]:
    """The folder and stdout of run ``name``, run now unless it already ran this session.
    Fails the caller if the run failed."""
    global _root
    if _root is None:
        _root = Path(tempfile.mkdtemp(prefix="vmb-bench-tests-"))
    work = _root / name
    if name not in _outputs:
        work.mkdir()
        _outputs[name] = _run(work, RUNS[name])
    return work, _outputs[name]


def _run(work: Path, args: tuple[str, ...]) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO,
        env=bench_env(work),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its Ray processes can be stopped with it
    )
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        stdout, stderr = proc.communicate()
        stderr += f"\n(stopped after {RUN_TIMEOUT_S} s)"
    except BaseException:  # interrupted (a test timeout, Ctrl-C): its Ray processes go with it
        _kill_group(proc)
        raise
    assert proc.returncode == 0, stderr[-4000:]
    return stdout


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def stop() -> None:
    """Remove every run's folder (called when the session finishes)."""
    global _root
    if _root is not None:
        shutil.rmtree(_root, ignore_errors=True)
        _root = None
    _outputs.clear()

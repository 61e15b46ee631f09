"""The ``python -m bench`` runs that ``tests/test_bench_quick.py`` checks, each a subprocess
started when its test asks for it.

Each writes only under its own folder of a temporary root (``VMB_BENCH_CACHE``,
``VMB_BENCH_RESULTS``, its MLflow store and graph cache), removed with the session; a run still
going when the session ends is stopped with its process group. Started in the background at
the start of the session instead, they overlapped the rest of the suite (647-801 s against
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
import threading
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The bench arguments of each run.
RUNS = {
    "quick": ("--quick",),
    "archive": ("archive", "--quick", "--archive-sizes", "20"),
}
RUN_TIMEOUT_S = 850


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


@dataclass
class Run:
    """One bench run: its folder, and once it ended its exit code and output."""

    work: Path
    args: tuple[str, ...]
    ended: threading.Event = field(default_factory=threading.Event)
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    proc: subprocess.Popen | None = None


class BenchRuns:
    def __init__(self, names: list[str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vmb-bench-tests-"))
        self.runs = {name: Run(self.root / name, RUNS[name]) for name in names}
        self._stopping = False
        self._thread = threading.Thread(target=self._run_all, name="bench-runs", daemon=True)
        self._thread.start()

    def _run_all(self) -> None:
        for run in self.runs.values():
            if not self._stopping:
                self._run(run)
            run.ended.set()

    def _run(self, run: Run) -> None:
        run.work.mkdir(parents=True)
        run.proc = subprocess.Popen(
            [sys.executable, "-m", "bench", *run.args],
            cwd=REPO,
            env=bench_env(run.work),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its Ray processes can be stopped with it
        )
        try:
            run.stdout, run.stderr = run.proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill_group(run.proc)
            run.stdout, run.stderr = run.proc.communicate()
            run.stderr += f"\n(stopped after {RUN_TIMEOUT_S} s)"
        run.returncode = run.proc.returncode

    def result(self, name: str) -> tuple[Path, str]:
        """Wait for run ``name``; its folder and stdout. Fails the caller if it failed."""
        run = self.runs[name]
        run.ended.wait()
        assert run.returncode == 0, run.stderr[-4000:]
        return run.work, run.stdout

    def stop(self) -> None:
        self._stopping = True
        for run in self.runs.values():
            if run.proc is not None and run.proc.poll() is None:
                _kill_group(run.proc)
        self._thread.join(60)
        shutil.rmtree(self.root, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


_STARTED: list[BenchRuns] = []


def result(name: str) -> tuple[Path, str]:
    """The folder and stdout of run ``name``, started now unless it already ran."""
    runs = next((r for r in _STARTED if name in r.runs), None)
    if runs is None:
        runs = BenchRuns([name])
        _STARTED.append(runs)
    return runs.result(name)


def stop() -> None:
    while _STARTED:
        _STARTED.pop().stop()

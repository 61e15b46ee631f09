"""What every benchmark shares: the run's settings, the machine record, interleaved timing, results.

Every figure is a ratio of two measurements taken in the same run on the same inputs, each the
median of several interleaved repeats (A B A B ..., so drift in machine load hits both sides).
CPU time (user + system of the measuring process, all threads) is recorded next to wall time:
other people's jobs on a shared 2-core machine inflate wall time much more than CPU time.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Generated inputs (kept between runs) and result files; the test of the suite moves both to
# its temporary folder.
CACHE = Path(os.environ.get("VMB_BENCH_CACHE") or REPO / ".vmb" / "bench")
RESULTS = Path(os.environ.get("VMB_BENCH_RESULTS") or REPO / "bench" / "results")
DOCS_PLOTS = REPO / "docs" / "bench"


@dataclass(frozen=True)
class Settings:
    """How big a run is. ``quick`` = tiny workloads and one repeat (the test runs it)."""

    quick: bool = False
    repeats: int = 3
    results_dir: Path = RESULTS
    plots_dir: Path = RESULTS / "plots"
    sweep: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return "quick" if self.quick else "full"


def machine() -> dict[str, Any]:
    """CPU model, core count, memory and load: recorded with every result."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    except OSError:
        pass
    isa = [
        f
        for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
        if f" {f}" in flags
    ]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": mem,
        "isa": isa,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()),
    }


def versions() -> dict[str, str]:
    out = {}
    for mod in ("torch", "ray", "decord", "av", "numpy", "pyarrow"):
        try:
            out[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            out[mod] = "n/a"
    try:
        out["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        out["git"] += "+dirty" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        out["git"] = "n/a"
    return out


def command() -> str:
    return shlex.join(
        [
            os.path.relpath(sys.executable, REPO)
            if sys.executable.startswith(str(REPO))
            else sys.executable,
            "-m",
            "bench",
            *sys.argv[1:],
        ]
    )


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class Sample:
    wall_s: float
    cpu_s: float
    value: Any = None
    load: float = 0.0


def measure(fn: Callable[[], Any]) -> Sample:
    load = loadavg()
    c0, t0 = cpu_seconds(), time.perf_counter()
    value = fn()
    return Sample(time.perf_counter() - t0, cpu_seconds() - c0, value, load)


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: bool = False
) -> dict[str, list[Sample]]:
    """Run each of ``fns`` ``repeats`` times, round robin (A B C A B C ...)."""
    out: dict[str, list[Sample]] = {k: [] for k in fns}
    if warmup:
        for fn in fns.values():
            fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            out[k].append(measure(fn))
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def spread(xs: list[float]) -> float:
    """Half the min-max range over the median (a rough +-)."""
    if len(xs) < 2:
        return 0.0
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / 2 / m if m else 0.0


def save(name: str, settings: Settings, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<tag>-<name>.json`` with the machine, versions and command."""
    settings.results_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "mode": settings.tag,
        "command": command(),
        "cwd": str(REPO),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "versions": versions(),
        **payload,
    }
    path = settings.results_dir / f"{settings.tag}-{name}.json"
    path.write_text(json.dumps(doc, indent=1, default=_jsonable))
    return path


def _jsonable(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__dict__"):
        return o.__dict__
    return str(o)


def run_logged(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, subprocess.CompletedProcess]:
    """Run a subprocess, return (wall seconds, completed process); raise with its stderr tail."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd or REPO, check=False
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall, proc


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for contender subprocesses.

    ``RAY_ADDRESS=local``: a plain ``ray.init()`` (and ``vmb run``'s embedded Ray) attaches to
    any Ray instance already running on the machine -- other people's test clusters on a shared
    box -- and then refuses ``num_cpus``; "local" makes every contender start its own.
    """
    env = dict(os.environ)
    env["RAY_ADDRESS"] = "local"
    env.setdefault("RAY_DEDUP_LOGS", "0")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def log(msg: str) -> None:
    print(
        f"[bench {time.strftime('%H:%M:%S')} load {loadavg():.1f}] {msg}",
        file=sys.stderr,
        flush=True,
    )


def psutil():
    """psutil, which Ray ships under ``ray/thirdparty_files`` (on ``sys.path`` once ``ray`` is
    imported)."""
    import importlib

    import ray  # noqa: F401 - puts ray/thirdparty_files on sys.path

    return importlib.import_module("psutil")

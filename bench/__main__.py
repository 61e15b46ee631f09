"""``python -m bench [SUITE ...] [--quick] [--sweep] [--repeats N]``: run the benchmarks, print the
ratio tables, write bench/results/<mode>-*.json (machine, versions, command, load) and the plots.

Suites, in run order: decode, blocks, overlap, memory, peers (default: all), archive (on request:
``python -m bench archive``, tens of minutes at full size; ``--archive-sizes``,
``--manifest-rows 1000000``). ``--sweep`` adds the vmb settings sweep (one ``vmb run`` per
candidate; about 5 minutes, not part of the default run).
The full run writes its plots to docs/bench/; ``--quick`` (tiny workloads, one repeat) writes
them under bench/results/quick-plots/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench import report
from bench.common import DOCS_PLOTS, RESULTS, Settings, command, log, machine, versions

SUITES = ("decode", "blocks", "overlap", "memory", "peers", "archive")
DEFAULT_SUITES = SUITES[:5]  # archive runs on request: it takes tens of minutes at full size


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("suites", nargs="*", metavar="SUITE", help=f"any of {', '.join(SUITES)}, sweep")
    p.add_argument("--quick", action="store_true", help="tiny workloads, one repeat (< 2 min)")
    p.add_argument("--sweep", action="store_true", help="also run the vmb settings sweep")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peer-repeats", type=int, default=1)
    p.add_argument(
        "--archive-sizes",
        type=_counts,
        default=None,
        metavar="N,N",
        help="archive: video counts (default 2000,20000; --quick 40); 20 always runs",
    )
    p.add_argument(
        "--manifest-rows",
        type=_counts,
        default=(),
        metavar="N",
        help="archive: also a manifest of N rows against the 1,000-row one (e.g. 1000000)",
    )
    p.add_argument(
        "--archive-timeout",
        type=float,
        default=None,
        metavar="S",
        help="archive: stop a manifest or cluster job after S seconds (default 3600; "
        "--quick 300); archive jobs get at least 0.3 s per video",
    )
    p.add_argument(
        "--first-clip-rounds",
        type=int,
        default=0,
        metavar="N",
        help="archive: also N interleaved rounds of jobs over 20 videos and the largest archive, "
        "each stopped at its first clip (the first-clip ratio as a median)",
    )
    a = p.parse_args(argv)
    unknown = [s for s in a.suites if s not in (*SUITES, "sweep")]
    if unknown:
        p.error(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}, sweep")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import logging

    logging.basicConfig(level=logging.WARNING)
    for noisy in ("ray", "ray.data", "pipeline"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_TRACKING_URI", "sqlite:////tmp/vmb-bench-mlflow.db")
    suites = [s for s in a.suites if s != "sweep"] or (
        list(DEFAULT_SUITES) if "sweep" not in a.suites else []
    )
    settings = Settings(
        quick=a.quick,
        repeats=1 if a.quick else a.repeats,
        plots_dir=(RESULTS / "quick-plots") if a.quick else DOCS_PLOTS,
        sweep=a.sweep or "sweep" in a.suites,
        extra={
            "peer_repeats": a.peer_repeats,
            "archive_sizes": a.archive_sizes,
            "manifest_rows": a.manifest_rows,
            "archive_timeout": a.archive_timeout,
            "first_clip_rounds": a.first_clip_rounds,
        },
    )
    t0 = time.time()
    m = machine()
    log(f"{command()}  |  {m['cpu']}, {m['cores']} cores, load {m['loadavg']}")
    results: dict[str, dict] = {}
    for name in suites:
        mod = __import__(f"bench.{name}_bench", fromlist=["run"])
        started = time.time()
        results[name] = mod.run(settings)
        results[name]["elapsed_s"] = time.time() - started
    if settings.sweep:
        from bench import peers_bench

        results["sweep"] = peers_bench.run_sweep(settings)
    text = report.render(results)
    if "archive" in results:
        from bench import archive_bench

        text = "\n\n".join(t for t in (text, archive_bench.render(results["archive"])) if t)
    print(text)
    written = report.plots(results, settings.plots_dir)
    summary = {
        "command": command(),
        "machine": m,
        "machine_end": machine(),
        "versions": versions(),
        "elapsed_s": time.time() - t0,
        "suites": suites,
        "plots": [str(x) for x in written],
        "tables": text,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{settings.tag}-summary.json").write_text(json.dumps(summary, indent=1))
    print(
        f"\n{summary['command']}  ({summary['elapsed_s']:.0f} s; {m['cpu']}, {m['cores']} cores; "
        f"load at start {m['loadavg'][0]:.1f}, at end {summary['machine_end']['loadavg'][0]:.1f}; "
        f"torch {summary['versions']['torch']}, ray {summary['versions']['ray']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

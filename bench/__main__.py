"""``python -m bench [SUITE ...] [--quick] [--sweep] [--repeats N]``: run the benchmarks, print the
ratio tables, write bench/results/<mode>-*.json (machine, versions, command, load) and the plots.

Suites, in run order: decode, blocks, overlap, memory, peers (default: all). ``--sweep`` adds the
vmb settings sweep (one ``vmb run`` per candidate; about 5 minutes, not part of the default run).
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

SUITES = ("decode", "blocks", "overlap", "memory", "peers")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("suites", nargs="*", metavar="SUITE", help=f"any of {', '.join(SUITES)}, sweep")
    p.add_argument("--quick", action="store_true", help="tiny workloads, one repeat (< 2 min)")
    p.add_argument("--sweep", action="store_true", help="also run the vmb settings sweep")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peer-repeats", type=int, default=1)
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
        list(SUITES) if "sweep" not in a.suites else []
    )
    settings = Settings(
        quick=a.quick,
        repeats=1 if a.quick else a.repeats,
        plots_dir=(RESULTS / "quick-plots") if a.quick else DOCS_PLOTS,
        sweep=a.sweep or "sweep" in a.suites,
        extra={"peer_repeats": a.peer_repeats},
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

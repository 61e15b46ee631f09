"""The ``vmb`` command line: run, submit, status, logs, stop, query, similar, blocks, demo.

Each command imports what it needs inside its function: measured with ``python -X importtime``,
``pipeline.job`` costs 2.7 s (Ray, torch) and ``pipeline.query`` 0.6 s (DuckDB), which
``vmb status`` or ``vmb query`` should not pay.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
from importlib import resources
from pathlib import Path

from pipeline.errors_cli import is_user_error
from pipeline.ray_logging import native_stderr_to_file, skip_expected_ray_notices

# The job the demo runs: package data (a copy of jobs/classify.toml), so it is found in a wheel.
DEMO_JOB = "jobs/classify.toml"


def _print_summary(result) -> None:
    s = result.summary
    rows = [
        (
            "videos ok / failed",
            f"{s['videos_ok']} / {s['videos_failed']}"
            + (f"  {s['failures_by_type']}" if s["failures_by_type"] else ""),
        ),
        ("clips written", f"{s['clips']}"),
        (
            "shards committed",
            f"{s['shards_committed']} of {s['shards']} ({s['resumed_shards_skipped']} already "
            f"committed, {s['resumed_videos_skipped']} videos resumed)",
        ),
        (
            "throughput",
            f"{s['clips_per_s']:.2f} clips/s, {s['videos_per_s']:.2f} videos/s "
            f"({s['run_s']:.1f} s processing, {s['wall_s']:.1f} s total)",
        ),
        (
            "first clip",
            "none in this run"
            if s["first_clip_s"] is None
            else f"{s['first_clip_s']:.1f} s into processing",
        ),
        ("tables", f"{s['output']}/clips, {s['output']}/videos"),
        (
            "MLflow run",
            s.get("mlflow_run_id")
            or (
                "not tracked: " + result.tracking_error
                if result.tracking_error
                else "tracking disabled"
            ),
        ),
    ]
    if result.tracking_error:
        rows.append(("tracking", f"FAILED: {result.tracking_error}"))
    width = max(len(k) for k, _ in rows)
    print(f"\njob {result.job_id}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    if not s["within_error_budget"]:
        print(
            f"\nERROR: {s['videos_failed']} of {s['videos_processed']} videos failed "
            f"({s['error_fraction']:.1%}), above max_error_fraction; see the videos table: "
            f'vmb query "select video_uri, status, error_type, error_message from videos '
            f"where status != 'ok'\" --output {s['output']}",
            file=sys.stderr,
        )


def cmd_run(args) -> int:
    from pipeline.job import run_job
    from pipeline.spec import load_spec

    if not args.verbose:
        skip_expected_ray_notices()
    spec, text = load_spec(args.spec, args.set)
    result = run_job(spec, spec_text=text, address=args.address, progress=not args.no_progress)
    _print_summary(result)
    return result.exit_code


def cmd_demo(args) -> int:
    from pipeline.demo_archive import make_sample_archive
    from pipeline.job import run_job
    from pipeline.query import query, write_result
    from pipeline.spec import load_spec

    if not args.verbose:
        skip_expected_ray_notices()
    root = Path(".vmb/demo").resolve()
    archive = args.archive
    output = root / "output"
    if archive:  # one output per archive: a job's output belongs to one input
        output = root / f"output-{hashlib.sha256(archive.encode()).hexdigest()[:10]}"
    else:
        archive = str(root / "archive")
        make_sample_archive(archive)
    overrides = [
        f'input="{archive}"',
        f'output="{output}"',
        f'mlflow.tracking_uri="sqlite:///{root / "mlflow.db"}"',
    ] + (args.set or [])
    with resources.as_file(resources.files("pipeline").joinpath(DEMO_JOB)) as spec_path:
        spec, text = load_spec(spec_path, overrides)
    result = run_job(spec, spec_text=text, progress=True)
    _print_summary(result)
    sql = (
        "select regexp_extract(video_uri, '[^/]+$') as video, count(*) as clips, "
        "mode(labels[1]) as top_label, round(avg(scores[1]), 3) as mean_score "
        "from clips group by video order by video"
    )
    print(f'\nvmb query "{sql}" --output {output}\n')
    print(write_result(query(str(output), sql), "table"))
    return result.exit_code


def cmd_query(args) -> int:
    from pipeline.query import query, write_result

    if args.format == "parquet" and not args.dest:
        print("vmb query: error: --format parquet needs --dest FILE", file=sys.stderr)
        return 2
    table = query(args.output, args.sql, _storage_options(args))
    text = write_result(table, args.format, args.dest)
    if args.dest:
        print(f"{table.num_rows} row{'s' if table.num_rows != 1 else ''} written to {args.dest}")
    elif text:
        print(text, end="")
    return 0


def cmd_similar(args) -> int:
    from pipeline.query import write_result
    from pipeline.similar import similar

    table = similar(
        args.output,
        args.video,
        args.clip,
        k=args.k,
        model=args.model,
        storage_options=_storage_options(args),
    )
    print(write_result(table, args.format), end="")
    return 0


def cmd_blocks(args) -> int:
    from blocks.catalog import print_catalog

    print_catalog()
    return 0


def cmd_submit(args) -> int:
    from pipeline.spec import load_spec
    from pipeline.submit import check_cluster_paths, submit

    spec, _ = load_spec(args.spec, args.set)  # validate locally before uploading anything
    check_cluster_paths(spec)
    job_id = submit(args.spec, args.address, args.set, args.working_dir, args.token)
    print(job_id)
    return 0


def cmd_status(args) -> int:
    from pipeline.submit import status

    print(status(args.job_id, args.address, args.token))
    return 0


def cmd_logs(args) -> int:
    from pipeline.submit import logs

    print(logs(args.job_id, args.address, args.token), end="")
    return 0


def cmd_stop(args) -> int:
    from pipeline.submit import stop

    print("stop requested" if stop(args.job_id, args.address, args.token) else "not running")
    return 0


def _storage_options(args) -> dict:
    return getattr(args, "storage_options", None) or {}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _json_object(text: str) -> dict:
    """argparse type for ``--storage-options``: a JSON object, else a usage error (exit 2)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"anon\": true}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmb", description="Video model blocks at archive scale.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a job (embedded Ray unless --address/RAY_ADDRESS)")
    r.add_argument("spec")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--address", default=None)
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(fn=cmd_run)

    d = sub.add_parser(
        "demo", help="classify the bundled sample archive (or --archive) and query it"
    )
    d.add_argument("--archive", default=None)
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    d.set_defaults(fn=cmd_demo)

    s = sub.add_parser("submit", help="submit a job to a Ray cluster (Ray Jobs API)")
    s.add_argument("spec")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--working-dir", default=None, help="uploaded to the cluster (default: cwd)")
    s.set_defaults(fn=cmd_submit)
    for name, fn, text in (
        ("status", cmd_status, "status of a submitted job"),
        ("logs", cmd_logs, "what a submitted job printed so far"),
        ("stop", cmd_stop, "stop a submitted job"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("job_id")
        c.set_defaults(fn=fn)
    for c in (s, *(sub.choices[n] for n in ("status", "logs", "stop"))):
        c.add_argument(
            "--address",
            default=os.environ.get("RAY_API_SERVER_ADDRESS"),
            help="Ray dashboard URL, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS)",
        )
        c.add_argument(
            "--token",
            default=None,
            help="Ray auth token (default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)",
        )

    q = sub.add_parser("query", help="SQL over a job's tables (views: clips, videos)")
    q.add_argument("sql")
    q.add_argument("--output", required=True)
    q.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    q.add_argument("--dest", default=None, help="file for --format parquet/csv/json")
    q.add_argument(
        "--storage-options",
        type=_json_object,
        default=None,
        help="fsspec options for --output/--dest as a JSON object",
    )
    q.set_defaults(fn=cmd_query)

    m = sub.add_parser("similar", help="nearest clips by cosine similarity of features")
    m.add_argument("--output", required=True)
    m.add_argument("--video", required=True)
    m.add_argument("--clip", type=int, required=True)
    m.add_argument("-k", type=_positive_int, default=10, help="how many clips (default 10)")
    m.add_argument("--model", default=None)
    m.add_argument("--format", choices=["table", "csv", "json"], default="table")
    m.add_argument(
        "--storage-options",
        type=_json_object,
        default=None,
        help="fsspec options for --output as a JSON object",
    )
    m.set_defaults(fn=cmd_similar)

    b = sub.add_parser("blocks", help="list registered blocks with parameter counts")
    b.set_defaults(fn=cmd_blocks)
    return p


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at the time of each record, so that our
    warnings follow it to the terminal while native output is sent elsewhere."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        handlers=[_StderrHandler()],
    )
    quiet_ray = args.command in ("run", "demo") and not args.verbose
    if not args.verbose:
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # its store set-up notices
        logging.getLogger("ray").setLevel(logging.ERROR)
    # Ray's native log lines go to a file, not into the progress bar (see pipeline.ray_logging).
    with native_stderr_to_file() if quiet_ray else contextlib.nullcontext():
        try:
            return args.fn(args)
        except Exception as err:  # noqa: BLE001 - request errors become one message, bugs propagate
            if not is_user_error(err):
                raise
            print(f"vmb {args.command}: error: {err}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())

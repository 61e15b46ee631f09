"""The ``vmb`` command line on real components: run, query, similar, blocks.

``vmb run`` runs once per module as a subprocess (its own embedded Ray: no ``RAY_ADDRESS``, and a
private ``RAY_TMPDIR`` so it cannot find another local Ray's address file); the other commands
read its output. Commands that never start Ray run in this process through ``pipeline.cli.main``.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from blocks import create_block, list_blocks
from blocks.registry import param_count
from pipeline.probe import probe_video
from pipeline.sampling import plan_clips
from pipeline.spec import load_spec
from tests.conftest import TINY_ARCHIVE
from tests.pipeline.cli_util import REPO, env_without_ray, set_args, vmb_subprocess
from tests.pipeline.jobs_util import TINY_SAMPLING, read_table

SPEC = "jobs/classify.toml"


def _overrides(archive: str, out: str) -> list[str]:
    values = [f"input={archive}", f"output={out}", "mlflow.enabled=false"]
    return values + [f"sampling.{k}={v}" for k, v in TINY_SAMPLING.items()]


@pytest.fixture(scope="module")
def job(tiny_archive, tmp_path_factory):
    """``vmb run`` of the classify job on the tiny archive: ``(completed process, output dir,
    overrides)``."""
    out = str(tmp_path_factory.mktemp("cli") / "out")
    overrides = _overrides(tiny_archive, out)
    ray_tmp = tempfile.mkdtemp(prefix="vmb-cli-")  # short: Ray's unix sockets live below it
    try:
        proc = vmb_subprocess(
            "run", SPEC, *set_args(overrides), timeout=300, env=env_without_ray(RAY_TMPDIR=ray_tmp)
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return proc, out, overrides


def _one_error_line(err: str, command: str) -> str:
    """The error message of ``vmb COMMAND``: one line, plus indented detail lines when a spec
    has several problems (one per problem). Never a traceback."""
    assert "Traceback" not in err
    first, *details = err.strip().splitlines()
    assert first.startswith(f"vmb {command}: error: "), err
    assert all(line.startswith("  ") for line in details), err
    return " ".join([first, *details])


def test_run_prints_the_summary(job, tiny_archive):
    proc, out, overrides = job
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Traceback" not in proc.stderr
    # Ray's own notices stay in Ray's log files: the terminal shows the job's output only.
    for notice in ("UserWarning", "core_worker", "Token authentication", "Started a local Ray"):
        assert notice not in proc.stderr, proc.stderr[-5000:]
    spec, _ = load_spec(REPO / SPEC, overrides)
    probes = [probe_video(str(Path(tiny_archive) / name)) for name in TINY_ARCHIVE]
    expected = sum(len(plan_clips(p.num_frames, p.fps, spec.sampling)) for p in probes)
    assert read_table(out, "clips").num_rows == expected > 0

    rows = {}
    for line in proc.stdout.splitlines():
        if line.startswith("  "):
            key, _, value = line.strip().partition("  ")
            rows[key] = value.strip()
    assert rows["clips written"] == str(expected)
    assert rows["videos ok / failed"] == f"{len(TINY_ARCHIVE)} / 0"
    assert rows["tables"] == f"{out}/clips, {out}/videos"


def test_bad_spec_is_one_line_and_exit_2(vmb, tmp_path):
    proc = vmb_subprocess(
        "run",
        SPEC,
        "--set",
        "bogus=1",
        "--set",
        f"input={tmp_path}",
        "--set",
        f"output={tmp_path / 'out'}",
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "bogus" in _one_error_line(proc.stderr, "run")

    for args, words in (
        (["--set", "sampling.clip_len=eight"], "clip_len"),
        (["--set", "no-equals-sign"], "key=value"),
    ):
        code, out, err = vmb("run", SPEC, *args)
        assert code == 2 and out == "" and words in _one_error_line(err, "run")
    code, _, err = vmb("run", str(tmp_path / "missing.toml"))
    assert code == 2 and "missing.toml" in _one_error_line(err, "run")
    assert not (tmp_path / "out").exists()


def test_query_formats(job, vmb, tmp_path):
    _, out, _ = job
    clips = read_table(out, "clips")

    code, text, _ = vmb("query", "select count(*) as n from clips", "--output", out)
    assert code == 0
    assert text.splitlines()[0].strip() == "n" and text.splitlines()[2].strip() == str(
        clips.num_rows
    )
    assert text.rstrip().endswith("(1 row)")

    code, text, _ = vmb(
        "query",
        "select video_id, clip_index, labels from clips order by video_id, clip_index",
        "--output",
        out,
        "--format",
        "csv",
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert code == 0 and len(rows) == clips.num_rows
    expected = sorted(
        zip(clips.column("video_id").to_pylist(), clips.column("clip_index").to_pylist())
    )
    assert [(r["video_id"], int(r["clip_index"])) for r in rows] == expected
    assert all(len(json.loads(r["labels"])) == 5 for r in rows)  # nested values as JSON

    code, text, _ = vmb(
        "query",
        "select video_uri, status, num_clips from videos order by video_uri",
        "--output",
        out,
        "--format",
        "json",
    )
    videos = json.loads(text)
    assert code == 0 and [Path(v["video_uri"]).name for v in videos] == sorted(TINY_ARCHIVE)
    assert {v["status"] for v in videos} == {"ok"}
    assert sum(v["num_clips"] for v in videos) == clips.num_rows

    dest = tmp_path / "result.parquet"
    code, text, _ = vmb(
        "query", "select * from clips", "--output", out, "--format", "parquet", "--dest", str(dest)
    )
    table = pq.read_table(dest)
    assert code == 0 and text.strip() == f"{clips.num_rows} rows written to {dest}"
    assert table.num_rows == clips.num_rows and "feature" in table.column_names
    code, text, err = vmb("query", "select 1", "--output", out, "--format", "parquet")
    assert code == 2 and text == "" and "--dest" in _one_error_line(err, "query")


def test_sql_error_shows_duckdb_message(job):
    _, out, _ = job
    proc = vmb_subprocess("query", "select no_such_column from clips", "--output", out)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("vmb query: error: Binder Error") and "no_such_column" in first


def test_sql_writes_and_file_access_are_refused(job, vmb, tmp_path):
    _, out, _ = job
    leak = tmp_path / "leak.csv"
    secret = tmp_path / "secret.csv"
    secret.write_text("a,b\n1,2\n")
    for sql, why in (
        (f"copy clips to '{leak}'", "read-only"),
        ("create table t as select * from clips", "read-only"),
        ("insert into clips select * from clips", "read-only"),
        ("select 1; drop view clips", "read-only"),
        (f"select * from read_csv('{secret}')", "Permission Error"),
        (f"select * from read_parquet('{out}/clips/*/*.parquet')", "Permission Error"),
    ):
        code, text, err = vmb("query", sql, "--output", out)
        assert code == 2 and text == "", sql
        assert why in _one_error_line(err, "query"), sql
    assert not leak.exists()
    code, text, _ = vmb(
        "query", "select count(*) as n from clips", "--output", out, "--format", "json"
    )
    assert code == 0 and json.loads(text)[0]["n"] > 0  # the views are intact


def test_similar(job, vmb):
    _, out, _ = job
    clips = read_table(out, "clips").to_pylist()
    query_clip = clips[0]
    vid, index = query_clip["video_id"], query_clip["clip_index"]
    code, text, _ = vmb(
        "similar",
        "--output",
        out,
        "--video",
        vid,
        "--clip",
        str(index),
        "-k",
        "3",
        "--format",
        "json",
    )
    rows = json.loads(text)
    assert code == 0 and [r["rank"] for r in rows] == [1, 2, 3]
    assert all((r["video_id"], r["clip_index"]) != (vid, index) for r in rows)
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)
    assert {r["model"] for r in rows} == {query_clip["model"]}

    code, text, _ = vmb("similar", "--output", out, "--video", vid, "--clip", str(index), "-k", "2")
    assert code == 0 and text.split()[0] == "rank" and text.rstrip().endswith("(2 rows)")

    code, text, err = vmb("similar", "--output", out, "--video", "no-such-video", "--clip", "0")
    assert code == 2 and text == "" and "no-such-video" in _one_error_line(err, "similar")


def test_blocks_lists_every_block_with_its_parameter_count(vmb):
    code, text, _ = vmb("blocks")
    lines = text.splitlines()
    assert code == 0 and lines[0].split()[:2] == ["name", "params"]
    counts = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in lines[1:]}
    assert sorted(counts) == list_blocks()
    assert all(n > 0 for n in counts.values())
    for name in ("wrqe", "soft-split"):
        assert counts[name] == param_count(create_block(name))


def test_demo_names_what_is_in_the_sample_videos(ray_session, tmp_path, monkeypatch, capsys):
    """The quick-start command: sample archive from real photos → classify job → a query."""
    from pipeline.cli import main
    from pipeline.demo_archive import subject_matches

    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    rows = {
        line.split()[0]: line
        for line in out.splitlines()
        if line.split()[:1] and line.split()[0].endswith(".mp4")
    }
    assert {"cat.mp4", "coffee.mp4", "rocket.mp4"} <= set(rows)
    for video in ("cat.mp4", "coffee.mp4"):
        label = rows[video].split(None, 2)[2].rsplit(None, 1)[0]
        assert subject_matches(video, [label]), rows[video]
    assert (tmp_path / ".vmb" / "demo" / "output" / "_job.json").exists()

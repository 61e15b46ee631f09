"""Shards without Ray: cutting the listing, resume plans, the driver's completion tracking, and
the writer -> commit path on real Parquet files (retried batches, failed segments, markers)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.listing_source import iter_shard_blocks, listing_report_uri, shard_block
from pipeline.records import VideoProbe, VideoTask
from pipeline.rows import (
    SHARD,
    SHARD_BASE,
    SHARD_KEY,
    SHARD_VIDEOS,
    STATUS_SCHEMA,
    TASK_SCHEMA,
    model_column,
    probe_columns,
)
from pipeline.shard_commit import commit_shard, video_rows
from pipeline.shard_tracker import ShardTracker
from pipeline.shard_writer import write_parts
from pipeline.shards import (
    Shard,
    ShardMarker,
    content_key,
    iter_shards,
    plan_shard,
    shard_index,
    shard_name,
)
from tests.pipeline.jobs_util import clip_key_counts, read_table


def _tasks(n: int) -> list[VideoTask]:
    return [VideoTask(f"{i:020x}", f"/v/{i}.mp4", f"/v/{i}.mp4", 100 + i) for i in range(n)]


def test_shards_are_deterministic_runs_of_shard_size():
    shards = list(iter_shards(_tasks(7), 3))
    assert [len(s.tasks) for s in shards] == [3, 3, 1]
    assert [s.index for s in shards] == [0, 1, 2]
    again = list(iter_shards(_tasks(7), 3))
    assert [s.key for s in shards] == [s.key for s in again]
    assert len({s.key for s in shards}) == 3
    with pytest.raises(ValueError):
        list(iter_shards(_tasks(1), 0))


def test_shard_names_round_trip():
    assert shard_name(42) == "shard-000042"
    assert shard_index("shard-000042-model.parquet") == 42
    assert shard_index("part-1.parquet") is None and shard_index("shard-x") is None


def test_resume_plan_per_shard():
    shard = Shard(0, tuple(_tasks(3)))
    assert plan_shard(shard, None).todo == shard.tasks  # never committed: all of it
    done = ShardMarker(index=0, key=shard.key, videos=3, clips=9)
    work = plan_shard(shard, done)
    assert work.todo == () and work.skipped_videos == 3
    retry = ShardMarker(index=0, key=shard.key, videos=3, clips=6, retry=[shard.tasks[1].video_id])
    work = plan_shard(shard, retry)
    assert work.todo == (shard.tasks[1],) and work.merge_with_committed and work.skipped_videos == 2
    changed = ShardMarker(index=0, key=content_key(["other"]), videos=3, clips=9)
    work = plan_shard(shard, changed)
    assert work.todo == shard.tasks and not work.merge_with_committed


def test_listing_blocks_skip_committed_shards(tmp_path: Path):
    archive = tmp_path / "in"
    archive.mkdir()
    for i in range(5):
        (archive / f"v{i}.mp4").write_bytes(b"x" * (i + 1))
    (archive / "notes.txt").write_text("not a video")
    out = tmp_path / "out"
    first = list(iter_shard_blocks(str(archive), {}, 2, {}, str(out), "r1"))
    assert [b.num_rows for b in first] == [2, 2, 1] and first[0].schema == TASK_SCHEMA
    assert first[0].column(SHARD_VIDEOS).to_pylist() == [2, 2]
    report = json.loads(Path(listing_report_uri(str(out), "r1")).read_text())
    assert report["videos"] == 5 and report["shards"] == 3
    assert report["skipped_files"] == {"not a video": 1}
    key = first[1].column(SHARD_KEY)[0].as_py()
    markers = {1: ShardMarker(index=1, key=key, videos=2, clips=2)}
    second = list(iter_shard_blocks(str(archive), {}, 2, markers, str(out), "r2"))
    assert [b.column(SHARD)[0].as_py() for b in second] == [0, 2]
    report = json.loads(Path(listing_report_uri(str(out), "r2")).read_text())
    assert report["resumed_videos"] == 2 and report["resumed_shards"] == 1


def test_shard_block_is_none_when_nothing_is_left():
    shard = Shard(3, tuple(_tasks(2)))
    block, kept = shard_block(shard, ShardMarker(index=3, key=shard.key, videos=2, clips=4))
    assert block is None and kept == 2


def _status(
    video: str,
    segment: int,
    clips: list[int],
    *,
    shard: int = 0,
    videos: int = 1,
    segments: int = 1,
    planned: int = 2,
    failed: bool = False,
    emitted: int = 0,
    parts: tuple[str, ...] = ("ledger/p.parquet",),
) -> pa.Table:
    row = {
        SHARD: shard,
        SHARD_VIDEOS: videos,
        SHARD_BASE: False,
        SHARD_KEY: "k",
        "video_id": video,
        "segment_index": segment,
        "num_segments": segments,
        "clips_in_segment": planned,
        "clip_indices": clips,
        "failed": failed,
        "emitted_before_error": emitted,
        "parts": list(parts),
        "done_at": 5.0,
    }
    return pa.Table.from_pylist([row], schema=STATUS_SCHEMA)


def test_tracker_completes_a_shard_once_every_segment_is_in():
    tracker = ShardTracker()
    assert tracker.add(_status("a", 0, [0], videos=2, segments=2)) == []
    assert tracker.add(_status("a", 0, [0], videos=2, segments=2)) == []  # a retried batch
    assert (
        tracker.add(_status("a", 0, [1], videos=2, segments=2, parts=("ledger/q.parquet",))) == []
    )
    assert tracker.add(_status("a", 1, [2, 3], videos=2, segments=2)) == []
    ready = tracker.add(_status("b", 0, [], videos=2, planned=3, failed=True, emitted=0))
    assert [r.index for r in ready] == [0]
    assert ready[0].parts == ["ledger/p.parquet", "ledger/q.parquet"] and ready[0].incomplete == {}
    assert tracker.clips_seen == 4 and tracker.open == {}
    assert tracker.add(_status("a", 0, [0], videos=2, segments=2)) == []  # late repeat: ignored
    assert tracker.open == {}


def test_tracker_waits_for_clips_emitted_before_an_error():
    tracker = ShardTracker()
    assert tracker.add(_status("a", 0, [], planned=4, failed=True, emitted=2)) == []
    assert tracker.add(_status("a", 0, [0])) == []
    assert len(tracker.add(_status("a", 0, [1]))) == 1


def test_tracker_reports_what_never_came_back():
    tracker = ShardTracker()
    tracker.add(_status("a", 0, [0, 1], videos=2, segments=3))
    ready = tracker.close_all()
    assert len(ready) == 1 and "2 of 3 segments" in ready[0].incomplete["a"]


# -- writer -> commit on real files ---------------------------------------------------------------
_PROBE = VideoProbe(duration_s=2.0, fps=12.0, num_frames=24, width=64, height=48, codec="h264")


def _clip_rows(
    video: str,
    segment: int,
    clips: list[int],
    *,
    ok: bool = True,
    error: str | None = None,
    emitted: int = 0,
    model_error: str | None = None,
):
    rows = []
    for c in clips if ok else [-1]:
        rows.append(
            {
                "video_id": video,
                "video_uri": f"s3://user:secret@bucket/{video}.mp4",
                "size": 10,
                "label": None,
                SHARD: 0,
                SHARD_VIDEOS: 2,
                SHARD_BASE: False,
                SHARD_KEY: "key0",
                **probe_columns(_PROBE),
                "segment_index": segment,
                "num_segments": 2,
                "clips_in_segment": 2,
                "ok": ok,
                "clip_index": c,
                "start_frame": max(c, 0) * 4,
                "end_frame": max(c, 0) * 4 + 3,
                "start_s": c / 3,
                "end_s": (c + 1) / 3,
                "frame_indices": [0, 1],
                "frame_bytes": [0, 0],
                "decode_s": 0.5,
                "decode_backend": "decord" if ok else "",
                "status": "ok" if ok else "error",
                "error_type": "" if ok else error,
                "error_message": "" if ok else f"{error} here",
                "emitted_before_error": emitted,
                model_column("m", "labels"): ["cat"],
                model_column("m", "scores"): [0.9],
                model_column("m", "media_uri"): None,
                model_column("m", "error"): model_error,
                model_column("m", "infer_s"): 0.25,
                model_column("m", "done_at"): 7.0,
            }
        )
    table = pa.Table.from_pylist(rows)
    feature = pa.FixedSizeListArray.from_arrays(
        pa.array([1.0, 2.0, 3.0] * len(rows), pa.float32()), 3
    )
    metrics = pa.array([[("x", 1.0)]] * len(rows), pa.map_(pa.string(), pa.float64()))
    table = table.append_column(model_column("m", "feature"), feature)
    return table.append_column(model_column("m", "metrics"), metrics)


def _cat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive")


def _write(out: Path, table: pa.Table) -> list[str]:
    status = write_parts(
        table,
        output=str(out),
        storage_options={},
        job_id="job",
        models=["m"],
        versions={"m": "builtin"},
    )
    return [p for ps in status.column("parts").to_pylist() for p in ps]


def _commit(out: Path, parts: list[str], *, run: str, merge: bool) -> dict:
    return commit_shard(
        run=run,
        output=str(out),
        storage_options={},
        index=0,
        key="key0",
        parts=parts,
        models=["m"],
        merge_with_committed=merge,
    )


def test_writer_and_commit_publish_one_shard_exactly_once(tmp_path: Path):
    out = tmp_path / "out"
    parts = _write(out, _clip_rows("a", 0, [0, 1]))
    parts += _write(out, _clip_rows("a", 0, [0, 1]))  # the same batch again: a retried task
    parts += _write(
        out,
        _cat(
            [
                _clip_rows("a", 1, [2, 3], model_error=None),
                _clip_rows("b", 0, [0]),
                _clip_rows("b", 0, [], ok=False, error="Truncated", emitted=1),
            ]
        ),
    )
    counts = _commit(out, sorted(set(parts)), run="r1", merge=False)
    clips = read_table(str(out), "clips")
    assert set(clip_key_counts(clips).values()) == {1}
    assert sorted(clips.column("clip_index").to_pylist()) == [0, 1, 2, 3]  # b's clip dropped
    assert set(clips.column("video_id").to_pylist()) == {"a"}
    assert "secret" not in "".join(clips.column("video_uri").to_pylist())
    assert pq.read_schema(out / "clips" / "shard-000000-m.parquet").field(
        "feature"
    ).type == pa.list_(pa.float32(), 3)
    videos = {v["video_id"]: v for v in read_table(str(out), "videos").to_pylist()}
    assert videos["a"]["status"] == "ok" and videos["a"]["num_clips"] == 4
    assert (
        videos["a"]["decode_s"] == pytest.approx(4 * 0.5)
        and videos["a"]["decode_backend"] == "decord"
    )
    assert videos["b"]["status"] == "error" and videos["b"]["error_type"] == "Truncated"
    assert videos["b"]["num_clips"] == 0 and videos["b"]["width"] == 64
    marker = json.loads((out / "_shards" / "shard-000000.json").read_text())
    assert marker["videos"] == 2 and marker["clips"] == 4 and marker["key"] == "key0"
    assert marker["failures_by_type"] == {"Truncated": 1} and marker["retry"] == []
    assert counts["videos_processed"] == 2 and counts["labels"] == {"cat": 4}
    assert not (out / "_staging" / "shard-000000").exists()
    # A retry of the same commit (its node died before it returned): the parts are gone, the
    # marker of this run holds what it counted.
    again = _commit(out, sorted(set(parts)), run="r1", merge=False)
    assert {k: again[k] for k in counts if k != "marker"} == {
        k: v for k, v in counts.items() if k != "marker"
    }
    assert set(clip_key_counts(read_table(str(out), "clips")).values()) == {1}


def test_model_error_fails_the_segment_and_is_retried_on_resume(tmp_path: Path):
    out = tmp_path / "out"
    parts = _write(
        out,
        _cat(
            [_clip_rows("a", 0, [0, 1], model_error="RuntimeError: x"), _clip_rows("b", 0, [0, 1])]
        ),
    )
    _commit(out, parts, run="r1", merge=False)
    marker = json.loads((out / "_shards" / "shard-000000.json").read_text())
    assert marker["retry"] == ["a"] and marker["failures_by_type"] == {"ModelError": 1}
    # the resume redoes "a" and merges it with the committed rows of "b"
    parts = _write(out, _clip_rows("a", 0, [0, 1]))
    _commit(out, parts, run="r2", merge=True)
    clips = read_table(str(out), "clips")
    assert set(clip_key_counts(clips).values()) == {1} and clips.num_rows == 4
    assert {v["status"] for v in read_table(str(out), "videos").to_pylist()} == {"ok"}
    assert json.loads((out / "_shards" / "shard-000000.json").read_text())["retry"] == []


def test_videos_never_seen_are_recorded_as_incomplete(tmp_path: Path):
    from pipeline.shard_commit import Relist

    archive = tmp_path / "in"
    archive.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (archive / name).write_bytes(b"x")
    out = tmp_path / "out"
    commit_shard(
        run="r1",
        output=str(out),
        storage_options={},
        index=0,
        key="k",
        parts=[],
        models=["m"],
        merge_with_committed=False,
        incomplete={},
        relist=Relist(str(archive), {}, 10),
    )
    videos = read_table(str(out), "videos").to_pylist()
    assert len(videos) == 2 and {v["error_type"] for v in videos} == {"Incomplete"}


def test_video_rows_take_the_first_error_by_segment():
    ledger = _cat(
        [_clip_rows("a", 1, [], ok=False, error="DecodeTimeout"), _clip_rows("a", 0, [0, 1])]
    )
    from pipeline.shard_writer import ledger_rows

    rows, failed = video_rows(ledger_rows(ledger, ["m"]))
    assert failed == {("a", 1)} and rows[0]["error_type"] == "DecodeTimeout"
    assert rows[0]["num_clips"] == 2

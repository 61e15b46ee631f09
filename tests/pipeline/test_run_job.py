"""The main job end to end on real components: Ray Data, decord, Parquet, MLflow."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.archive import list_archive
from pipeline.job import OutputConflictError, run_job
from pipeline.models import ModelConfigError
from pipeline.probe import probe_video
from pipeline.sampling import plan_clips
from pipeline.spec import SpecError, parse_spec
from tests.pipeline.jobs_util import TINY_SAMPLING, clip_key_counts, read_table, tiny_spec
from tests.videos import make_manifest, make_tar, make_video, make_zip


def _expected_clips(paths):
    spec = tiny_spec("x", "y")
    return sum(
        len(plan_clips(probe_video(p).num_frames, probe_video(p).fps, spec.sampling)) for p in paths
    )


@pytest.fixture
def archive(tiny_archive, tmp_path):
    dst = tmp_path / "archive"
    shutil.copytree(tiny_archive, dst)
    return dst


def test_classify_folder_writes_one_row_per_clip(ray_session, archive, tmp_path):
    out = tmp_path / "out"
    result = run_job(tiny_spec(str(archive), str(out)))
    videos = sorted(str(p) for p in archive.iterdir() if p.suffix in (".mp4", ".mkv"))
    clips = read_table(str(out), "clips")
    counts = clip_key_counts(clips)
    assert set(counts.values()) == {1}
    assert clips.num_rows == _expected_clips(videos) == result.summary["clips"]
    assert result.summary["skipped_files"] == {"not a video": 1}
    row = clips.slice(0, 1).to_pylist()[0]
    assert len(row["labels"]) == 5 and len(row["scores"]) == 5 and len(row["feature"]) == 1280
    assert row["scores"] == sorted(row["scores"], reverse=True)
    assert row["end_s"] > row["start_s"] and row["end_frame"] >= row["start_frame"]
    vids = read_table(str(out), "videos").to_pylist()
    assert len(vids) == 3 and {v["status"] for v in vids} == {"ok"}
    assert all(v["num_clips"] >= 1 and v["codec"] and v["fps"] > 0 for v in vids)
    job = json.loads((out / "_job.json").read_text())
    assert job["job_id"] == result.job_id and job["counts"]["clips"] == clips.num_rows
    assert result.exit_code == 0


def test_rerun_resumes_and_never_duplicates(ray_session, archive, tmp_path):
    out = tmp_path / "out"
    spec = tiny_spec(str(archive), str(out))
    first = run_job(spec)
    second = run_job(spec)
    assert second.summary["resumed_videos_skipped"] == 3 and second.summary["clips"] == 0
    assert first.summary["first_clip_s"] > 0 and second.summary["first_clip_s"] is None
    clips = read_table(str(out), "clips")
    assert clips.num_rows == first.summary["clips"]
    assert set(clip_key_counts(clips).values()) == {1}
    assert read_table(str(out), "videos").num_rows == 3


def test_changed_spec_on_same_output_is_refused(ray_session, archive, tmp_path):
    out = tmp_path / "out"
    run_job(tiny_spec(str(archive), str(out)))
    other = tiny_spec(str(archive), str(out), sampling={"clip_len": 2})
    with pytest.raises(OutputConflictError):
        run_job(other)


def test_tar_zip_and_manifest_inputs(ray_session, tmp_path):
    a = make_video(tmp_path / "a.mp4", num_frames=16, seed=1)
    b = make_video(tmp_path / "b.mp4", num_frames=20, seed=2)
    tar = make_tar(tmp_path / "shard.tar", {"dir/a.mp4": a, "b.mp4": b, "readme.txt": b"hi"})
    zf = make_zip(tmp_path / "shard.zip", {"x/a.mp4": a})
    manifest = make_manifest(tmp_path / "list.csv", [a, "b.mp4"], labels=["one", "two"])
    listed = list_archive(manifest).tasks
    assert [t.label for t in listed] == ["one", "two"]
    for name, uri, n in (("tar", tar, 2), ("zip", zf, 1), ("manifest", manifest, 2)):
        out = tmp_path / f"out-{name}"
        result = run_job(tiny_spec(uri, str(out)))
        vids = read_table(str(out), "videos").to_pylist()
        assert len(vids) == n and {v["status"] for v in vids} == {"ok"}, vids
        clips = read_table(str(out), "clips")
        assert set(clip_key_counts(clips).values()) == {1}
        assert clips.num_rows == result.summary["clips"] > 0
        if name in ("tar", "zip"):
            assert all("#" in u for u in clips.column("video_uri").to_pylist())


def test_video_ids_are_stable_across_listings(tiny_archive):
    first = {t.video_uri: t.video_id for t in list_archive(tiny_archive).tasks}
    second = {t.video_uri: t.video_id for t in list_archive(tiny_archive).tasks}
    assert first == second and len(set(first.values())) == 3


def test_two_models_share_one_decode(ray_session, tmp_path):
    make_video(tmp_path / "in" / "v.mp4", num_frames=24) if (
        tmp_path / "in"
    ).mkdir() is None else None
    out = tmp_path / "out"
    models = [
        {"name": "frame-average", "batch_size": 2},
        {"name": "frame-average", "key": "emb", "task": "embed", "batch_size": 3},
    ]
    run_job(tiny_spec(str(tmp_path / "in"), str(out), models=models))
    clips = read_table(str(out), "clips")
    counts = clip_key_counts(clips)
    assert set(counts.values()) == {1}
    assert {m for _, _, m in counts} == {"frame-average", "emb"}
    emb = [r for r in clips.to_pylist() if r["model"] == "emb"]
    assert all(r["labels"] == [] and len(r["feature"]) == 1280 for r in emb)


def test_long_video_is_split_into_segments(ray_session, tmp_path):
    (tmp_path / "in").mkdir()
    make_video(tmp_path / "in" / "long.mp4", num_frames=120, fps=12.0)
    out = tmp_path / "out"
    result = run_job(tiny_spec(str(tmp_path / "in"), str(out), sampling={"segment_s": 2.0}))
    clips = read_table(str(out), "clips")
    indices = sorted(clips.column("clip_index").to_pylist())
    assert (
        indices == list(range(len(indices))) and len(indices) == result.summary["clips"] == 17
    )  # starts 0, 7, ..., 112
    assert result.summary["segments"] == 5  # 10 s of video in 2 s segments
    assert [p.name for p in (out / "clips").iterdir()] == ["shard-000000-frame-average.parquet"]


def test_uniform_num_clips(ray_session, archive, tmp_path):
    out = tmp_path / "out"
    run_job(tiny_spec(str(archive), str(out), sampling={"num_clips": 2}))
    clips = read_table(str(out), "clips")
    assert clips.num_rows == 6


def test_bad_spec_fails_before_any_work(tmp_path):
    with pytest.raises(SpecError, match="unknown key"):
        parse_spec({"input": "x", "output": "y", "models": [{"name": "frame-average"}], "bogus": 1})
    with pytest.raises(SpecError, match="clip_len"):
        parse_spec(
            {
                "input": "x",
                "output": "y",
                "models": [{"name": "frame-average"}],
                "sampling": {"clip_len": "eight"},
            }
        )
    with pytest.raises(ModelConfigError, match="needs weights"):
        run_job(tiny_spec(str(tmp_path), str(tmp_path / "o"), models=[{"name": "ifnet-v4"}]))
    assert not (tmp_path / "o").exists()


def test_mlflow_run_records_the_job(ray_session, archive, tmp_path, isolated_env):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    spec = tiny_spec(
        str(archive),
        str(out),
        mlflow={"enabled": True, "tracking_uri": isolated_env, "experiment": "test-run-job"},
    )
    result = run_job(spec, spec_text="# spec\n")
    run = MlflowClient(isolated_env).get_run(result.run_id)
    assert run.data.metrics["clips"] == result.summary["clips"]
    assert run.data.metrics["videos_ok"] == 3
    assert run.data.params["sampling.clip_len"] == str(TINY_SAMPLING["clip_len"])
    names = {a.path for a in MlflowClient(isolated_env).list_artifacts(result.run_id)}
    assert {"summary.json", "spec.toml", "throughput.png", "label_histogram.png"} <= names


def test_scaled_out_actors_probe_and_write_several_tasks_at_once(ray_session, tmp_path):
    """Two decode and two model actors: two probe and two writer tasks in flight, over three
    probe blocks of videos; every video and clip once."""
    import os

    root = tmp_path / "in"
    root.mkdir()
    made = [make_video(root / f"src{i}.mp4", num_frames=24, seed=i) for i in range(2)]
    for i in range(70):  # distinct names, distinct video ids: 70 videos, three probe blocks
        os.link(made[i % 2], root / f"v{i:03d}.mp4")
    for path in made:
        os.unlink(path)
    out = tmp_path / "out"
    spec = tiny_spec(
        str(root),
        str(out),
        models=[{"name": "frame-average", "batch_size": 4, "actors": 2}],
        decode={"actors": 2},
    )
    result = run_job(spec)
    vids = read_table(str(out), "videos").to_pylist()
    assert len(vids) == 70 and {v["status"] for v in vids} == {"ok"}
    clips = read_table(str(out), "clips")
    assert set(clip_key_counts(clips).values()) == {1}
    assert clips.num_rows == 70 * _expected_clips([root / "v000.mp4"]) == result.summary["clips"]

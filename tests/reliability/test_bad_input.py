"""Bad input is recorded, never fatal.

One job runs over an archive that mixes good videos with every kind of bad input we know of;
each bad one must end as a ``videos`` row with a specific ``error_type``, and every good one
must have all its planned clips. Focused tests then pin the probe, decode and listing
behaviour on single files without Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline import errors
from pipeline.archive import list_archive
from pipeline.decode import iter_clips, open_reader
from pipeline.job import run_job
from pipeline.probe import probe_video
from pipeline.sampling import plan_clips
from pipeline.source import read_source
from tests.pipeline.jobs_util import clip_key_counts, read_table, tiny_spec
from tests.reliability import badfiles
from tests.videos import make_vfr_video, make_video, vfr_timestamps

SIZE = (64, 64)  # tiny_spec's sampling size
BIG = (3840, 2160)

# Per input (file name, or "shard#member"): the expected (status, error_type) of its videos row.
EXPECTED = {
    "good.mp4": ("ok", None),
    "good_ffv1.mkv": ("ok", None),
    "zero.mp4": ("error", "EmptyFile"),
    "random.mp4": ("error", "UnrecognizedFormat"),
    "text.mp4": ("error", "UnrecognizedFormat"),
    "cut_moov_at_end.mp4": ("error", "Truncated"),
    "cut_faststart.mp4": ("error", "Truncated"),
    "bad_sps.mp4": ("error", "UndecodableStream"),
    "audio_only.mp4": ("error", "NoVideoStream"),
    "audio_only.mkv": ("error", "NoVideoStream"),
    "one_frame.mp4": ("ok", None),
    "short.mp4": ("ok", None),
    "vfr.mp4": ("ok", None),
    "odd_33x17.mp4": ("ok", None),
    "big_4k.mp4": ("ok", None),
    "damaged.tar#a.mp4": ("ok", None),
    "damaged.tar#@DAMAGE": ("error", "CorruptArchive"),
    "damaged.tar#c.mp4": ("ok", None),
    "cut.tar#a.mp4": ("ok", None),
    "cut.tar#b.mp4": ("error", "Truncated"),
    "escape.tar#../x.mp4": ("error", "UnsafeMemberName"),
    "escape.tar#/abs/x.mp4": ("error", "UnsafeMemberName"),
    "escape.tar#fine.mp4": ("ok", None),
    "corrupt.zip#": ("error", "CorruptArchive"),
    "crc.zip#a.mp4": ("ok", None),
    "crc.zip#b.mp4": ("error", "CorruptArchive"),
}


def _name(video_uri: str, root: Path) -> str:
    rel = os.path.relpath(video_uri.split("#", 1)[0], root)
    return rel + ("#" + video_uri.split("#", 1)[1] if "#" in video_uri else "")


def _make_bad_archive(root: Path) -> Path:
    root.mkdir()
    g = make_video(root / "good.mp4", num_frames=24, seed=1)
    make_video(root / "good_ffv1.mkv", num_frames=20, size=(80, 60), fps=10.0, codec="ffv1")
    badfiles.make_zero_byte(root / "zero.mp4")
    badfiles.make_random_bytes(root / "random.mp4")
    badfiles.make_text(root / "text.mp4")
    (root / "notes.txt").write_text("not a video: skipped and counted, never a row\n")
    badfiles.make_truncated_mp4(root / "cut_moov_at_end.mp4", faststart=False)
    badfiles.make_truncated_mp4(root / "cut_faststart.mp4", faststart=True)
    badfiles.make_corrupt_sps_mp4(root / "bad_sps.mp4")
    badfiles.make_audio_only(root / "audio_only.mp4")
    badfiles.make_audio_only(root / "audio_only.mkv")
    make_video(root / "one_frame.mp4", num_frames=1)
    make_video(root / "short.mp4", num_frames=5)  # one clip spans 7 frames
    make_vfr_video(root / "vfr.mp4", num_frames=24)
    make_video(root / "odd_33x17.mp4", num_frames=12, size=(33, 17))
    badfiles.make_large_frame_video(root / "big_4k.mp4", num_frames=8, size=BIG)
    members = {"a.mp4": g, "b.mp4": g, "c.mp4": g}
    badfiles.make_damaged_tar(root / "damaged.tar", members, damage=1)
    badfiles.make_cut_tar(root / "cut.tar", members, cut_in="b.mp4")
    (root / "escape.tar").write_bytes(
        badfiles.tar_bytes_with_names(
            {
                "../x.mp4": Path(g).read_bytes(),
                "/abs/x.mp4": Path(g).read_bytes(),
                "fine.mp4": Path(g).read_bytes(),
            }
        )
    )
    badfiles.make_corrupt_zip(root / "corrupt.zip", {"a.mp4": g})
    badfiles.make_bad_crc_zip(root / "crc.zip", {"a.mp4": g, "b.mp4": g}, damage="b.mp4")
    return root


@pytest.fixture(scope="module")
def bad_archive(tmp_path_factory) -> Path:
    return _make_bad_archive(tmp_path_factory.mktemp("reliability") / "archive")


@pytest.fixture(scope="module")
def mixed_job(ray_session, bad_archive, tmp_path_factory):
    """One job over the whole bad archive; below its error budget."""
    out = tmp_path_factory.mktemp("reliability-out") / "out"
    result = run_job(tiny_spec(str(bad_archive), str(out), max_error_fraction=0.9))
    return result, out


def _planned_clips(task) -> int:
    sampling = tiny_spec("x", "y").sampling
    probe = probe_video(read_source(task))
    return len(plan_clips(probe.num_frames, probe.fps, sampling))


# -- the job ---------------------------------------------------------------------------------


def test_every_input_gets_one_row_with_a_specific_error(mixed_job, bad_archive):
    result, out = mixed_job
    rows = read_table(str(out), "videos").to_pylist()
    seen = {}
    for row in rows:
        name = _name(row["video_uri"], bad_archive)
        if name.startswith("damaged.tar#@"):
            name = "damaged.tar#@DAMAGE"
        assert name not in seen, f"two rows for {name}"
        seen[name] = (row["status"], row["error_type"])
        if row["status"] != "ok":
            assert row["error_message"], row
    assert seen == EXPECTED
    s = result.summary
    n_bad = sum(1 for status, _ in EXPECTED.values() if status != "ok")
    assert s["videos"] == s["videos_processed"] == len(EXPECTED)
    assert s["videos_failed"] == n_bad and s["videos_ok"] == len(EXPECTED) - n_bad
    assert s["skipped_files"] == {"not a video": 1}  # notes.txt: counted, not a row
    assert s["within_error_budget"] and result.exit_code == 0  # 12/26 failed, budget 0.9


def test_good_videos_have_every_planned_clip(mixed_job, bad_archive):
    result, out = mixed_job
    clips = read_table(str(out), "clips")
    counts = clip_key_counts(clips)
    assert set(counts.values()) == {1}  # exactly one row per (video, clip, model)
    per_video = {}
    for video_id, _, _ in counts:
        per_video[video_id] = per_video.get(video_id, 0) + 1
    videos = {r["video_id"]: r for r in read_table(str(out), "videos").to_pylist()}
    expected = {}
    for task in list_archive(str(bad_archive)).tasks:
        if videos[task.video_id]["status"] == "ok":
            expected[task.video_id] = _planned_clips(task)
            assert videos[task.video_id]["num_clips"] == expected[task.video_id]
    assert per_video == expected  # and no clip of any failed video (truncated ones included)
    assert result.summary["clips"] == clips.num_rows == sum(expected.values())


def test_short_one_frame_odd_and_large_videos(mixed_job, bad_archive):
    _, out = mixed_job
    videos = {
        _name(r["video_uri"], bad_archive): r for r in read_table(str(out), "videos").to_pylist()
    }
    clips = read_table(str(out), "clips").to_pylist()
    by_name = {}
    for c in clips:
        by_name.setdefault(_name(c["video_uri"], bad_archive), []).append(c)
    # Padding: one clip, its frame indices clamped to the last frame.
    for name, last in (("one_frame.mp4", 0), ("short.mp4", 4)):
        (clip,) = by_name[name]
        assert (clip["start_frame"], clip["end_frame"]) == (0, last)
        assert videos[name]["num_clips"] == 1
    assert (videos["odd_33x17.mp4"]["width"], videos["odd_33x17.mp4"]["height"]) == (33, 17)
    big = videos["big_4k.mp4"]
    assert (big["width"], big["height"], big["num_clips"]) == (*BIG, 1)


def test_vfr_clip_times_are_the_frames_presentation_times(mixed_job, bad_archive):
    _, out = mixed_job
    times = vfr_timestamps(24)
    clips = sorted(
        (
            c
            for c in read_table(str(out), "clips").to_pylist()
            if _name(c["video_uri"], bad_archive) == "vfr.mp4"
        ),
        key=lambda c: c["clip_index"],
    )
    assert len(clips) == 3
    for c in clips:
        assert c["start_s"] == pytest.approx(times[c["start_frame"]], abs=2e-3)
        assert c["end_s"] == pytest.approx(times[c["end_frame"] + 1], abs=2e-3)
    # The nominal plan (frame / average fps) would be off by tens of milliseconds here.
    fps = read_table(str(out), "videos").to_pylist()
    vfr_fps = next(v["fps"] for v in fps if _name(v["video_uri"], bad_archive) == "vfr.mp4")
    assert any(abs(c["start_s"] - c["start_frame"] / vfr_fps) > 0.02 for c in clips)


def test_nothing_is_written_outside_the_output(mixed_job, bad_archive):
    _, out = mixed_job
    written = {p.relative_to(out).parts[0] for p in out.rglob("*") if p.is_file()}
    assert written <= {"clips", "videos", "_shards", "_job.json"}
    assert all(
        p.suffix == ".parquet" for p in out.rglob("*") if p.parent.name in ("clips", "videos")
    )
    for base in (out.parent, bad_archive.parent, bad_archive):
        assert not (base / "x.mp4").exists()
    assert not Path("/abs/x.mp4").exists()
    assert sorted(os.listdir(bad_archive.parent)) == ["archive"]


def test_skip_policy_and_error_budget(ray_session, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    make_video(root / "one_frame.mp4", num_frames=1)
    make_video(root / "short.mp4", num_frames=5)
    make_video(root / "good.mp4", num_frames=16)
    (root / "empty.mp4").write_bytes(b"")
    out = tmp_path / "out"
    result = run_job(
        tiny_spec(str(root), str(out), sampling={"short_video": "skip"}, max_error_fraction=0.2)
    )
    rows = {os.path.basename(r["video_uri"]): r for r in read_table(str(out), "videos").to_pylist()}
    for name in ("one_frame.mp4", "short.mp4"):
        assert (rows[name]["status"], rows[name]["error_type"], rows[name]["num_clips"]) == (
            "skipped",
            "TooShort",
            0,
        )
    assert rows["good.mp4"]["status"] == "ok" and rows["good.mp4"]["num_clips"] == 2
    s = result.summary
    assert s["videos_by_status"] == {"skipped": 2, "ok": 1, "error": 1}
    # skipped videos follow the user's policy: they are not failures
    assert s["videos_failed"] == 1 and s["videos_skipped"] == 2
    assert s["error_fraction"] == pytest.approx(1 / 4)
    assert s["within_error_budget"] is False and result.exit_code == 1
    job = json.loads((out / "_job.json").read_text())
    assert job["counts"]["within_error_budget"] is False


# -- probe, decode and listing on single files (no Ray) ---------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        n
        for n, (status, _) in EXPECTED.items()
        if status != "ok" and "#" not in n and n != "bad_sps.mp4"
    ],
)
def test_probe_rejects_with_specific_type(bad_archive, name):
    task = next(t for t in list_archive(str(bad_archive / name)).tasks)
    with pytest.raises(errors.VideoError) as caught:
        probe_video(read_source(task))
    assert caught.value.error_type == EXPECTED[name][1], caught.value


def test_truncated_faststart_is_caught_before_decoding(tmp_path):
    # FFmpeg opens it and decodes up to the cut; the probe must refuse it from the box structure.
    path = badfiles.make_truncated_mp4(tmp_path / "cut.mp4", faststart=True, keep=0.8)
    import av

    with av.open(path) as container:
        assert container.streams.video[0].frames == 30
    with pytest.raises(errors.TruncatedError, match="mdat"):
        probe_video(path)
    with open(path, "rb") as f:  # in-memory sources (archive members, object storage) alike
        import io

        with pytest.raises(errors.TruncatedError):
            probe_video(io.BytesIO(f.read()))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_undecodable_stream(bad_archive, backend):
    path = str(bad_archive / "bad_sps.mp4")
    probe = probe_video(path)  # the header is fine
    clips = plan_clips(probe.num_frames, probe.fps, tiny_spec("x", "y").sampling)
    with pytest.raises(errors.UndecodableStreamError):
        list(iter_clips(open_reader(backend, path, probe, SIZE), clips, SIZE))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_vfr_times_from_both_backends(tmp_path, backend):
    path = make_vfr_video(tmp_path / "vfr.mkv", num_frames=20)
    times = vfr_timestamps(20)
    probe = probe_video(path)
    clips = plan_clips(probe.num_frames, probe.fps, tiny_spec("x", "y").sampling)
    got = list(iter_clips(open_reader(backend, path, probe, SIZE), clips, SIZE))
    assert len(got) == len(clips) == 2
    for clip, frames in got:
        assert frames.shape == (4, *SIZE, 3)
        assert clip.start_s == pytest.approx(times[clip.start_frame], abs=2e-3)
        assert clip.end_s == pytest.approx(times[clip.end_frame + 1], abs=2e-3)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decode_width_decord_mis_shapes(tmp_path, backend):
    # A decode width of 48 makes decord 0.6 return mis-shaped frames; the reader avoids it.
    path = make_video(tmp_path / "v.mp4", num_frames=8, size=(96, 72))
    probe = probe_video(path)
    clips = plan_clips(probe.num_frames, probe.fps, tiny_spec("x", "y").sampling)
    reader = open_reader(backend, path, probe, (36, 48), resize="stretch")
    ((_, frames),) = list(iter_clips(reader, clips, (36, 48)))
    assert frames.shape == (4, 36, 48, 3)


def test_large_frames_are_never_materialised_at_full_size(bad_archive):
    """Decode the 4K video in a fresh process: the Python heap (numpy included) never holds even
    a quarter of one full-size RGB frame, and peak RSS grows by less than one clip's frames at
    full size would take (4 x 24.9 MB)."""
    code = f"""
import json, resource, tracemalloc
from pipeline.decode import iter_clips, open_reader
from pipeline.probe import probe_video
from pipeline.sampling import plan_clips
from tests.pipeline.jobs_util import tiny_spec
path = {str(bad_archive / "big_4k.mp4")!r}
probe = probe_video(path)
clips = plan_clips(probe.num_frames, probe.fps, tiny_spec("x", "y").sampling)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
shapes = [f.shape for _, f in iter_clips(open_reader("decord", path, probe, (64, 64)),
                                          clips, (64, 64))]
peak = tracemalloc.get_traced_memory()[1]
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({{"shapes": shapes, "peak": peak, "grown": grown}}))
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    full_frame = BIG[0] * BIG[1] * 3
    assert report["shapes"] == [[4, 64, 64, 3]]
    assert report["peak"] < full_frame / 4, report
    assert report["grown"] < 4 * full_frame, report


def test_listing_records_damaged_shards(bad_archive):
    tasks = {_name(t.video_uri, bad_archive): t for t in list_archive(str(bad_archive)).tasks}
    damage = next(n for n in tasks if n.startswith("damaged.tar#@"))
    assert tasks[damage].problem.startswith("CorruptArchive:")
    assert "1 later member(s) recovered" in tasks[damage].problem
    assert tasks["damaged.tar#a.mp4"].problem is None and tasks["damaged.tar#c.mp4"].problem is None
    assert tasks["cut.tar#b.mp4"].problem.startswith("Truncated:")
    assert tasks["escape.tar#../x.mp4"].problem.startswith("UnsafeMemberName:")
    assert tasks["corrupt.zip#"].problem.startswith("CorruptArchive:")
    for name in (damage, "cut.tar#b.mp4", "escape.tar#/abs/x.mp4", "corrupt.zip#", "crc.zip#b.mp4"):
        with pytest.raises(errors.VideoError) as caught:
            read_source(tasks[name])
        assert caught.value.error_type == EXPECTED.get(name, EXPECTED["damaged.tar#@DAMAGE"])[1]


def test_corrupt_deflate_member_is_a_typed_error(tmp_path):
    good = make_video(tmp_path / "g.mp4", num_frames=8)
    path = badfiles.make_bad_crc_zip(
        tmp_path / "d.zip",
        {"a.mp4": good, "b.mp4": good},
        damage="b.mp4",
        compression=zipfile.ZIP_DEFLATED,
    )
    tasks = {t.member: t for t in list_archive(path).tasks}
    assert isinstance(read_source(tasks["a.mp4"]).getvalue(), bytes)
    with pytest.raises(errors.CorruptArchiveError):
        read_source(tasks["b.mp4"])


def test_unreadable_file_in_a_folder_is_a_row_not_a_failed_listing(tmp_path):
    make_video(tmp_path / "good.mp4", num_frames=8)
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    tasks = {os.path.basename(t.video_uri): t for t in list_archive(str(tmp_path)).tasks}
    assert tasks["good.mp4"].problem is None
    with pytest.raises(errors.SourceReadError):
        read_source(tasks["dangling.mp4"])


def test_error_types_are_documented():
    doc = errors.__doc__
    names = set()
    pending = [errors.VideoError]
    while pending:
        cls = pending.pop()
        names.add(cls.error_type)
        pending.extend(cls.__subclasses__())
    names.discard("VideoError")
    assert all(f"\n{n} " in doc for n in names), sorted(n for n in names if f"\n{n} " not in doc)
    assert errors.error_class("Truncated") is errors.TruncatedError
    assert errors.error_class("no-such-type") is errors.SourceReadError


def test_pad_repeats_the_last_frame(tmp_path):
    path = make_video(tmp_path / "one.mp4", num_frames=1)
    probe = probe_video(path)
    (clip,) = plan_clips(probe.num_frames, probe.fps, tiny_spec("x", "y").sampling)
    ((_, frames),) = list(iter_clips(open_reader("decord", path, probe, SIZE), [clip], SIZE))
    assert frames.shape == (4, *SIZE, 3)
    assert all(np.array_equal(frames[0], f) for f in frames[1:])

"""Backpressure between decode and the models: the job's object-store cap is derived from its
spec, applied to that job's Dataset only, and neither loses clips nor mistakes a decoder held
back by it for a hung one."""

from __future__ import annotations

import time

import pytest

from pipeline import errors
from pipeline.child_process import IsolatedDecoder
from pipeline.job import run_job
from pipeline.probe import probe_video
from pipeline.resources import BATCHES_AHEAD, block_clips, clip_bytes, stream_memory_limit
from pipeline.sampling import plan_clips
from tests.pipeline.jobs_util import clip_key_counts, read_table, tiny_spec
from tests.videos import make_video


def test_limit_is_a_few_model_batches_of_decoded_clips():
    models = [
        {"name": "frame-average", "batch_size": 4, "actors": 2},
        {"name": "frame-average", "key": "emb", "task": "embed", "batch_size": 3},
    ]
    spec = tiny_spec("in", "out", models=models, decode={"actors": 2})
    clip = 4 * 64 * 64 * 3  # clip_len 4, 64x64, RGB uint8
    assert clip_bytes(spec) == clip
    # BATCHES_AHEAD batches per model actor, both models (the first passes frames on), plus two
    # output blocks of one (smallest) batch per decode actor
    assert block_clips(spec) == 3
    assert stream_memory_limit(spec) == (BATCHES_AHEAD * (2 * 4 + 3) + 2 * 2 * 3) * clip
    bigger = tiny_spec(
        "in",
        "out",
        models=models,
        decode={"actors": 2},
        sampling={"clip_len": 8, "size": [128, 96]},
    )
    assert stream_memory_limit(bigger) == 6 * stream_memory_limit(spec)  # 2x frames, 3x pixels


def test_job_runs_under_its_own_limit_and_keeps_every_clip(ray_session, tmp_path, monkeypatch):
    import ray.data as rd

    root = tmp_path / "in"
    root.mkdir()
    videos = [make_video(root / f"v{i}.mp4", num_frames=240, fps=12.0, seed=i) for i in range(3)]
    spec = tiny_spec(
        str(root),
        str(tmp_path / "out"),
        sampling={"segment_s": 8.0},
        models=[{"name": "frame-average", "batch_size": 2}],
    )
    expected = sum(
        len(plan_clips(probe_video(v).num_frames, probe_video(v).fps, spec.sampling))
        for v in videos
    )
    limit = stream_memory_limit(spec)
    assert expected * clip_bytes(spec) > 5 * limit  # the cap holds a small part of the archive

    executed = []  # the DataContext of every Dataset the job iterates
    iter_batches = rd.Dataset.iter_batches

    def spy(self, *args, **kwargs):
        executed.append(self.context)
        return iter_batches(self, *args, **kwargs)

    monkeypatch.setattr(rd.Dataset, "iter_batches", spy)
    shared = rd.DataContext.get_current()
    before = (shared.execution_options.resource_limits, shared.target_max_block_size)

    result = run_job(spec)

    stream = executed[-1]
    assert stream.execution_options.resource_limits.object_store_memory == limit
    assert stream.target_max_block_size == clip_bytes(spec) * block_clips(spec)
    assert (shared.execution_options.resource_limits, shared.target_max_block_size) == before
    assert rd.DataContext.get_current() is shared and stream is not shared

    clips = read_table(str(tmp_path / "out"), "clips")
    assert clips.num_rows == result.summary["clips"] == expected
    assert set(clip_key_counts(clips).values()) == {1}
    assert {v["status"] for v in read_table(str(tmp_path / "out"), "videos").to_pylist()} == {"ok"}


def _rows(n: int, then_hang_s: float = 0.0):
    """Runs in the decoder's child process: ``n`` rows, then (optionally) a hang."""
    for i in range(n):
        yield {"i": i}
    time.sleep(then_hang_s)


@pytest.fixture
def decoder():
    dec = IsolatedDecoder(_rows)
    assert [r["i"] for r in dec.run((2,), timeout_s=60.0)] == [0, 1]  # child started, imports done
    yield dec
    dec.close()


def test_decoder_held_back_by_backpressure_is_not_a_timeout(decoder):
    rows = []
    for row in decoder.run((6,), timeout_s=1.0):
        rows.append(row["i"])
        time.sleep(0.5)  # downstream holds the decoder back 3 s in all, 3x its deadline
    assert rows == list(range(6)) and decoder.restarts == 0


def test_hung_decoder_still_times_out_under_a_slow_consumer(decoder):
    rows = decoder.run((1, 60.0), timeout_s=2.0)
    assert next(rows) == {"i": 0}
    time.sleep(3.0)  # held back longer than the deadline: not the decoder's time
    with pytest.raises(errors.DecodeTimeoutError):
        next(rows)

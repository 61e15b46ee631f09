"""Clip sampling (MMAction2 / PyTorchVideo conventions) and segment planning."""

from __future__ import annotations

import pytest

from pipeline.errors import TooShortError
from pipeline.sampling import plan_clips, split_segments
from pipeline.spec import SamplingSpec


def test_sliding_windows_default_stride_is_one_span():
    clips = plan_clips(30, 10.0, SamplingSpec(clip_len=4, frame_interval=2))
    assert [c.frame_indices for c in clips] == [
        (0, 2, 4, 6),
        (7, 9, 11, 13),
        (14, 16, 18, 20),
        (21, 23, 25, 27),
    ]
    assert clips[1].start_s == pytest.approx(0.7) and clips[1].end_s == pytest.approx(1.4)
    assert [c.clip_index for c in clips] == [0, 1, 2, 3]


def test_sliding_windows_with_overlap():
    clips = plan_clips(10, 5.0, SamplingSpec(clip_len=4, stride=2))
    assert [c.start_frame for c in clips] == [0, 2, 4, 6]
    assert clips[-1].end_frame == 9


def test_uniform_clips_are_centred_in_equal_parts():
    clips = plan_clips(100, 25.0, SamplingSpec(clip_len=8, frame_interval=2, num_clips=3))
    span = 15
    part = (100 - span + 1) / 3
    assert [c.start_frame for c in clips] == [int(part * i + part / 2) for i in range(3)]
    assert all(c.end_frame - c.start_frame == span - 1 for c in clips)


def test_short_video_pads_or_skips():
    padded = plan_clips(3, 10.0, SamplingSpec(clip_len=4, frame_interval=2))
    assert [c.frame_indices for c in padded] == [(0, 2, 2, 2)]
    with pytest.raises(TooShortError):
        plan_clips(3, 10.0, SamplingSpec(clip_len=4, frame_interval=2, short_video="skip"))
    with pytest.raises(TooShortError):
        plan_clips(0, 10.0, SamplingSpec())


def test_segments_group_clips_by_start_time():
    clips = plan_clips(100, 10.0, SamplingSpec(clip_len=5))  # starts 0, 5, ..., 95
    groups = split_segments(clips, 10.0, segment_s=3.0)  # 30 frames per segment
    assert [len(g) for g in groups] == [6, 6, 6, 2]
    assert [c.clip_index for g in groups for c in g] == list(range(20))

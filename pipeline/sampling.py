"""Clip sampling: sliding windows or uniform clips per video, and grouping clips into segments."""

from __future__ import annotations

import math

from pipeline.errors import TooShortError
from pipeline.records import ClipPlan
from pipeline.spec import SamplingSpec


def plan_clips(num_frames: int, fps: float, sampling: SamplingSpec) -> list[ClipPlan]:
    """Clips for a video of ``num_frames`` frames at ``fps``.

    Sliding windows start at 0 and advance by ``stride`` (default: one clip span, so clips do
    not overlap); a tail shorter than a span is dropped. ``num_clips`` > 0 instead centres that
    many clips in equal parts of the video (MMAction2's test-mode uniform sampling).

    A video shorter than one span follows ``short_video``: "pad" gives one clip whose indices are
    clamped to the last frame (the last frame repeats; a 1-frame video gives one clip of that
    frame repeated), "skip" raises ``TooShortError`` (``status = skipped``, ``TooShort``).

    ``start_s``/``end_s`` planned here are nominal (``frame / fps``, ``fps`` being the probe's
    average rate); the decoder replaces them with the frames' real presentation times, which
    differ for variable-frame-rate video (see ``pipeline.decode``).

    Raises:
        TooShortError: no frames, or fewer than one span under ``short_video = "skip"``.
    """
    if num_frames <= 0:
        raise TooShortError("video has no frames")
    span = sampling.span
    if num_frames < span:
        if sampling.short_video == "skip":
            raise TooShortError(f"{num_frames} frames, one clip spans {span}")
        starts = [0]
    elif sampling.num_clips > 0:
        part = (num_frames - span + 1) / sampling.num_clips
        starts = [int(part * i + part / 2) for i in range(sampling.num_clips)]
    else:
        stride = sampling.stride or span
        starts = list(range(0, num_frames - span + 1, stride))
    clips = []
    for index, start in enumerate(starts):
        frames = tuple(
            min(start + j * sampling.frame_interval, num_frames - 1)
            for j in range(sampling.clip_len)
        )
        clips.append(ClipPlan(index, frames, frames[0] / fps, (frames[-1] + 1) / fps))
    return clips


def split_segments(clips: list[ClipPlan], fps: float, segment_s: float) -> list[list[ClipPlan]]:
    """Group clips by the ``segment_s``-long stretch of video their first frame falls in.

    Long videos become several decode tasks, so one two-hour file does not serialise a job.
    Empty stretches produce no segment.
    """
    frames_per_segment = max(1, math.ceil(segment_s * fps))
    groups: dict[int, list[ClipPlan]] = {}
    for clip in clips:
        groups.setdefault(clip.start_frame // frames_per_segment, []).append(clip)
    return [groups[k] for k in sorted(groups)]

"""The decode stage delivers exactly the frames a plain sequential decode gives, for any sampling.

``DecordReader`` skips frames no clip needs (decoded, never converted) and seeks across far
keyframes; ``iter_clips`` crops frames straight into clip arrays. Whatever path a plan takes,
the pixels and the clip times must be those of the simplest possible reader: decord's
``next()`` over every frame (and ``get_batch`` over the needed ones).
"""

from __future__ import annotations

import av
import numpy as np
import pytest

from pipeline import decode
from pipeline.decode import centre_crop, decode_size, iter_clips, open_reader
from pipeline.probe import probe_video
from pipeline.records import ClipPlan
from pipeline.sampling import plan_clips
from pipeline.spec import SamplingSpec
from tests.videos import make_vfr_video, make_video

SIZE = (40, 56)  # (H, W), centre-cropped from a wider decode size (40 x 60 for 96 x 64 videos)

# name: (codec, suffix, frames, (W, H), keyframe interval); short GOPs put keyframes inside gaps
VIDEOS = {
    "h264-bframes": ("libx264", ".mp4", 90, (96, 64), 10),
    "h264-mkv": ("libx264", ".mkv", 90, (96, 64), 16),
    "mpeg4-odd-size": ("mpeg4", ".avi", 90, (97, 61), 12),
    "mjpeg-all-intra": ("mjpeg", ".avi", 60, (96, 64), None),
    "h264-vfr": ("libx264", ".mkv", 40, (96, 64), None),
}

# name: SamplingSpec fields, or hand-made clips (frame index tuples) for a video of n frames
PATTERNS = {
    "dense": {"clip_len": 4},
    "strided": {"clip_len": 4, "frame_interval": 3},
    "sparse across keyframes": {"clip_len": 2, "stride": 23},
    "one frame far apart": {"clip_len": 1, "stride": 55},
    "overlapping": {"clip_len": 6, "stride": 2},
    "uniform": {"clip_len": 4, "frame_interval": 5, "num_clips": 3},
    "end of file": lambda n: [
        (n - 6, n - 2),
        (n - 4, n - 3, n - 2, n - 1),
        (n - 3, n - 1, n, n + 1),
    ],  # past the end clamps to the last frame
    "repeats and disorder": lambda n: [(3, 3, 9, 5), (2, 30, 31), (n - 1, n - 1)],
}


@pytest.fixture(scope="module", params=sorted(VIDEOS))
def video(request, tmp_path_factory) -> str:
    codec, suffix, frames, size, gop = VIDEOS[request.param]
    path = tmp_path_factory.mktemp("decode") / f"{request.param}{suffix}"
    if request.param == "h264-vfr":
        return make_vfr_video(path, num_frames=frames, size=size, codec=codec)
    return make_video(path, num_frames=frames, size=size, codec=codec, pattern="moving", gop=gop)


def _clips(pattern, num_frames: int, fps: float) -> list[ClipPlan]:
    spec = PATTERNS[pattern]
    if isinstance(spec, dict):
        return plan_clips(num_frames, fps, SamplingSpec(size=SIZE, **spec))
    return [
        ClipPlan(n, idx, idx[0] / fps, (max(idx) + 1) / fps)
        for n, idx in enumerate(spec(num_frames))
    ]


def _sequential(path: str, backend: str, probe) -> list[np.ndarray]:
    """Every frame at the reader's decode size, centre-cropped: the plainest loop there is."""
    height, width = decode_size(probe, SIZE, "crop")
    if backend == "pyav":
        with av.open(path) as container:
            return [
                centre_crop(f.to_ndarray(format="rgb24", width=width, height=height), SIZE)
                for f in container.decode(video=0)
            ]
    import decord

    while width in decode.DECORD_BAD_WIDTHS:
        width += 1
    vr = decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    return [centre_crop(vr.next().asnumpy(), SIZE) for _ in range(len(vr))]


@pytest.mark.parametrize("seek_gap", [0, 5, decode.SEEK_GAP])
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_decord_clips_equal_a_sequential_decode(video, pattern, seek_gap, monkeypatch):
    # seek_gap 0 seeks across every keyframe in a gap; the default decodes through most gaps.
    monkeypatch.setattr(decode, "SEEK_GAP", seek_gap)
    probe = probe_video(video)
    reference = _sequential(video, "decord", probe)
    clips = _clips(pattern, len(reference), probe.fps)
    got = list(iter_clips(open_reader("decord", video, probe, SIZE), clips, SIZE))
    assert [c.clip_index for c, _ in got] == [c.clip_index for c in clips]
    last = len(reference) - 1
    for (clip, frames), plan in zip(got, clips):
        expected = np.stack([reference[min(i, last)] for i in plan.frame_indices])
        assert frames.shape == (len(plan.frame_indices), *SIZE, 3) and frames.dtype == np.uint8
        assert frames.flags.writeable and frames.flags.c_contiguous
        np.testing.assert_array_equal(frames, expected, err_msg=f"{pattern}: {plan}")
        assert clip.frame_indices == plan.frame_indices


@pytest.mark.parametrize("pattern", ["sparse across keyframes", "strided", "end of file"])
def test_decord_frames_equal_get_batch(video, pattern):
    import decord

    probe = probe_video(video)
    reader = open_reader("decord", video, probe, SIZE)
    clips = _clips(pattern, reader.num_frames, probe.fps)
    needed = sorted({min(i, reader.num_frames - 1) for c in clips for i in c.frame_indices})
    height, width, _ = reader.shape
    vr = decord.VideoReader(video, ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    batch = vr.get_batch(needed).asnumpy()
    got = list(reader.iter_frames(needed))
    assert [i for i, _ in got] == needed
    for (_, frame), expected in zip(got, batch):
        np.testing.assert_array_equal(frame, expected)


@pytest.mark.parametrize("pattern", ["dense", "overlapping", "repeats and disorder"])
def test_pyav_clips_equal_a_sequential_decode(video, pattern):
    probe = probe_video(video)
    reference = _sequential(video, "pyav", probe)
    clips = _clips(pattern, probe.num_frames, probe.fps)
    got = list(iter_clips(open_reader("pyav", video, probe, SIZE), clips, SIZE))
    assert len(got) == len(clips)
    last = len(reference) - 1
    for (_, frames), plan in zip(got, clips):
        expected = np.stack([reference[min(i, last)] for i in plan.frame_indices])
        np.testing.assert_array_equal(frames, expected)


@pytest.mark.parametrize("pattern", ["dense", "strided", "uniform", "end of file"])
def test_clip_times_are_the_decoders_timestamps(video, pattern):
    """start_s is when the first frame shows, end_s when the last stops (the next frame's pts;
    the last frame's own end for the final frame) -- from decord's per-frame timestamps."""
    import decord

    probe = probe_video(video)
    vr = decord.VideoReader(video, ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    clips = _clips(pattern, n, probe.fps)
    got = list(iter_clips(open_reader("decord", video, probe, SIZE), clips, SIZE))
    for clip, _ in got:
        first, last = min(clip.frame_indices[0], n - 1), min(max(clip.frame_indices), n - 1)
        start = float(vr.get_frame_timestamp(first)[0])
        end = float(
            vr.get_frame_timestamp(last + 1)[0] if last + 1 < n else vr.get_frame_timestamp(last)[1]
        )
        assert (clip.start_s, clip.end_s) == (start, end)


def test_a_reader_reads_again_from_an_earlier_frame(video):
    probe = probe_video(video)
    reference = _sequential(video, "decord", probe)
    reader = open_reader("decord", video, probe, SIZE)
    last = reader.num_frames - 1
    for indices in ([1, 2, last - 3, last], [0, 30], [29, 30, 31]):
        for index, frame in reader.iter_frames(indices):
            np.testing.assert_array_equal(centre_crop(frame, SIZE), reference[index])


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_overlapping_clips_hold_one_clip_at_a_time(tmp_path, backend):
    """Sliding windows with stride 1 share every frame among 16 clips: the clips are built one
    after the other from shared frames, never all 16 at once."""
    import tracemalloc

    path = make_video(tmp_path / "v.mp4", num_frames=60, size=(96, 64), gop=10)
    probe = probe_video(path)
    clips = plan_clips(probe.num_frames, probe.fps, SamplingSpec(clip_len=16, stride=1, size=SIZE))
    clip_bytes = 16 * SIZE[0] * SIZE[1] * 3
    reader = open_reader(backend, path, probe, SIZE)
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_clips(reader, clips, SIZE))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == len(clips) == 45
    # Measured: 2.6 clips' worth (the clip being filled, the one just yielded, the plan);
    # building the overlapping clips side by side would take 16.
    assert peak < 5 * clip_bytes, peak


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decode_clips_is_the_readers_path_plus_the_backend(video, backend):
    """The worker's entry point adds the backend's name and nothing else: same clips, same
    pixels and times as ``open_reader`` + ``iter_clips`` when the backend asked for decodes."""
    probe = probe_video(video)
    clips = _clips("strided", probe.num_frames, probe.fps)
    plain = list(iter_clips(open_reader(backend, video, probe, SIZE), clips, SIZE))
    got = list(decode.decode_clips(video, probe, clips, SIZE, backend=backend))
    assert [b for _, _, b in got] == [backend] * len(plain)
    for (clip, frames, _), (plain_clip, plain_frames) in zip(got, plain):
        assert clip == plain_clip
        np.testing.assert_array_equal(frames, plain_frames)


def test_decode_clips_rejects_an_unknown_backend(tiny_video):
    probe = probe_video(tiny_video)
    with pytest.raises(ValueError, match="opencv"):
        next(decode.decode_clips(tiny_video, probe, [], SIZE, backend="opencv"))

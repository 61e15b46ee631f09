"""Media conformance: every file of the set (``tests/media/corpus.py``) probes to its true frame
count, displayed size and codec, and decodes -- with either backend asked for first -- to
upright frames that match the footage encoded, with clip times that are the frames' real
presentation times; every file cut short is one ``Truncated`` error and no clips.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import decode, errors
from pipeline.decode import BACKENDS, centre_crop, decode_clips, decode_size
from pipeline.probe import probe_video
from pipeline.records import ClipPlan
from tests.media.corpus import BY_NAME, CORPUS, Entry, build

NAMES = [e.file for e in CORPUS]
CLIP_LEN = 4


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, str]:
    """The whole set, encoded once per session into a temp dir."""
    return build(tmp_path_factory.mktemp("media"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def dense_clips(entry: Entry) -> list[ClipPlan]:
    return [
        ClipPlan(n, tuple(range(s, s + CLIP_LEN)), s / 12, (s + CLIP_LEN) / 12)
        for n, s in enumerate(range(0, entry.frames - CLIP_LEN + 1, CLIP_LEN))
    ]


@pytest.mark.parametrize("name", NAMES)
def test_probe_reports_what_a_player_shows(media, name):
    entry = BY_NAME[name]
    probe = probe_video(media[name])
    assert probe.num_frames == entry.frames
    assert (probe.width, probe.height) == entry.display
    assert (probe.coded_width, probe.coded_height) == entry.size
    assert probe.rotation == entry.rotation
    assert probe.sample_aspect == pytest.approx(float(entry.sar or 1))
    assert probe.codec == entry.codec
    # Headers disagree by up to a frame on whether the last frame's duration counts (ASF: not).
    assert probe.duration_s == pytest.approx(entry.times()[-1], abs=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_frames_are_upright_and_times_real(media, name, backend):
    entry = BY_NAME[name]
    probe = probe_video(media[name])
    size = entry.display[::-1]  # (H, W): every pixel a player shows, nothing resampled away
    clips = dense_clips(entry)
    got = list(decode_clips(media[name], probe, clips, size, backend=backend, resize="stretch"))
    assert [c.clip_index for c, _, _ in got] == [c.clip_index for c in clips]
    expected_backend = "pyav" if backend in entry.fallback_from else backend
    assert {b for _, _, b in got} == {expected_backend}
    frames = np.concatenate([f for _, f, _ in got])
    reference = entry.upright()[: len(frames)]
    assert frames.shape == reference.shape
    assert psnr(frames, reference) > entry.min_psnr
    times = entry.times()
    for clip, _, _ in got:
        assert clip.start_s == pytest.approx(times[clip.start_frame], abs=2e-3), clip
        if entry.vfr and clip.end_frame == entry.frames - 1:
            # A VFR stream records when its last frame starts, not how long it lasts (the muxer
            # guesses): only its order is certain.
            assert clip.end_s > times[clip.end_frame], clip
        else:
            assert clip.end_s == pytest.approx(times[clip.end_frame + 1], abs=2e-3), clip
        assert isinstance(clip.start_s, float) and isinstance(clip.end_s, float)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name",
    [
        "rot90.mp4",
        "rot270.mov",
        "rot90.mkv",
        "anamorphic.mpg",
        "anamorphic_rot90.mp4",
        "wide_192x12.mkv",
    ],
)
def test_crop_keeps_the_displayed_aspect(media, name, backend):
    """The model's square input is a centre crop of the frame scaled with its displayed aspect:
    never the squeezed stored picture."""
    from PIL import Image

    entry = BY_NAME[name]
    probe = probe_video(media[name])
    size = (32, 32)
    height, width = decode_size(probe, size, "crop")
    reference = np.stack(
        [
            centre_crop(
                np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)), size
            )
            for f in entry.upright()[:CLIP_LEN]
        ]
    )
    ((_, frames, _),) = decode_clips(
        media[name], probe, dense_clips(entry)[:1], size, backend=backend
    )
    assert frames.shape == (CLIP_LEN, *size, 3)
    assert psnr(frames, reference) > 24


def _cut(data: bytes, keep: float) -> bytes:
    cut = int(len(data) * keep)
    while cut % 188 == 0 or cut % 192 == 0:  # a cut between MPEG-TS packets leaves no trace
        cut -= 1
    return data[:cut]


# One file per container format: cut short, each is Truncated before any decoding.
CONTAINERS = [
    "h264.mp4",
    "h264_faststart.mp4",
    "h264_fragmented.mp4",
    "h264.3gp",
    "prores.mov",
    "h264_10bit.mkv",
    "vp9.webm",
    "vp9_live.webm",
    "vp8.ogv",
    "mpeg2.mpg",
    "mpeg2.ts",
    "mpeg4.avi",
    "wmv2.wmv",
    "flv1.flv",
    "raw.y4m",
]


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.98])
@pytest.mark.parametrize("name", CONTAINERS)
def test_a_cut_file_is_truncated(media, name, keep, tmp_path):
    with open(media[name], "rb") as f:
        data = f.read()
    path = tmp_path / name
    path.write_bytes(_cut(data, keep))
    with pytest.raises(errors.TruncatedError):
        probe_video(str(path))


def test_fallback_happens_before_the_first_clip_only(media, monkeypatch):
    """A backend that fails after a clip was handed on is not replaced: the error propagates."""
    name = "h264.mp4"
    probe = probe_video(media[name])
    opened = []

    def failing_clips(reader, clips, size):
        yield clips[0], np.zeros((CLIP_LEN, *size, 3), np.uint8)
        raise errors.CorruptVideoError("decoding failed at frame 5")

    real_open = decode.open_reader
    monkeypatch.setattr(
        decode, "open_reader", lambda b, *a, **k: opened.append(b) or real_open(b, *a, **k)
    )
    monkeypatch.setattr(decode, "iter_clips", failing_clips)
    produced = decode_clips(media[name], probe, dense_clips(BY_NAME[name]), (32, 32))
    assert next(produced)[2] == "decord"
    with pytest.raises(errors.CorruptVideoError):
        next(produced)
    assert opened == ["decord"]


def test_no_backend_with_a_decoder_is_unsupported_codec(media, monkeypatch):
    def no_decoder(*args, **kwargs):
        raise errors.UnsupportedCodecError("PyAV's FFmpeg has no decoder for the stream")

    monkeypatch.setattr(decode, "PyAVReader", no_decoder)
    probe = probe_video(media["av1.mkv"])
    with pytest.raises(errors.UnsupportedCodecError):
        list(decode_clips(media["av1.mkv"], probe, dense_clips(BY_NAME["av1.mkv"]), (32, 32)))


def test_a_file_broken_for_every_backend_keeps_its_own_error(media, tmp_path):
    """Both backends fail on a damaged stream: the error says what is wrong with the file."""
    with open(media["mpeg4.avi"], "rb") as f:
        data = bytearray(f.read())
    movi = data.find(b"movi")
    data[movi + 4 : len(data) - 400] = b"\xff" * (len(data) - 400 - movi - 4)  # frames gone
    path = tmp_path / "damaged.avi"
    path.write_bytes(bytes(data))
    probe = probe_video(str(path))
    with pytest.raises(errors.VideoError) as caught:
        list(decode_clips(str(path), probe, dense_clips(BY_NAME["mpeg4.avi"]), (32, 32)))
    assert not isinstance(caught.value, (errors.NoVideoStreamError, errors.UnsupportedCodecError))


def test_an_in_memory_source_is_rewound_for_the_fallback(media):
    import io

    name = "av1.mp4"
    with open(media[name], "rb") as f:
        src = io.BytesIO(f.read())
    probe = probe_video(src)
    got = list(decode_clips(src, probe, dense_clips(BY_NAME[name]), (32, 32)))
    assert [b for _, _, b in got] == ["pyav"] * len(got)

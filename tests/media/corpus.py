"""The media conformance set: real footage encoded the ways real archives hold it.

Every file is a few frames of the scikit-image cat photo under a slow pan and zoom
(``synth_frames(..., "photo")``, the demo archive's footage), tiny so the whole set encodes in
seconds. ``CORPUS`` says how each file is made and what a correct reader must report; ``build``
writes them all into a folder (a session temp dir: nothing is written into the repository).

Encoders used are those PyAV 18.1 ships here (``av.codecs_available``): libx264 (8-bit,
10-bit, 4:4:4), libx265, libvpx (VP8) and libvpx-vp9, libsvtav1, mpeg2video, mpeg4 (Part 2),
mjpeg, prores_ks, wmv2, flv1 and rawvideo. There is no Theora encoder (libtheora is not
linked), so the Ogg file holds VP8. Rotation is written as the stream's display matrix
(``set_display_rotation``), which is what phones write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from tests.videos import synth_frames, vfr_timestamps

FPS = 12
VFR_DURATIONS = (1 / 30, 1 / 10)


@dataclass(frozen=True)
class Entry:
    """One file of the set: how it is encoded and what a reader must find in it.

    ``size`` is the stored (coded) ``(width, height)``; ``rotation`` clockwise degrees to show it
    upright; ``sar`` the sample aspect ratio. ``fmt`` the muxer (None: from the suffix).
    """

    file: str
    encoder: str
    codec: str  # the codec name the probe must report
    pix_fmt: str = "yuv420p"
    size: tuple[int, int] = (64, 48)
    frames: int = 12
    fmt: str | None = None
    rotation: int = 0
    sar: Fraction | None = None
    vfr: bool = False
    bframes: int | None = None
    muxer_options: dict[str, str] = field(default_factory=dict)
    codec_options: dict[str, str] = field(default_factory=dict)
    second_stream: bool = False  # a second, larger video stream after the first
    # Backends that cannot decode the file themselves (decode_clips falls back from them).
    fallback_from: tuple[str, ...] = ()
    min_psnr: float = 30.0

    @property
    def display(self) -> tuple[int, int]:
        width = round(self.size[0] * float(self.sar or 1))
        return (self.size[1], width) if self.rotation in (90, 270) else (width, self.size[1])

    def times(self) -> list[float]:
        """Presentation time of every frame, and the end of the last one (for VFR, the duration
        the encoder was given; no container records it, see the test)."""
        if self.vfr:
            starts = vfr_timestamps(self.frames, VFR_DURATIONS)
            return [*starts, round(starts[-1] + VFR_DURATIONS[(self.frames - 1) % 2], 3)]
        return [i / FPS for i in range(self.frames + 1)]

    def source(self) -> np.ndarray:
        """The frames encoded, as stored: ``(T, H, W, 3)`` uint8."""
        return synth_frames(self.frames, self.size, "photo", seed=len(self.file))

    def upright(self) -> np.ndarray:
        """The frames as a player shows them (turned; sample aspect applied)."""
        frames = self.source()
        if self.sar is not None:
            from PIL import Image

            width = round(self.size[0] * float(self.sar))
            frames = np.stack(
                [
                    np.asarray(Image.fromarray(f).resize((width, self.size[1]), Image.BILINEAR))
                    for f in frames
                ]
            )
        if self.rotation:
            frames = np.rot90(frames, k=-(self.rotation // 90), axes=(1, 2))
        return np.ascontiguousarray(frames)


_NO_DECORD_AV1 = ("decord",)  # decord's FFmpeg 4.1 has no AV1 decoder
_NO_DECORD_TS = ("decord",)  # decord misreads MPEG-TS (see pipeline.decode.DecordReader)

CORPUS = [
    Entry("h264.mp4", "libx264", "h264", bframes=2),
    Entry("h264_faststart.mp4", "libx264", "h264", muxer_options={"movflags": "+faststart"}),
    Entry(
        "h264_fragmented.mp4",
        "libx264",
        "h264",
        muxer_options={"movflags": "frag_keyframe+empty_moov+default_base_moof"},
        codec_options={"g": "4"},
    ),
    Entry("h264_10bit.mkv", "libx264", "h264", pix_fmt="yuv420p10le"),
    Entry("h264_444.mp4", "libx264", "h264", pix_fmt="yuv444p"),
    Entry("h264.3gp", "libx264", "h264", fmt="3gp"),
    Entry("hevc.mp4", "libx265", "hevc", codec_options={"x265-params": "log-level=error"}),
    Entry("vp9.webm", "libvpx-vp9", "vp9"),
    Entry(
        "vp9_live.webm", "libvpx-vp9", "vp9", muxer_options={"live": "1"}, fallback_from=("decord",)
    ),  # no duration, no cues: decord cannot count its frames
    Entry("vp8.ogv", "libvpx", "vp8", fmt="ogg", fallback_from=("decord",)),
    Entry("av1.mkv", "libsvtav1", "av1", fallback_from=_NO_DECORD_AV1),
    Entry("av1.mp4", "libsvtav1", "av1", fallback_from=_NO_DECORD_AV1),
    Entry("mpeg2.mpg", "mpeg2video", "mpeg2video", fmt="vob", bframes=2, min_psnr=28.0),
    Entry(
        "mpeg2.ts",
        "mpeg2video",
        "mpeg2video",
        fmt="mpegts",
        bframes=2,
        min_psnr=28.0,
        fallback_from=_NO_DECORD_TS,
    ),
    Entry("h264.ts", "libx264", "h264", fmt="mpegts", fallback_from=_NO_DECORD_TS),
    Entry("mpeg4.avi", "mpeg4", "mpeg4", bframes=2, min_psnr=28.0),
    Entry("h264.avi", "libx264", "h264", bframes=2),
    Entry("mjpeg.avi", "mjpeg", "mjpeg", pix_fmt="yuvj420p", min_psnr=28.0),
    Entry("prores.mov", "prores_ks", "prores", pix_fmt="yuv422p10le"),
    Entry("wmv2.wmv", "wmv2", "wmv2", fmt="asf", min_psnr=28.0),
    Entry("flv1.flv", "flv", "flv1", fmt="flv", min_psnr=28.0),
    Entry("raw.y4m", "rawvideo", "rawvideo", fmt="yuv4mpegpipe"),
    # decord turns ISO-BMFF frames itself, in YUV before its scaler: measured 28 dB against
    # the footage where PyAV (turned as RGB) gives 34 on these tiny 4:2:0 frames.
    Entry("rot90.mp4", "libx264", "h264", rotation=90, min_psnr=26.0),
    Entry("rot180.mp4", "libx264", "h264", rotation=180, min_psnr=26.0),
    Entry("rot270.mov", "libx264", "h264", rotation=270, min_psnr=26.0),
    Entry("rot90.mkv", "libx264", "h264", rotation=90),
    # PAL 720x576 at 16:15, scaled by 1/8. decord 0.6 fails at the end of this program stream
    # ("Unable to handle EOF"): the fallback decodes it.
    Entry(
        "anamorphic.mpg",
        "mpeg2video",
        "mpeg2video",
        fmt="vob",
        size=(90, 72),
        sar=Fraction(16, 15),
        min_psnr=28.0,
        fallback_from=("decord",),
    ),
    Entry(
        "anamorphic_rot90.mp4",
        "libx264",
        "h264",
        size=(90, 72),
        sar=Fraction(16, 15),
        rotation=90,
        min_psnr=26.0,
    ),
    Entry("vfr.mkv", "libx264", "h264", vfr=True),
    Entry("vfr.mp4", "libx264", "h264", vfr=True),
    Entry("two_streams.mkv", "libx264", "h264", second_stream=True),
    Entry("tiny_18x14.mp4", "libx264", "h264", size=(18, 14), min_psnr=25.0),
    Entry("wide_192x12.mkv", "libx264", "h264", size=(192, 12), min_psnr=25.0),
    Entry("tall_12x160.mp4", "libx264", "h264", size=(12, 160), min_psnr=25.0),
]
BY_NAME = {e.file: e for e in CORPUS}


def build(root: str | os.PathLike) -> dict[str, str]:
    """Encode every ``CORPUS`` entry into ``root``; file name -> path."""
    os.makedirs(root, exist_ok=True)
    return {e.file: encode(e, os.path.join(root, e.file)) for e in CORPUS}


def encode(entry: Entry, path: str) -> str:
    frames = entry.source()
    width, height = entry.size
    if entry.vfr:
        time_base = Fraction(1, 1000)
        pts = [round(t * 1000) for t in entry.times()[:-1]]
    else:
        time_base, pts = Fraction(1, FPS), list(range(entry.frames))
    with av.open(path, "w", format=entry.fmt, options=entry.muxer_options) as container:
        streams = [_add_stream(container, entry, width, height, time_base)]
        extra = None
        if entry.second_stream:
            extra = synth_frames(entry.frames, (2 * width, 2 * height), "moving")
            streams.append(_add_stream(container, entry, 2 * width, 2 * height, time_base))
        for i, t in enumerate(pts):
            for stream, source in zip(streams, (frames, extra)):
                vf = av.VideoFrame.from_ndarray(source[i], format="rgb24")
                vf.pts, vf.time_base = t, time_base
                for packet in stream.encode(vf):
                    container.mux(packet)
        for stream in streams:
            for packet in stream.encode():
                container.mux(packet)
    return path


def _add_stream(container, entry: Entry, width: int, height: int, time_base: Fraction):
    rate = None if entry.vfr else Fraction(FPS)
    stream = (
        container.add_stream(entry.encoder, rate=rate)
        if rate
        else container.add_stream(entry.encoder)
    )
    stream.width, stream.height, stream.pix_fmt = width, height, entry.pix_fmt
    stream.codec_context.time_base = time_base
    options = dict(entry.codec_options)
    if entry.encoder in ("libx264", "libx265"):
        options.setdefault("crf", "16")
        options.setdefault("preset", "veryfast")
    elif entry.encoder in ("mpeg2video", "mpeg4", "mjpeg", "wmv2", "flv"):
        stream.codec_context.qscale = True
        stream.codec_context.global_quality = 2 * 118  # quantiser 2: near-lossless
    elif entry.encoder == "libsvtav1":
        options.setdefault("crf", "20")
        options.setdefault("preset", "12")
    elif entry.encoder.startswith("libvpx"):
        options.setdefault("crf", "10")
        options.setdefault("b", "0")
        options.setdefault("deadline", "realtime")
    stream.options = options
    if entry.bframes is not None:
        stream.codec_context.max_b_frames = entry.bframes
    if entry.sar is not None:
        stream.codec_context.sample_aspect_ratio = entry.sar
    if entry.rotation:
        stream.set_display_rotation(-entry.rotation)  # PyAV takes counter-clockwise degrees
    return stream

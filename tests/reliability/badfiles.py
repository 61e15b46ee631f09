"""Generators of bad inputs for the reliability tests: broken, truncated, misnamed and hostile
files, each small and made on the fly (no committed media).

Every function writes one file and returns its path as ``str``. Good videos come from
``tests.videos``; these only break them or make inputs that are not videos at all.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
from fractions import Fraction

import av
import numpy as np

from tests.videos import make_video


def make_zero_byte(path: str | os.PathLike) -> str:
    open(path, "wb").close()
    return str(path)


def make_random_bytes(path: str | os.PathLike, size: int = 20_000, seed: int = 0) -> str:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def make_text(path: str | os.PathLike) -> str:
    with open(path, "w") as f:
        f.write("This is a text file, not a video.\n" * 40)
    return str(path)


def mp4_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level ISO-BMFF boxes of ``data``: ``(type, offset, size)`` as declared."""
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:
            size = len(data) - pos
        boxes.append((kind, pos, size))
        if size < 8:
            break
        pos += size
    return boxes


def make_truncated_mp4(
    path: str | os.PathLike, faststart: bool, num_frames: int = 30, keep: float = 0.5
) -> str:
    """An H.264 mp4 cut mid-stream.

    ``faststart=False``: the muxer's default layout (``mdat`` then ``moov``) cut to ``keep`` of
    its bytes -- the index is gone. ``faststart=True``: ``moov`` first, cut in the middle of
    ``mdat`` -- the index survives and promises frames whose bytes are missing.
    """
    full = str(path) + ".full.mp4"
    _write_h264(full, num_frames, faststart=faststart)
    with open(full, "rb") as f:
        data = f.read()
    os.remove(full)
    kinds = [k for k, _, _ in mp4_boxes(data)]
    if faststart != (kinds.index(b"moov") < kinds.index(b"mdat")):
        raise RuntimeError(f"unexpected box order {kinds} for faststart={faststart}")
    if faststart:
        _, off, size = next(b for b in mp4_boxes(data) if b[0] == b"mdat")
        cut = off + 8 + int((size - 8) * keep)
    else:
        cut = int(len(data) * keep)
    with open(path, "wb") as f:
        f.write(data[:cut])
    return str(path)


def make_corrupt_sps_mp4(path: str | os.PathLike, num_frames: int = 24) -> str:
    """An H.264 mp4 whose codec private data (avcC: SPS/PPS) is overwritten with garbage, so the
    container parses and the header looks valid but no frame can be decoded."""
    _write_h264(path, num_frames, faststart=False)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    at = data.find(b"avcC")
    if at < 0:
        raise RuntimeError("no avcC box")
    size = struct.unpack(">I", data[at - 4 : at])[0]
    # Keep configurationVersion/profile bytes and the lengthSizeMinusOne byte; break the NALs.
    start, end = at + 4 + 5, at - 4 + size
    data[start:end] = bytes((i * 37 + 11) % 256 for i in range(end - start))
    with open(path, "wb") as f:
        f.write(bytes(data))
    return str(path)


def make_audio_only(path: str | os.PathLike, seconds: float = 1.0) -> str:
    """An audio-only file (AAC in .mp4, or PCM in .mkv): a container with no video stream."""
    path = str(path)
    codec = "aac" if path.endswith(".mp4") else "pcm_s16le"
    rate = 16_000
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        n = int(seconds * rate)
        tone = (np.sin(np.arange(n) * 2 * np.pi * 440 / rate) * 8000).astype(np.int16)
        chunk = 1024
        for i in range(0, n, chunk):
            frame = av.AudioFrame.from_ndarray(
                tone[None, i : i + chunk], format="s16", layout="mono"
            )
            frame.sample_rate = rate
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_large_frame_video(
    path: str | os.PathLike, num_frames: int = 8, size: tuple[int, int] = (3840, 2160)
) -> str:
    """A short H.264 video with big frames (default 4K UHD), encoded one frame at a time so the
    generator itself never holds more than one frame."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "30"}
        ys, xs = np.mgrid[0:height, 0:width]
        base = ((xs // 64 + ys // 64) % 2 * 120).astype(np.uint8)
        for i in range(num_frames):
            frame = np.repeat(np.roll(base, 16 * i, axis=1)[..., None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def make_damaged_tar(path: str | os.PathLike, members: dict[str, bytes | str], damage: int) -> str:
    """A tar of ``members`` whose header number ``damage`` (0-based) has its checksum broken:
    the members before it list normally, the damaged one cannot, the ones after it must be
    found again by scanning."""
    from tests.videos import make_tar

    make_tar(path, members)
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[damage].offset
    with open(path, "r+b") as f:
        f.seek(offset + 148)  # chksum field
        f.write(b"9999999\0")
    return str(path)


def make_cut_tar(path: str | os.PathLike, members: dict[str, bytes | str], cut_in: str) -> str:
    """A tar cut in the middle of member ``cut_in``'s data (an interrupted shard upload)."""
    from tests.videos import make_tar

    make_tar(path, members)
    with tarfile.open(path) as tar:
        m = tar.getmember(cut_in)
    with open(path, "rb") as f:
        data = f.read(m.offset_data + m.size // 2)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def make_corrupt_zip(path: str | os.PathLike, members: dict[str, bytes | str]) -> str:
    """A zip whose end-of-central-directory record is destroyed: not openable at all."""
    from tests.videos import make_zip

    make_zip(path, members)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    at = data.rfind(b"PK\x05\x06")
    data[at : at + 4] = b"XXXX"
    with open(path, "wb") as f:
        f.write(bytes(data))
    return str(path)


def make_bad_crc_zip(
    path: str | os.PathLike,
    members: dict[str, bytes | str],
    damage: str,
    compression: int = zipfile.ZIP_STORED,
) -> str:
    """A readable zip whose member ``damage`` has flipped data bytes (CRC or inflate fails)."""
    from tests.videos import make_zip

    make_zip(path, members, compression=compression)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(damage)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start + info.compress_size // 2)
        chunk = bytearray(f.read(16))
        f.seek(start + info.compress_size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    return str(path)


def _write_h264(
    path: str, num_frames: int, faststart: bool, size: tuple[int, int] = (64, 48), fps: int = 12
) -> None:
    """Like ``tests.videos.make_video`` but able to write ``moov`` first (faststart)."""
    if not faststart:
        make_video(path, num_frames=num_frames, size=size, fps=fps)
        return
    from tests.videos import synth_frames

    frames = synth_frames(num_frames, size)
    with av.open(path, "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def tar_bytes_with_names(names: dict[str, bytes]) -> bytes:
    """A tar (in memory) whose member names are written verbatim, even hostile ones."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in names.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()

"""1. Decode: our decode stage against a plain single-thread sequential decode of the same files.

Per resolution (360p, 720p, 1080p H.264), every frame delivered at the model input size
(short side resized to 224 at decode, centre crop 224x224):

- ``vmb decord``  ``pipeline.decode.open_reader("decord", ...)`` + ``iter_clips`` (the decode actor's
  code path, 1 decoder thread);
- ``vmb pyav``    the same with the PyAV backend;
- ``decord seq``  ``decord.VideoReader(width, height, num_threads=1)`` and ``next()`` over every frame;
- ``pyav seq``    ``container.decode()`` with one codec thread, ``to_ndarray(width, height)``.

Figure: frames per CPU-second ("per core"; CPU time of this process, all threads), ours over the
best baseline; target >= 1.0.

Sparse sampling on the 720p file: the cost (CPU seconds) of decoding only the frames a sampling
plan needs, relative to a full sequential decode, for the pipeline's reader and for a prototype
reader (``KeyframeReader`` in ``_keyframe_reader_class``: seeks only across a keyframe, ``skip_frames`` for frames nobody
needs). Target: cost scales with the frames needed, never above 1.0x of the full decode.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench import inputs
from bench.common import Settings, interleaved, log, median, save, spread

SIZE = (224, 224)


def _probe(path: Path):
    from pipeline.probe import probe_video

    return probe_video(str(path))


def _plans(probe, clip_len: int, interval: int, stride: int | None):
    from pipeline.sampling import plan_clips
    from pipeline.spec import SamplingSpec

    return plan_clips(probe.num_frames, probe.fps,
                      SamplingSpec(clip_len=clip_len, frame_interval=interval, stride=stride, size=SIZE))


def ours(path: Path, backend: str, plans) -> int:
    from pipeline.decode import iter_clips, open_reader

    reader = open_reader(backend, str(path), _probe(path), SIZE, "crop", 1)
    return sum(len(frames) for _, frames in iter_clips(reader, plans, SIZE))


def decord_seq(path: Path) -> int:
    import decord

    from pipeline.decode import centre_crop, decode_size

    h, w = decode_size(_probe(path), SIZE, "crop")
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=w, height=h, num_threads=1)
    n = 0
    for _ in range(len(vr)):
        frame = centre_crop(vr.next().asnumpy(), SIZE)
        n += frame.shape[0] > 0
    return n


def pyav_seq(path: Path) -> int:
    import av

    from pipeline.decode import centre_crop, decode_size

    h, w = decode_size(_probe(path), SIZE, "crop")
    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        for frame in container.decode(stream):
            arr = centre_crop(frame.to_ndarray(format="rgb24", width=w, height=h), SIZE)
            n += arr.shape[0] > 0
    return n


def _keyframe_reader_class():
    from pipeline.decode import DecordReader

    class KeyframeReader(DecordReader):
        """Prototype of the change recommended for ``pipeline.decode.DecordReader.iter_frames``.

        Two differences: (1) a gap is crossed by seeking only when a keyframe lies inside it (a
        seek otherwise re-decodes from the previous keyframe: frames already decoded are decoded
        again); (2) frames nobody needs are ``skip_frames``-ed: decoded (later frames depend on
        them) but never colour-converted, resized or copied.
        """

        def iter_frames(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
            keys = getattr(self, "_keys", None)
            if keys is None:
                keys = self._keys = sorted(int(k) for k in self._vr.get_key_indices())
            for i in indices:
                if i < self._pos:
                    raise ValueError("indices must be sorted and unique")
                k = keys[bisect.bisect_right(keys, i) - 1] if keys else 0
                if k > self._pos:  # a keyframe inside the gap: jump to it instead of decoding up
                    self._vr.seek(k)
                    self._pos = k
                if i > self._pos:
                    self._vr.skip_frames(i - self._pos)
                    self._pos = i
                yield i, self._vr.next().asnumpy()
                self._pos += 1

    return KeyframeReader


def proto(path: Path, plans) -> int:
    from pipeline.decode import decode_size, iter_clips

    h, w = decode_size(_probe(path), SIZE, "crop")
    reader = _keyframe_reader_class()(str(path), h, w, 1)
    return sum(len(frames) for _, frames in iter_clips(reader, plans, SIZE))


def _same_frames(path: Path, plans) -> bool:
    """The prototype must deliver exactly the pipeline's pixels."""
    from pipeline.decode import decode_size, iter_clips, open_reader

    a = [f for _, f in iter_clips(open_reader("decord", str(path), _probe(path), SIZE, "crop", 1),
                                  plans[:6], SIZE)]
    h, w = decode_size(_probe(path), SIZE, "crop")
    b = [f for _, f in iter_clips(_keyframe_reader_class()(str(path), h, w, 1), plans[:6], SIZE)]
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


SPARSE = {  # name: (clip_len, frame_interval, stride)
    "every 4th (classify job: 8 frames x4)": (8, 4, None),
    "8 of every 64": (8, 1, 64),
    "1 of every 64": (1, 1, 64),
    "8 of every 256": (8, 1, 256),
}


def run(settings: Settings) -> dict:
    root = inputs.decode_archive(settings.quick)
    repeats = settings.repeats
    dense_rows = []
    for path in inputs.videos(root):
        probe = _probe(path)
        dense = _plans(probe, 8, 1, None)
        log(f"decode: {path.name} ({probe.width}x{probe.height}, {probe.num_frames} frames)")
        samples = interleaved({
            "vmb decord": lambda p=path, d=dense: ours(p, "decord", d),
            "vmb pyav": lambda p=path, d=dense: ours(p, "pyav", d),
            "decord seq": lambda p=path: decord_seq(p),
            "pyav seq": lambda p=path: pyav_seq(p),
        }, repeats, warmup=not settings.quick)
        row = {"resolution": path.stem, "width": probe.width, "height": probe.height,
               "frames": probe.num_frames, "contenders": {}}
        for name, ss in samples.items():
            row["contenders"][name] = {
                "frames_per_cpu_s": median([s.value / s.cpu_s for s in ss]),
                "frames_per_wall_s": median([s.value / s.wall_s for s in ss]),
                "spread": spread([s.value / s.cpu_s for s in ss]),
                "frames": ss[0].value, "load": [s.load for s in ss],
            }
        c = row["contenders"]
        best = max(c["decord seq"]["frames_per_cpu_s"], c["pyav seq"]["frames_per_cpu_s"])
        row["ratio_vs_best_baseline"] = c["vmb decord"]["frames_per_cpu_s"] / best
        row["ratio_vs_decord_seq"] = c["vmb decord"]["frames_per_cpu_s"] / c["decord seq"]["frames_per_cpu_s"]
        row["ratio_vs_pyav_seq"] = c["vmb decord"]["frames_per_cpu_s"] / c["pyav seq"]["frames_per_cpu_s"]
        dense_rows.append(row)

    path = next(p for p in inputs.videos(root) if p.stem == "720p")
    probe = _probe(path)
    log(f"decode: sparse sampling on {path.name}")
    full_plans = _plans(probe, 8, 1, None)
    sparse_rows = []
    fns = {"full ours": lambda: ours(path, "decord", full_plans)}
    for name, (clip_len, interval, stride) in SPARSE.items():
        plans = _plans(probe, clip_len, interval, stride)
        fns[f"{name}|ours"] = (lambda p=plans: ours(path, "decord", p))
        fns[f"{name}|proto"] = (lambda p=plans: proto(path, p))
    samples = interleaved(fns, repeats)
    full_cpu = median([s.cpu_s for s in samples["full ours"]])
    for name, (clip_len, interval, stride) in SPARSE.items():
        plans = _plans(probe, clip_len, interval, stride)
        needed = len({i for c in plans for i in c.frame_indices})
        sparse_rows.append({
            "pattern": name, "frames_needed": needed, "frames_total": probe.num_frames,
            "fraction_needed": needed / probe.num_frames,
            "ours_cost_vs_full": median([s.cpu_s for s in samples[f"{name}|ours"]]) / full_cpu,
            "proto_cost_vs_full": median([s.cpu_s for s in samples[f"{name}|proto"]]) / full_cpu,
            "proto_identical_frames": _same_frames(path, plans),
        })
    keys = _key_indices(path)
    payload = {"dense": dense_rows, "sparse": sparse_rows, "sparse_file": path.name,
               "gop": {"keyframes": keys[:20], "num_frames": probe.num_frames}, "repeats": repeats}
    save("decode", settings, payload)
    return payload


def _key_indices(path: Path) -> list[int]:
    import decord

    return [int(k) for k in decord.VideoReader(str(path), num_threads=1).get_key_indices()]

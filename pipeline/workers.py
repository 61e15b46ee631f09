"""The Ray Data stages: probe tasks, decode actors and model actors.

Rows between stages are plain dicts. A decode actor turns one segment row into one row per
clip (``frames`` (T, H, W, 3) uint8 plus clip metadata); a failed segment becomes a single
row with ``ok = False`` and the typed error, so failures travel to the driver with the data
and every video ends as exactly one ``videos`` row. Each model actor appends one pickled
``ClipResult`` column (``result:<model key>``) per clip; the last one drops the frames.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from typing import Any, Iterator

import numpy as np

from pipeline import errors
from pipeline.decode import iter_clips, open_reader
from pipeline.probe import probe_video
from pipeline.records import SegmentTask, VideoProbe, VideoTask
from pipeline.source import read_source
from pipeline.spec import DecodeSpec, ModelSpec, SamplingSpec

log = logging.getLogger(__name__)

RESULT_PREFIX = "result:"


def error_fields(err: BaseException) -> dict[str, str]:
    if isinstance(err, errors.VideoError):
        return {"status": err.status, "error_type": err.error_type, "error_message": str(err)[:2000]}
    return {"status": "error", "error_type": type(err).__name__, "error_message": str(err)[:2000]}


def probe_row(row: dict[str, Any], storage_options: dict[str, Any]) -> dict[str, Any]:
    """Probe one video task; returns the task row with ``probe`` (JSON) or the error fields."""
    task = VideoTask.from_row(row)
    out = {"task": json.dumps(task.to_row()), "probe": "", "status": "ok", "error_type": "",
           "error_message": ""}
    try:
        probe = probe_video(read_source(task, storage_options))
        out["probe"] = json.dumps(probe.__dict__)
    except (errors.VideoError, OSError, ValueError) as err:
        out.update(error_fields(err))
    return out


def frame_packet_sizes(src) -> np.ndarray:
    """Encoded size in bytes of each frame, in presentation order (demux only, no decoding)."""
    import io

    import av

    if isinstance(src, io.BytesIO):
        src.seek(0)
    with av.open(src, "r") as container:
        stream = container.streams.video[0]
        packets = [(p.pts if p.pts is not None else i, p.size)
                   for i, p in enumerate(container.demux(stream)) if p.size]
    if isinstance(src, io.BytesIO):
        src.seek(0)
    return np.array([size for _, size in sorted(packets)], dtype=np.int64)


class DecodeWorker:
    """Ray actor: decodes segments into clips. One reader per segment; the process is reused."""

    def __init__(self, sampling: dict, decode: dict, storage_options: dict, want_packet_sizes: bool):
        self.sampling = SamplingSpec.model_validate(sampling)
        self.decode = DecodeSpec.model_validate(decode)
        self.storage_options = storage_options
        self.want_packet_sizes = want_packet_sizes

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        seg = SegmentTask.from_row(json.loads(row["segment"]))
        probe = VideoProbe(**json.loads(row["probe"]))
        base = {"video_id": seg.video.video_id, "video_uri": seg.video.video_uri,
                "segment_index": seg.segment_index, "clips_in_segment": len(seg.clips),
                "fps": probe.fps}
        size = tuple(self.sampling.size)
        t0 = time.perf_counter()
        emitted = 0
        try:
            src = read_source(seg.video, self.storage_options)
            sizes = frame_packet_sizes(src) if self.want_packet_sizes else None
            reader = open_reader(self.decode.backend, src, probe, size, "crop", self.decode.threads)
            for clip, frames in iter_clips(reader, list(seg.clips), size):
                now = time.perf_counter()
                fb = (np.array([sizes[min(i, len(sizes) - 1)] for i in clip.frame_indices])
                      if sizes is not None and len(sizes) else np.zeros(len(clip.frame_indices), np.int64))
                yield {**base, "ok": True, "clip_index": clip.clip_index,
                       "start_frame": clip.start_frame, "end_frame": clip.end_frame,
                       "start_s": clip.start_s, "end_s": clip.end_s,
                       "frame_indices": np.asarray(clip.frame_indices, np.int64), "frame_bytes": fb,
                       "decode_s": now - t0, "frames": frames,
                       "status": "ok", "error_type": "", "error_message": ""}
                emitted += 1
                t0 = time.perf_counter()
        except (errors.VideoError, OSError, ValueError, RuntimeError) as err:
            log.warning("segment %s failed: %s", seg, err)
            yield {**base, "ok": False, "clip_index": -1, "start_frame": 0, "end_frame": 0,
                   "start_s": 0.0, "end_s": 0.0,
                   "frame_indices": np.zeros(self.sampling.clip_len, np.int64),
                   "frame_bytes": np.zeros(self.sampling.clip_len, np.int64),
                   "decode_s": time.perf_counter() - t0,
                   "frames": np.zeros((self.sampling.clip_len, *size, 3), np.uint8),
                   "emitted_before_error": emitted, **error_fields(err)}


class ModelWorker:
    """Ray actor: runs one model over clip batches; the model is built once per actor."""

    def __init__(self, model: dict, output: str, storage_options: dict, tracking_uri: str | None,
                 drop_frames: bool):
        from pipeline.model_runners import build_runner

        self.spec = ModelSpec.model_validate(model)
        self.runner = build_runner(self.spec, output=output, storage_options=storage_options,
                                   tracking_uri=tracking_uri)
        self.column = RESULT_PREFIX + self.spec.output_key
        self.drop_frames = drop_frames

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["ok"])
        ok = np.asarray(batch["ok"], dtype=bool)
        results: list[bytes] = [b""] * n
        infer_s = np.zeros(n, dtype=np.float64)
        if ok.any():
            idx = np.flatnonzero(ok)
            metas = [{k: batch[k][i] for k in ("video_id", "video_uri", "clip_index", "fps",
                                              "frame_indices", "frame_bytes")} for i in idx]
            t0 = time.perf_counter()
            try:
                outs = [pickle.dumps(r) for r in self.runner.run(np.stack(batch["frames"][idx]), metas)]
            except (RuntimeError, ValueError, OSError) as err:  # a model failure is recorded per clip
                log.exception("model %s failed on a batch", self.spec.output_key)
                outs = [pickle.dumps({"model_error": f"{type(err).__name__}: {err}"})] * len(idx)
            per_clip = (time.perf_counter() - t0) / len(idx)
            for j, i in enumerate(idx):
                results[i] = outs[j]
                infer_s[i] = per_clip
        batch[self.column] = np.array(results, dtype=object)
        batch[f"infer_s:{self.spec.output_key}"] = infer_s
        if self.drop_frames:
            del batch["frames"]
        return batch

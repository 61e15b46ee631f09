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
from pipeline.uris import redact_uri

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


def decode_segment(segment_json: str, probe_json: str, sampling: dict, decode: dict,
                   storage_options: dict, want_packet_sizes: bool) -> Iterator[dict[str, Any]]:
    """Decode one segment into clip rows; a failure ends the stream with one ``ok = False`` row.

    Runs inside the decode actor's child process (see ``pipeline.decode_process``).
    """
    from pipeline.decode_process import maybe_inject_hang

    seg = SegmentTask.from_row(json.loads(segment_json))
    probe = VideoProbe(**json.loads(probe_json))
    sampling_spec = SamplingSpec.model_validate(sampling)
    decode_spec = DecodeSpec.model_validate(decode)
    size = tuple(sampling_spec.size)
    t0 = time.perf_counter()
    emitted = 0
    try:
        maybe_inject_hang(seg.video.video_uri)
        src = read_source(seg.video, storage_options)
        sizes = frame_packet_sizes(src) if want_packet_sizes else None
        reader = open_reader(decode_spec.backend, src, probe, size, "crop", decode_spec.threads)
        for clip, frames in iter_clips(reader, list(seg.clips), size):
            now = time.perf_counter()
            idx = np.asarray(clip.frame_indices, np.int64)
            fb = (sizes[np.minimum(idx, len(sizes) - 1)] if sizes is not None and len(sizes)
                  else np.zeros(len(idx), np.int64))
            yield {"ok": True, "clip_index": clip.clip_index,
                   "start_frame": clip.start_frame, "end_frame": clip.end_frame,
                   "start_s": clip.start_s, "end_s": clip.end_s,
                   "frame_indices": idx, "frame_bytes": fb, "decode_s": now - t0, "frames": frames,
                   "status": "ok", "error_type": "", "error_message": "", "emitted_before_error": 0}
            emitted += 1
            t0 = time.perf_counter()
    except (errors.VideoError, OSError, ValueError, RuntimeError, MemoryError) as err:
        log.warning("segment %d of %s failed: %s", seg.segment_index,
                    redact_uri(seg.video.video_uri), redact_uri(str(err)))
        yield {**error_fields(err), "ok": False, "decode_s": time.perf_counter() - t0,
               "emitted_before_error": emitted}


class DecodeWorker:
    """Ray actor: decodes segments into clips through a killable child process.

    One reader per segment; the actor and its child process are reused across segments. A
    segment that exceeds ``decode.timeout_s`` becomes a ``timeout`` row; the child is replaced.
    """

    def __init__(self, sampling: dict, decode: dict, storage_options: dict, want_packet_sizes: bool):
        from pipeline.decode_process import IsolatedDecoder

        self.sampling = SamplingSpec.model_validate(sampling)
        self.decode = DecodeSpec.model_validate(decode)
        self.args = (sampling, decode, storage_options, want_packet_sizes)
        self.isolated = IsolatedDecoder(decode_segment) if self.decode.isolation == "process" else None

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        seg = json.loads(row["segment"])
        video = seg["video"]
        base = {"video_id": video["video_id"], "video_uri": video["video_uri"],
                "segment_index": seg["segment_index"], "clips_in_segment": len(seg["clips"]),
                "fps": json.loads(row["probe"])["fps"]}
        args = (row["segment"], row["probe"], *self.args)
        emitted = 0
        t0 = time.perf_counter()
        try:
            rows = (self.isolated.run(args, self.decode.timeout_s) if self.isolated
                    else decode_segment(*args))
            for out in rows:
                if not out["ok"]:
                    yield self._error_row(base, out)
                    continue  # the stream ends after an error row; read it to its end
                emitted += 1
                yield {**base, **out}
        except errors.VideoError as err:  # timeout or crash of the child process
            log.warning("segment %s of %s: %s", seg["segment_index"], redact_uri(video["video_uri"]), err)
            yield self._error_row(base, {**error_fields(err), "decode_s": time.perf_counter() - t0,
                                         "emitted_before_error": emitted})

    def _error_row(self, base: dict[str, Any], err: dict[str, Any]) -> dict[str, Any]:
        clip_len, size = self.sampling.clip_len, tuple(self.sampling.size)
        return {**base, "ok": False, "clip_index": -1, "start_frame": 0, "end_frame": 0,
                "start_s": 0.0, "end_s": 0.0, "frame_indices": np.zeros(clip_len, np.int64),
                "frame_bytes": np.zeros(clip_len, np.int64),
                "frames": np.zeros((clip_len, *size, 3), np.uint8),
                "status": err["status"], "error_type": err["error_type"],
                "error_message": err["error_message"], "decode_s": err["decode_s"],
                "emitted_before_error": err["emitted_before_error"]}


class ModelWorker:
    """Ray actor: runs one model over clip batches; the model is built once per actor."""

    def __init__(self, model: dict, output: str, storage_options: dict, tracking_uri: str | None,
                 drop_frames: bool, clip_shape: tuple[int, int, int] | None = None):
        from pipeline.model_runners import build_runner

        self.spec = ModelSpec.model_validate(model)
        self.runner = build_runner(self.spec, output=output, storage_options=storage_options,
                                   tracking_uri=tracking_uri, clip_shape=clip_shape)
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

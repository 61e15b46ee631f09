"""Stage 3: decode actors turn segment rows into clip rows.

A clip row carries the clip's frames ``(T, H, W, 3)`` uint8 (``(0, H, W, 3)`` in an error row;
a block holding both is a variable-shaped tensor column), its frame indices and real
presentation times, and the video's columns (``rows.VIDEO_COLUMNS``) so the writer can record
the video without a lookup. A segment that fails becomes one ``ok = False`` row with its typed
error (after the clips it produced, counted in ``emitted_before_error``); a segment row that
arrives failed (the probe refused the video) passes on as such a row. Every segment therefore
reaches the writer.

Decoding runs in the actor's killable child process (``pipeline.child_process``): a segment
exceeding ``decode.timeout_s`` becomes a ``timeout`` row and the child is replaced.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline import errors
from pipeline.decode import decode_clips
from pipeline.probe_stage import error_fields
from pipeline.rows import VIDEO_COLUMNS, clip_plans_from_arrow, probe_from_row, task_from_row
from pipeline.source import read_source
from pipeline.spec import DecodeSpec, SamplingSpec
from pipeline.uris import redact_uri

log = logging.getLogger(__name__)


def frame_packet_sizes(src) -> np.ndarray:
    """Encoded size in bytes of each frame, in presentation order (demux only, no decoding)."""
    import av

    if isinstance(src, io.BytesIO):
        src.seek(0)
    with av.open(src, "r") as container:
        stream = container.streams.video[0]
        packets = [
            (p.pts if p.pts is not None else i, p.size)
            for i, p in enumerate(container.demux(stream))
            if p.size
        ]
    if isinstance(src, io.BytesIO):
        src.seek(0)
    return np.array([size for _, size in sorted(packets)], dtype=np.int64)


def decode_segment(
    row: dict[str, Any],
    sampling: dict,
    decode: dict,
    storage_options: dict,
    want_packet_sizes: bool,
) -> Iterator[dict[str, Any]]:
    """Clip fields of one segment row; a failure ends the stream with one ``ok = False`` row.

    Runs inside the decode actor's child process (see ``pipeline.child_process``).
    """
    from pipeline.child_process import maybe_inject_hang

    sampling_spec = SamplingSpec.model_validate(sampling)
    decode_spec = DecodeSpec.model_validate(decode)
    task, probe = task_from_row(row), probe_from_row(row)
    size = tuple(sampling_spec.size)
    t0 = time.perf_counter()
    emitted = 0
    try:
        maybe_inject_hang(task.video_uri)
        src = read_source(task, storage_options)
        sizes = frame_packet_sizes(src) if want_packet_sizes else None
        for clip, frames, backend in decode_clips(
            src,
            probe,
            clip_plans_from_arrow(row["clips"]),
            size,
            backend=decode_spec.backend,
            threads=decode_spec.threads,
            resize="crop",
        ):
            now = time.perf_counter()
            idx = np.asarray(clip.frame_indices, np.int64)
            fb = (
                sizes[np.minimum(idx, len(sizes) - 1)]
                if sizes is not None and len(sizes)
                else np.zeros(len(idx), np.int64)
            )
            yield {
                "ok": True,
                "clip_index": clip.clip_index,
                "start_frame": clip.start_frame,
                "end_frame": clip.end_frame,
                "start_s": clip.start_s,
                "end_s": clip.end_s,
                "frame_indices": idx,
                "frame_bytes": fb,
                "decode_s": now - t0,
                "decode_backend": backend,
                "frames": frames,
                "status": "ok",
                "error_type": "",
                "error_message": "",
                "emitted_before_error": 0,
            }
            emitted += 1
            t0 = time.perf_counter()
    except (errors.VideoError, OSError, ValueError, RuntimeError, MemoryError) as err:
        log.warning(
            "segment %d of %s failed: %s",
            row["segment_index"],
            redact_uri(task.video_uri),
            redact_uri(str(err)),
        )
        yield {
            **error_fields(err),
            "ok": False,
            "decode_s": time.perf_counter() - t0,
            "emitted_before_error": emitted,
        }


class DecodeWorker:
    """Ray actor: segment rows in, clip rows out; the actor and its child process are reused
    across segments, one reader per segment."""

    def __init__(
        self, *, sampling: dict, decode: dict, storage_options: dict, want_packet_sizes: bool
    ):
        from pipeline.child_process import IsolatedDecoder

        self.sampling = SamplingSpec.model_validate(sampling)
        self.decode = DecodeSpec.model_validate(decode)
        self.args = (sampling, decode, storage_options, want_packet_sizes)
        self.isolated = (
            IsolatedDecoder(decode_segment) if self.decode.isolation == "process" else None
        )
        if self.isolated:  # started with the actor, not on the first segment
            self.isolated.start()

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        base = {name: row.get(name) for name in VIDEO_COLUMNS if name != "clips_in_segment"}
        base["clips_in_segment"] = len(row["clips"])
        if row["status"] != "ok":
            yield self._error_row(
                base, {k: row[k] for k in ("status", "error_type", "error_message")}, 0.0, 0
            )
            return
        segment = {k: v for k, v in row.items()}
        emitted = 0
        t0 = time.perf_counter()
        try:
            rows = (
                self.isolated.run((segment, *self.args), self.decode.timeout_s)
                if self.isolated
                else decode_segment(segment, *self.args)
            )
            for out in rows:
                if not out["ok"]:
                    yield self._error_row(base, out, out["decode_s"], out["emitted_before_error"])
                    continue  # the stream ends after an error row; read it to its end
                emitted += 1
                yield {**base, **out}
        except errors.VideoError as err:  # timeout or crash of the child process
            log.warning(
                "segment %s of %s: %s", row["segment_index"], redact_uri(row["video_uri"]), err
            )
            yield self._error_row(base, error_fields(err), time.perf_counter() - t0, emitted)

    def _error_row(
        self, base: dict[str, Any], err: dict[str, Any], decode_s: float, emitted: int
    ) -> dict[str, Any]:
        clip_len, size = self.sampling.clip_len, tuple(self.sampling.size)
        return {
            **base,
            "ok": False,
            "clip_index": -1,
            "start_frame": 0,
            "end_frame": 0,
            "start_s": 0.0,
            "end_s": 0.0,
            "frame_indices": np.zeros(clip_len, np.int64),
            "frame_bytes": np.zeros(clip_len, np.int64),
            "decode_s": decode_s,
            "decode_backend": "",
            # No frames: a failed segment's row must not carry a clip of zeros through the
            # object store (300 KB at 112x112; a manifest of missing files stalled on them).
            "frames": np.zeros((0, *size, 3), np.uint8),
            "status": err["status"],
            "error_type": err["error_type"],
            "error_message": err["error_message"],
            "emitted_before_error": emitted,
        }

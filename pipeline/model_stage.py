"""Stage 4: one actor pool per model adds that model's typed columns to each clip row.

Input and output are Arrow tables. For model ``key`` the stage appends ``key:labels``
(list<string>), ``key:scores`` (list<float32>), ``key:feature`` (fixed_size_list<float32>[D],
or an all-null list<float32> for models without features), ``key:metrics``
(map<string, float64>), ``key:media_uri``, ``key:error`` (the model's failure on this clip's
batch, else null), ``key:infer_s`` and ``key:done_at`` (epoch seconds the batch finished). The
last model drops the frames, so only results travel on to the writer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
from ray.data.block import BlockAccessor

from pipeline.rows import FRAMES, METRICS_TYPE, model_column
from pipeline.spec import ModelSpec

log = logging.getLogger(__name__)

_META = ("video_id", "video_uri", "clip_index")


def _feature_array(features: list[np.ndarray | None], dim: int | None) -> pa.Array:
    if not dim:
        return pa.nulls(len(features), pa.list_(pa.float32()))
    flat = np.zeros((len(features), dim), np.float32)  # (N, D); rows without a feature are null
    mask = np.array([f is None for f in features])
    for i, f in enumerate(features):
        if f is not None:
            flat[i] = np.asarray(f, np.float32).reshape(-1)
    values = pa.array(flat.reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(mask))


class ModelWorker:
    """Ray actor: runs one model over clip batches; the model is built once per actor."""

    def __init__(
        self,
        *,
        model: dict,
        output: str,
        storage_options: Mapping[str, Any],
        tracking_uri: str | None,
        drop_frames: bool,
        clip_shape: tuple[int, int, int],
    ):
        from pipeline.models import build_model, infer_task

        self.spec = ModelSpec.model_validate(model)
        self.key = self.spec.output_key
        self.model = build_model(
            self.spec,
            output=output,
            storage_options=storage_options,
            tracking_uri=tracking_uri,
            clip_shape=clip_shape,
        )
        self.drop_frames = drop_frames
        # The feature width is part of the column type: learn it now, so every batch -- even
        # one whose clips all failed to decode -- has the same schema. Tasks that write media
        # are not run on a blank clip (they would write a file).
        self.feature_dim: int | None = None
        if infer_task(self.spec) in ("classify", "embed"):
            blank = np.zeros((1, *clip_shape, 3), np.uint8)  # (1, T, H, W, 3)
            meta = {
                "video_id": "",
                "video_uri": "",
                "clip_index": 0,
                "fps": 1.0,
                "frame_indices": np.arange(clip_shape[0]),
                "frame_bytes": np.zeros(clip_shape[0]),
            }
            result = self.model.run(blank, [meta])[0]
            if result.feature is not None:
                self.feature_dim = int(np.asarray(result.feature).size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        ok = np.asarray(batch.column("ok").to_numpy(zero_copy_only=False), bool)
        labels: list[list[str] | None] = [None] * n
        scores: list[list[float] | None] = [None] * n
        features: list[np.ndarray | None] = [None] * n
        metrics: list[list[tuple[str, float]] | None] = [None] * n
        media: list[str | None] = [None] * n
        error: list[str | None] = [None] * n
        infer_s = np.zeros(n, np.float64)
        idx = np.flatnonzero(ok)
        if len(idx):
            # Columns to numpy first (the frames zero-copy), then the ok rows: an Arrow ``take``
            # of the frames column copied every batch element by element.
            acc = BlockAccessor.for_block(batch)
            cols = acc.to_numpy([FRAMES, "frame_indices", "frame_bytes", "probe_fps"])
            frames = cols[FRAMES] if len(idx) == n else cols[FRAMES][idx]  # (B, T, H, W, 3)
            if frames.dtype == object:  # a block with error rows (no frames) among the clips
                frames = np.stack(list(frames))
            meta = {k: batch.column(k).to_pylist() for k in _META}
            metas = [
                {
                    **{k: meta[k][i] for k in _META},
                    "fps": float(cols["probe_fps"][i]),
                    "frame_indices": cols["frame_indices"][i],
                    "frame_bytes": cols["frame_bytes"][i],
                }
                for i in idx
            ]
            t0 = time.perf_counter()
            try:
                results = self.model.run(np.ascontiguousarray(frames), metas)
                failure = None
            except (RuntimeError, ValueError, OSError) as err:  # recorded per clip, never fatal
                log.exception("model %s failed on a batch", self.key)
                results, failure = [None] * len(idx), f"{type(err).__name__}: {err}"[:2000]
            per_clip = (time.perf_counter() - t0) / len(idx)
            for j, i in enumerate(idx):
                infer_s[i] = per_clip
                res = results[j]
                if res is None:
                    error[i] = failure
                    continue
                labels[i] = list(res.labels)
                scores[i] = [float(s) for s in res.scores]
                features[i] = res.feature
                metrics[i] = [(str(k), float(v)) for k, v in res.metrics.items()]
                media[i] = res.media_uri
        done_at = time.time()
        columns = {
            "labels": pa.array(labels, pa.list_(pa.string())),
            "scores": pa.array(scores, pa.list_(pa.float32())),
            "feature": _feature_array(features, self.feature_dim),
            "metrics": pa.array(metrics, METRICS_TYPE),
            "media_uri": pa.array(media, pa.string()),
            "error": pa.array(error, pa.string()),
            "infer_s": pa.array(infer_s, pa.float64()),
            "done_at": pa.array(np.full(n, done_at), pa.float64()),
        }
        if self.drop_frames:
            batch = batch.drop_columns([FRAMES])
        for name, array in columns.items():
            batch = batch.append_column(model_column(self.key, name), array)
        return batch

"""Nearest clips by cosine similarity of their ``feature`` vectors.

Given one clip (``video_id``, ``clip_index``), rank every other clip of the same model by the
cosine similarity of its ``feature`` to the query clip's. The ``clips`` table is streamed in
record batches reading only the columns the answer needs, scored with one matrix-vector product
per batch, and only a running top-k is kept, so memory stays bounded on archive-sized tables.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.errors import UserError
from pipeline.query import open_table, with_read_hint
from pipeline.uris import filesystem, redact_uri

logger = logging.getLogger(__name__)

RESULT_COLUMNS = ("video_id", "video_uri", "clip_index", "start_s", "end_s")
RESULT_SCHEMA = pa.schema(
    [
        ("rank", pa.int32()),
        ("video_id", pa.string()),
        ("video_uri", pa.string()),
        ("clip_index", pa.int32()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("model", pa.string()),
        ("score", pa.float64()),
    ]
)
_BATCH_ROWS = 8192  # x D float64 values per scored batch: 32 MB at D=512


class SimilarityError(UserError, ValueError):
    """The nearest-clip search cannot run for the given query clip."""


class ClipNotFoundError(SimilarityError, LookupError):
    """The video, the clip or the model's row for that clip is not in the ``clips`` table."""


class NoFeatureError(SimilarityError):
    """The query clip has no usable feature vector (null, or zero norm)."""


class AmbiguousModelError(SimilarityError):
    """Several models have features for the query clip; pass ``model``."""


def similar(
    output: str,
    video_id: str,
    clip_index: int,
    k: int = 10,
    model: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """The ``k`` clips most similar to one clip, by cosine similarity of ``feature``.

    Candidates are the clips of the same model as the query clip, excluding the query clip
    itself; clips with a null or all-zero feature are skipped. Ties are broken by
    ``(video_id, clip_index)`` so results are deterministic.

    Args:
        output: The job's output URI.
        video_id: Video of the query clip.
        clip_index: Index of the query clip within its video.
        k: Number of neighbours to return.
        model: Model whose features to compare; needed only when several models produced
            features for the query clip.
        storage_options: fsspec options for ``output``.

    Returns:
        Up to ``k`` rows with :data:`RESULT_SCHEMA` (``rank`` from 1, ``score`` in [-1, 1]),
        best first.

    Raises:
        ValueError: ``k`` < 1.
        ClipNotFoundError: No output, unknown video or clip, or no row of ``model`` for the clip.
        NoFeatureError: The query clip's feature is null or zero.
        AmbiguousModelError: ``model`` is None and several models have features for the clip.
        SimilarityError: A Parquet file of the table cannot be decoded (the message says why).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    fs, root = filesystem(output, storage_options)
    if not fs.exists(root):
        raise ClipNotFoundError(f"no job output at {redact_uri(output)}")
    try:
        return _similar(
            open_table(output, "clips", storage_options), output, video_id, clip_index, k, model
        )
    except pa.ArrowInvalid as exc:  # a file pyarrow cannot decode: say which problem and what to do
        raise SimilarityError(
            with_read_hint(f"cannot read {redact_uri(output)}/clips: {exc}")
        ) from exc


def _similar(
    dataset: ds.Dataset, output: str, video_id: str, clip_index: int, k: int, model: str | None
) -> pa.Table:
    model, query_vector = _query_feature(dataset, output, video_id, clip_index, model)
    query_unit = query_vector / np.linalg.norm(query_vector)

    scanner = dataset.scanner(
        columns=[*RESULT_COLUMNS, "feature"],
        filter=(pc.field("model") == model) & pc.field("feature").is_valid(),
        batch_size=_BATCH_ROWS,
    )
    best: pa.Table | None = None
    for batch in scanner.to_batches():
        scored = _score_batch(batch, query_unit, video_id, clip_index)
        if scored is not None:
            best = _top_k(scored if best is None else pa.concat_tables([best, scored]), k)
    if best is None:
        return RESULT_SCHEMA.empty_table()
    n = best.num_rows
    columns = {"rank": pa.array(np.arange(1, n + 1, dtype=np.int32))}
    columns.update({name: best.column(name) for name in RESULT_COLUMNS})
    columns.update(model=pa.repeat(pa.scalar(model), n), score=best.column("score"))
    return pa.table(columns, schema=RESULT_SCHEMA)


def _query_feature(
    dataset: ds.Dataset, output: str, video_id: str, clip_index: int, model: str | None
) -> tuple[str, np.ndarray]:
    """The model and feature vector of the query clip, or a clear error."""
    where = (pc.field("video_id") == video_id) & (pc.field("clip_index") == clip_index)
    rows = dataset.to_table(columns=["model", "feature"], filter=where)
    if rows.num_rows == 0:
        clips = dataset.to_table(columns=["clip_index"], filter=pc.field("video_id") == video_id)
        if clips.num_rows == 0:
            raise ClipNotFoundError(f"unknown video_id {video_id!r} in {redact_uri(output)}/clips")
        indices = sorted(set(clips.column("clip_index").to_pylist()))
        raise ClipNotFoundError(
            f"video {video_id!r} has no clip {clip_index}; its clips are {_ranges(indices)}"
        )

    models = rows.column("model").to_pylist()
    features = rows.column("feature").to_pylist()
    if model is not None:
        if model not in models:
            raise ClipNotFoundError(
                f"clip {clip_index} of video {video_id!r} has no row for model {model!r}; "
                f"models: {', '.join(sorted(set(map(str, models))))}"
            )
        chosen = model
    else:
        with_feature = sorted({m for m, f in zip(models, features) if f is not None})
        if not with_feature:
            raise NoFeatureError(
                f"clip {clip_index} of video {video_id!r} has no feature for any model "
                f"({', '.join(sorted(set(map(str, models))))}): these models output no features"
            )
        if len(with_feature) > 1:
            raise AmbiguousModelError(
                f"clip {clip_index} of video {video_id!r} has features from several models "
                f"({', '.join(with_feature)}); choose one with model="
            )
        chosen = with_feature[0]
    feature = next((f for m, f in zip(models, features) if m == chosen and f is not None), None)
    if feature is None:
        raise NoFeatureError(
            f"clip {clip_index} of video {video_id!r} has a null feature for model {chosen!r}: "
            "the model outputs no features"
        )
    vector = np.asarray(feature, dtype=np.float64)
    if not np.isfinite(vector).all() or not np.linalg.norm(vector) > 0:
        raise NoFeatureError(
            f"clip {clip_index} of video {video_id!r} has a zero or non-finite feature for "
            f"model {chosen!r}; cosine similarity is undefined"
        )
    return chosen, vector


def _score_batch(
    batch: pa.RecordBatch, query_unit: np.ndarray, video_id: str, clip_index: int
) -> pa.Table | None:
    """Rows of ``batch`` other than the query clip with their cosine ``score``; None if none."""
    dim = query_unit.shape[0]
    is_query = pc.fill_null(
        pc.and_(
            pc.equal(batch.column("video_id"), video_id),
            pc.equal(batch.column("clip_index"), clip_index),
        ),
        False,
    )
    right_length = pc.equal(pc.list_value_length(batch.column("feature")), dim)
    wrong = pc.sum(pc.cast(pc.invert(right_length), pa.int64())).as_py() or 0
    if wrong:
        logger.warning("skipped %d clips whose feature length is not %d", wrong, dim)
    batch = batch.filter(pc.and_(pc.invert(is_query), right_length))
    if batch.num_rows == 0:
        return None
    matrix = batch.column("feature").flatten().to_numpy(zero_copy_only=False)
    matrix = matrix.astype(np.float64).reshape(batch.num_rows, dim)  # (N, D)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = (matrix @ query_unit) / np.linalg.norm(matrix, axis=1)  # (N,)
    valid = np.isfinite(scores)  # zero-norm or non-finite features have no defined cosine
    if not valid.any():
        return None
    table = pa.Table.from_batches([batch.select(list(RESULT_COLUMNS))])
    return table.append_column("score", pa.array(scores)).filter(pa.array(valid))


def _top_k(table: pa.Table, k: int) -> pa.Table:
    order = [("score", "descending"), ("video_id", "ascending"), ("clip_index", "ascending")]
    return table.sort_by(order).slice(0, k).combine_chunks()


def _ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"`` (long gaps-free lists stay short in messages)."""
    parts: list[str] = []
    start = prev = values[0]
    for value in values[1:] + [None]:  # type: ignore[list-item]
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ", ".join(parts)

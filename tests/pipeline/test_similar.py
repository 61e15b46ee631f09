"""pipeline.similar: cosine nearest clips over real Parquet tables (local and moto S3)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pipeline import similar as similar_module
from pipeline.similar import (
    RESULT_SCHEMA,
    AmbiguousModelError,
    ClipNotFoundError,
    NoFeatureError,
    SimilarityError,
    similar,
)

# Query clip v1/0 = (1, 0, 0). Hand-computed cosines to it:
#   v2/2 (2, 0.1, 0)  -> 2 / sqrt(4.01)          = 0.99875...
#   v1/1 (1, 1, 0)    -> 1 / sqrt(2)             = 0.70710...
#   v3/0 (1, 1, 1)    -> 1 / sqrt(3)             = 0.57735...
#   v2/0 (0, 1, 0)    -> 0
#   v2/1 (-1, 0, 0)   -> -1
#   v3/1 (0, 0, 0)    -> undefined: skipped;  v3/2 null: skipped
EXPECTED = [
    ("v2", 2, 2 / math.sqrt(4.01)),
    ("v1", 1, 1 / math.sqrt(2)),
    ("v3", 0, 1 / math.sqrt(3)),
    ("v2", 0, 0.0),
    ("v2", 1, -1.0),
]


@pytest.fixture
def job(clips_table):
    """Clips of model m (D=3) in two files, plus other models sharing some clips."""
    part_a = clips_table(
        [
            {"video_id": "v1", "clip_index": 0, "feature": [1.0, 0.0, 0.0]},
            {
                "video_id": "v1",
                "clip_index": 1,
                "feature": [1.0, 1.0, 0.0],
                "start_s": 0.32,
                "end_s": 0.64,
            },
            {"video_id": "v2", "clip_index": 0, "feature": [0.0, 1.0, 0.0]},
            {"video_id": "v2", "clip_index": 1, "feature": [-1.0, 0.0, 0.0]},
        ],
        feature_dim=3,
    )
    part_b = clips_table(
        [
            {"video_id": "v2", "clip_index": 2, "feature": [2.0, 0.1, 0.0]},
            {"video_id": "v3", "clip_index": 0, "feature": [1.0, 1.0, 1.0]},
            {"video_id": "v3", "clip_index": 1, "feature": [0.0, 0.0, 0.0]},
            {"video_id": "v3", "clip_index": 2, "feature": None},
        ],
        feature_dim=3,
    )
    # Same clips seen by other models: a 2-D embedding, and a classifier without features.
    other = clips_table(
        [
            {"video_id": "v1", "clip_index": 0, "model": "flow", "feature": [1.0, 0.0]},
            {"video_id": "v2", "clip_index": 2, "model": "flow", "feature": [1.0, 0.0]},
        ],
        feature_dim=2,
    )
    nofeat = clips_table(
        [
            {"video_id": "v3", "clip_index": 0, "model": "cls", "feature": None},
            {"video_id": "v4", "clip_index": 0, "model": "cls", "feature": None},
        ],
        feature_dim=None,
    )
    return {"part-0": part_a, "part-1": part_b, "part-2": other, "part-3": nofeat}


def _write(job, write_parquet, out: str, storage_options=None) -> str:
    for name, table in job.items():
        write_parquet(table, f"{out}/clips/{name}.parquet", storage_options)
    return out


@pytest.fixture
def local_output(tmp_path: Path, job, write_parquet) -> str:
    return _write(job, write_parquet, str(tmp_path / "out"))


def _triples(result):
    return list(
        zip(
            result.column("video_id").to_pylist(),
            result.column("clip_index").to_pylist(),
            result.column("score").to_pylist(),
        )
    )


def _assert_matches(result, expected) -> None:
    got = _triples(result)
    assert [(v, c) for v, c, _ in got] == [(v, c) for v, c, _ in expected]
    assert [s for _, _, s in got] == pytest.approx([s for _, _, s in expected], abs=1e-6)


def test_ranking_matches_hand_computation(local_output: str) -> None:
    result = similar(local_output, "v1", 0, k=3, model="m")
    assert result.schema == RESULT_SCHEMA
    _assert_matches(result, EXPECTED[:3])
    assert result.column("rank").to_pylist() == [1, 2, 3]
    assert set(result.column("model").to_pylist()) == {"m"}
    row = result.slice(1, 1).to_pylist()[0]
    assert (row["video_uri"], row["start_s"], row["end_s"]) == ("file:///videos/v1.mp4", 0.32, 0.64)

    everything = similar(local_output, "v1", 0, k=100, model="m")
    _assert_matches(everything, EXPECTED)  # query clip, zero and null features excluded


def test_streaming_top_k_across_batches(local_output: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(similar_module, "_BATCH_ROWS", 1)
    _assert_matches(similar(local_output, "v1", 0, k=4, model="m"), EXPECTED[:4])


def test_random_features_against_brute_force(
    tmp_path: Path, clips_table, write_parquet, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 16)).astype(np.float32)
    rows = [
        {"video_id": f"v{i // 10:02d}", "clip_index": i % 10, "feature": f.tolist()}
        for i, f in enumerate(features)
    ]
    for part in range(3):
        write_parquet(
            clips_table(rows[part * 100 : (part + 1) * 100], feature_dim=16),
            f"{tmp_path}/clips/part-{part}.parquet",
        )
    monkeypatch.setattr(similar_module, "_BATCH_ROWS", 37)

    query_row = 123
    x = features.astype(np.float64)
    cosine = x @ x[query_row] / (np.linalg.norm(x, axis=1) * np.linalg.norm(x[query_row]))
    cosine[query_row] = -np.inf
    best = np.argsort(-cosine, kind="stable")[:7]
    expected = [(rows[i]["video_id"], rows[i]["clip_index"], cosine[i]) for i in best]
    _assert_matches(similar(str(tmp_path), "v12", 3, k=7), expected)


def test_ties_are_broken_by_video_and_clip(tmp_path: Path, clips_table, write_parquet) -> None:
    write_parquet(
        clips_table(
            [
                {"video_id": "q", "clip_index": 0, "feature": [1.0, 0.0]},
                {"video_id": "b", "clip_index": 1, "feature": [2.0, 0.0]},
                {"video_id": "a", "clip_index": 5, "feature": [1.0, 0.0]},
                {"video_id": "b", "clip_index": 0, "feature": [3.0, 0.0]},
            ],
            feature_dim=2,
        ),
        f"{tmp_path}/clips/part-0.parquet",
    )
    result = similar(str(tmp_path), "q", 0, k=2)
    assert [(v, c) for v, c, _ in _triples(result)] == [("a", 5), ("b", 0)]


def test_model_is_inferred_when_only_one_has_features(local_output: str) -> None:
    # v2/1 has rows for m only; v1/0 would be ambiguous (m and flow).
    assert set(similar(local_output, "v2", 1, k=2).column("model").to_pylist()) == {"m"}
    with pytest.raises(AmbiguousModelError, match="flow, m"):
        similar(local_output, "v1", 0)
    flow = similar(local_output, "v1", 0, model="flow")
    assert _triples(flow) == [("v2", 2, pytest.approx(1.0))]


def test_clear_errors(local_output: str) -> None:
    with pytest.raises(ClipNotFoundError, match="unknown video_id 'nope'"):
        similar(local_output, "nope", 0)
    with pytest.raises(ClipNotFoundError, match="video 'v2' has no clip 7; its clips are 0-2"):
        similar(local_output, "v2", 7)
    with pytest.raises(ClipNotFoundError, match="no row for model 'cls'"):
        similar(local_output, "v2", 0, model="cls")
    with pytest.raises(NoFeatureError, match="null feature for model 'm'"):
        similar(local_output, "v3", 2, model="m")
    with pytest.raises(NoFeatureError, match="no feature for any model"):
        similar(local_output, "v4", 0)
    with pytest.raises(NoFeatureError, match="zero"):
        similar(local_output, "v3", 1, model="m")
    with pytest.raises(ValueError, match="k must be"):
        similar(local_output, "v1", 0, k=0, model="m")
    with pytest.raises(LookupError):  # ClipNotFoundError is also a LookupError
        similar(local_output, "v9", 0)


def test_similar_over_s3(s3_server, job, write_parquet) -> None:
    bucket = s3_server.make_bucket("similar-test")
    out = _write(job, write_parquet, f"{bucket}/jobs/run-1", s3_server.storage_options)
    result = similar(out, "v1", 0, k=3, model="m", storage_options=s3_server.storage_options)
    _assert_matches(result, EXPECTED[:3])


def test_missing_output_and_unreadable_files_are_clear(tmp_path: Path, clips_table) -> None:
    import pyarrow.parquet as pq

    with pytest.raises(ClipNotFoundError, match="no job output"):
        similar(str(tmp_path / "nope"), "v1", 0)
    table = clips_table(
        [
            {"video_id": "v", "clip_index": 0, "feature": [1.0, 0.0]},
            {"video_id": "v", "clip_index": 1, "feature": None},
            {"video_id": "v", "clip_index": 2, "feature": [1.0, 1.0]},
        ],
        feature_dim=2,
    )
    (tmp_path / "clips").mkdir()
    pq.write_table(table, tmp_path / "clips" / "part-0.parquet")  # Arrow schema stored, with nulls
    try:
        result = similar(str(tmp_path), "v", 0)
    except SimilarityError as exc:  # pyarrow without the fix for apache/arrow#35692
        assert "store_schema=False" in str(exc)
    else:
        assert [(v, c) for v, c, _ in _triples(result)] == [("v", 2)]

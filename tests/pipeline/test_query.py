"""pipeline.query: DuckDB views over real Parquet output (local and moto S3), read-only."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import tables
from pipeline.query import QueryError, QueryRefusedError, query, write_result


@pytest.fixture
def job_rows(clips_table, videos_table):
    """Two models with different feature sizes, one null feature, three video statuses."""
    clips_a = clips_table(
        [
            {
                "video_id": "v1",
                "clip_index": 0,
                "feature": [1.0, 0.0, 0.0],
                "labels": ["walk", "run"],
                "scores": [0.75, 0.25],
                "metrics": [("motion", 1.5)],
            },
            {"video_id": "v1", "clip_index": 1, "feature": [0.0, 1.0, 0.0], "labels": ["run"]},
            {"video_id": "v2", "clip_index": 0, "feature": None, "labels": ["swim"]},
        ],
        feature_dim=3,
    )
    clips_b = clips_table(
        [
            {
                "video_id": "v1",
                "clip_index": 0,
                "model": "flow",
                "feature": [0.5, 0.5],
                "labels": [],
            },
        ],
        feature_dim=2,
    )
    videos = videos_table(
        [
            {"video_id": "v1", "num_clips": 2},
            {"video_id": "v2", "num_clips": 1},
            {
                "video_id": "v3",
                "status": "error",
                "error_type": "DecodeError",
                "num_clips": 0,
                "error_message": "moov atom not found",
            },
        ]
    )
    return clips_a, clips_b, videos


@pytest.fixture
def local_output(tmp_path: Path, job_rows, write_parquet) -> str:
    clips_a, clips_b, videos = job_rows
    out = tmp_path / "out"
    write_parquet(clips_a, f"{out}/clips/part-00000.parquet")
    write_parquet(clips_b, f"{out}/clips/part-00001.parquet")
    write_parquet(videos, f"{out}/videos/part-00000.parquet")
    # In-flight and hidden files are not data: a half-written file must not break queries.
    (out / "clips" / "_part-00002.parquet.tmp").write_bytes(b"partial")
    (out / "clips" / ".part-00003.parquet").write_bytes(b"partial")
    write_parquet(clips_a, f"{out}/clips/_staging/part-9.parquet")
    (out / "_job.json").write_text("{}")
    return str(out)


def test_views_over_local_tables(local_output: str) -> None:
    result = query(
        local_output, "SELECT model, count(*) AS n FROM clips GROUP BY model ORDER BY model"
    )
    assert result.to_pylist() == [{"model": "flow", "n": 1}, {"model": "m", "n": 3}]

    result = query(
        local_output,
        """
        WITH per_video AS (
            SELECT video_id, count(*) AS clips FROM clips WHERE model = 'm' GROUP BY 1)
        SELECT v.video_id, v.status, coalesce(p.clips, 0) AS clips
        FROM videos v LEFT JOIN per_video p USING (video_id) ORDER BY v.video_id""",
    )
    assert result.to_pylist() == [
        {"video_id": "v1", "status": "ok", "clips": 2},
        {"video_id": "v2", "status": "ok", "clips": 1},
        {"video_id": "v3", "status": "error", "clips": 0},
    ]

    # Nested columns come through: labels, map metrics, variable-size features of both models.
    row = query(
        local_output,
        "SELECT labels[1] AS top1, metrics['motion'] AS motion, "
        "len(feature) AS d FROM clips WHERE video_id = 'v1' AND clip_index = 0 "
        "ORDER BY d",
    ).to_pylist()
    assert row == [{"top1": None, "motion": None, "d": 2}, {"top1": "walk", "motion": 1.5, "d": 3}]
    cosine = query(
        local_output,
        "SELECT list_cosine_similarity(feature, [1.0, 0.0, 0.0]) AS c "
        "FROM clips WHERE model = 'm' AND feature IS NOT NULL ORDER BY c",
    )
    assert cosine.column("c").to_pylist() == pytest.approx([0.0, 1.0])


def test_describe_shows_the_table_schemas(local_output: str) -> None:
    clips = query(local_output, "DESCRIBE clips").column("column_name").to_pylist()
    videos = query(local_output, "DESCRIBE videos").column("column_name").to_pylist()
    assert clips == tables.clips_schema(4).names
    assert videos == tables.VIDEOS_SCHEMA.names
    assert set(query(local_output, "SHOW TABLES").column("name").to_pylist()) == {"clips", "videos"}


def test_absent_table_is_an_empty_view(tmp_path: Path, job_rows, write_parquet) -> None:
    out = tmp_path / "only-clips"
    write_parquet(job_rows[0], f"{out}/clips/part-0.parquet")
    assert query(str(out), "SELECT count(*) AS n FROM videos").to_pylist() == [{"n": 0}]
    described = query(str(out), "DESCRIBE videos")
    assert described.column("column_name").to_pylist() == tables.VIDEOS_SCHEMA.names
    assert query(str(out), "SELECT count(*) AS n FROM clips").to_pylist() == [{"n": 3}]


def test_missing_output_is_a_query_error(tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="no job output"):
        query(str(tmp_path / "nope"), "SELECT 1")


@pytest.mark.parametrize(
    "sql",
    [
        "COPY (SELECT * FROM clips) TO '{target}'",
        "EXPLAIN ANALYZE COPY (SELECT 1) TO '{target}'",
        "SELECT 1; COPY (SELECT 1) TO '{target}'",
        "CREATE TABLE t AS SELECT * FROM clips",
        "INSERT INTO clips SELECT * FROM clips",
        "ATTACH '{target}' AS other",
        "PRAGMA version",
        "SET enable_external_access = true",
        "INSTALL httpfs",
        "LOAD httpfs",
        "EXPORT DATABASE '{target}'",
        "CALL pragma_version()",
    ],
)
def test_non_read_statements_are_refused(local_output: str, tmp_path: Path, sql: str) -> None:
    target = tmp_path / "written"
    with pytest.raises(QueryRefusedError, match="read-only"):
        query(local_output, sql.format(target=target))
    assert not target.exists()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM '{own}/clips/part-00000.parquet'",
        "SELECT * FROM read_parquet('{own}/clips/*.parquet')",
    ],
)
def test_sql_cannot_touch_files(local_output: str, sql: str) -> None:
    with pytest.raises(QueryError, match="Permission Error"):
        query(local_output, sql.format(own=local_output))


def test_sql_errors_carry_duckdbs_message(local_output: str) -> None:
    with pytest.raises(QueryError, match=r'Binder Error.*"nope"'):
        query(local_output, "SELECT nope FROM clips")
    with pytest.raises(QueryError, match="Parser Error"):
        query(local_output, "SELEC * FROM clips")
    with pytest.raises(QueryError, match="Catalog Error"):
        query(local_output, "SELECT * FROM frames")


def test_explain_of_a_read_is_allowed(local_output: str) -> None:
    plan = query(local_output, "EXPLAIN SELECT count(*) FROM clips")
    assert plan.num_rows >= 1


def test_views_over_s3(s3_server, job_rows, write_parquet) -> None:
    bucket = s3_server.make_bucket("query-test")
    out = f"{bucket}/jobs/run-1"
    clips_a, clips_b, videos = job_rows
    opts = s3_server.storage_options
    write_parquet(clips_a, f"{out}/clips/part-0.parquet", opts)
    write_parquet(clips_b, f"{out}/clips/part-1.parquet", opts)
    write_parquet(videos, f"{out}/videos/part-0.parquet", opts)
    write_parquet(clips_a, f"{out}/clips/_part-2.parquet", opts)  # in flight: not data

    result = query(
        out,
        "SELECT (SELECT count(*) FROM clips) AS clips, "
        "(SELECT count(*) FROM videos WHERE status = 'ok') AS ok",
        storage_options=opts,
    )
    assert result.to_pylist() == [{"clips": 4, "ok": 2}]
    with pytest.raises(QueryError, match="no job output"):
        query(f"{bucket}/jobs/missing", "SELECT 1", storage_options=opts)


def test_write_result_formats(local_output: str, tmp_path: Path) -> None:
    result = query(
        local_output,
        "SELECT video_id, clip_index, labels, metrics, feature FROM clips "
        "WHERE model = 'm' ORDER BY video_id, clip_index",
    )

    text = write_result(result, "table")
    lines = text.splitlines()
    assert lines[0].split() == ["video_id", "clip_index", "labels", "metrics", "feature"]
    assert lines[-1] == "(3 rows)" and "NULL" in lines[-2]

    rows = list(csv.DictReader(io.StringIO(write_result(result, "csv"))))
    assert [(r["video_id"], r["clip_index"]) for r in rows] == [
        ("v1", "0"),
        ("v1", "1"),
        ("v2", "0"),
    ]
    assert json.loads(rows[0]["labels"]) == ["walk", "run"] and rows[2]["feature"] == ""

    records = json.loads(write_result(result, "json"))
    assert records[0]["metrics"] == {"motion": 1.5} and records[1]["metrics"] == {}
    assert records[0]["feature"] == [1.0, 0.0, 0.0] and records[2]["feature"] is None

    dest = tmp_path / "result.parquet"
    assert write_result(result, "parquet", str(dest)) is None
    assert pq.read_table(dest).equals(result)
    csv_dest = tmp_path / "result.csv"
    assert write_result(result, "csv", str(csv_dest)) == csv_dest.read_text()
    with pytest.raises(ValueError, match="destination"):
        write_result(result, "parquet")
    with pytest.raises(ValueError, match="unknown format"):
        write_result(result, "xml")  # type: ignore[arg-type]
    assert write_result(pa.table({"x": pa.array([], pa.int64())}), "json") == "[]\n"


def test_fixed_size_feature_with_nulls_is_read_or_explained(tmp_path: Path, clips_table) -> None:
    table = clips_table(
        [
            {"video_id": "v", "clip_index": 0, "feature": None},
            {"video_id": "v", "clip_index": 1, "feature": [1.0, 2.0]},
        ],
        feature_dim=2,
    )
    (tmp_path / "clips").mkdir()
    pq.write_table(table, tmp_path / "clips" / "part-0.parquet")  # Arrow schema stored
    try:
        result = query(str(tmp_path), "SELECT count(feature) AS n FROM clips")
    except QueryError as exc:  # pyarrow without the fix for apache/arrow#35692
        assert "store_schema=False" in str(exc)
    else:
        assert result.to_pylist() == [{"n": 1}]

"""Read-only SQL over a job's output tables with DuckDB.

``query(output, sql)`` opens an in-memory DuckDB connection with two views, ``clips`` and
``videos``, over the job's Parquet files (``{output}/clips/*.parquet`` and
``{output}/videos/*.parquet``; names starting with ``_`` or ``.`` are in-flight or hidden and
skipped). The files are read
through fsspec + pyarrow datasets, so any URI the job could write (local, ``s3://`` with
``storage_options``, ...) can be queried without DuckDB extensions. A table with no files yet is
an empty view with the schema of :mod:`pipeline.tables`.

``feature`` is exposed as a variable-length ``FLOAT[]`` (files of different models have
different dimensions); use ``list_cosine_similarity`` or cast with ``feature::FLOAT[512]``.

Read-only: the SQL must be a single read statement (``SELECT``/``WITH``/``FROM``/``VALUES``,
``DESCRIBE``, ``SHOW``, ``SUMMARIZE``, ``EXPLAIN`` of one of those), decided by DuckDB's parser;
anything else raises :class:`QueryRefusedError`. Independently, once the views are registered,
the connection disables file and network access from SQL (``enable_external_access=false``),
Python variable lookups, and locks its configuration, so ``read_csv('/etc/passwd')``,
``COPY ... TO`` or ``ATTACH`` fail even if they slipped past the parser check.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline import tables
from pipeline.errors import UserError
from pipeline.uris import filesystem, join, redact_uri

logger = logging.getLogger(__name__)

OutputFormat = Literal["table", "csv", "json", "parquet"]
TABLE_NAMES = (tables.CLIPS_DIR, tables.VIDEOS_DIR)

_READ_STATEMENTS = {duckdb.StatementType.SELECT}
_EXPLAIN_WORDS = {"explain", "analyze", "analyse"}
_CELL_CHARS = 40


class QueryError(UserError):
    """The SQL failed; the message is DuckDB's, fit to show the user as is."""


class QueryRefusedError(QueryError):
    """The SQL is not a single read-only statement."""


def table_schema(name: str) -> pa.Schema:
    """Schema of output table ``name`` as the query views expose it.

    ``clips.feature`` becomes ``list<float32>`` so files of models with different feature
    dimensions fit one view.
    """
    if name == tables.VIDEOS_DIR:
        return tables.VIDEOS_SCHEMA
    if name == tables.CLIPS_DIR:
        schema = tables.clips_schema(None)
        index = schema.get_field_index("feature")
        return schema.set(index, pa.field("feature", pa.list_(pa.float32())))
    raise ValueError(f"unknown table {name!r}; known: {', '.join(TABLE_NAMES)}")


def open_table(
    output: str, name: str, storage_options: Mapping[str, Any] | None = None
) -> ds.Dataset:
    """A pyarrow dataset over output table ``name`` (``clips`` or ``videos``) of a job.

    Lists ``{output}/{name}/`` recursively, keeps ``*.parquet`` files whose path below the table
    directory has no component starting with ``_`` or ``.``, and reads them through fsspec.

    Args:
        output: The job's output URI.
        name: ``"clips"`` or ``"videos"``.
        storage_options: fsspec options for ``output`` (credentials, endpoint).

    Returns:
        The dataset, with the schema of :func:`table_schema`; empty when the table has no files.
    """
    schema = table_schema(name)
    fs, root = filesystem(join(output, name), storage_options)
    root = root.rstrip("/")
    # Listings are cached per filesystem instance, and a job may still be writing.
    fs.invalidate_cache(root)
    try:
        found = fs.find(root)
    except FileNotFoundError:
        found = []
    paths = sorted(p for p in found if _is_data_file(p, root))
    if not paths:
        return ds.dataset(schema.empty_table())
    return ds.dataset(paths, schema=schema, format="parquet", filesystem=fs)


def check_read_only(sql: str) -> None:
    """Raise :class:`QueryRefusedError` unless ``sql`` is a single read-only statement.

    Raises:
        QueryError: DuckDB cannot parse ``sql`` (its message).
        QueryRefusedError: Several statements, or one that is not a read.
    """
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from exc
    if len(statements) != 1:
        raise QueryRefusedError(
            f"expected exactly one SQL statement, got {len(statements)}; queries are read-only"
        )
    statement = statements[0]
    if statement.type == duckdb.StatementType.EXPLAIN:
        inner = _explained_statement(statement.query)
        if inner is not None and inner.type in _READ_STATEMENTS:
            return
        raise QueryRefusedError("only EXPLAIN of a read query is allowed; queries are read-only")
    if statement.type not in _READ_STATEMENTS:
        raise QueryRefusedError(
            f"{statement.type.name} statements are not allowed: queries are read-only "
            "(SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)"
        )


def connect(
    output: str, storage_options: Mapping[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with views ``clips`` and ``videos``, locked down read-only.

    Raises:
        QueryError: ``output`` does not exist.
    """
    fs, root = filesystem(output, storage_options)
    if not fs.exists(root):
        raise QueryError(f"no job output at {redact_uri(output)}")
    con = duckdb.connect(":memory:")
    for name in TABLE_NAMES:
        con.register(name, open_table(output, name, storage_options))
    # After registering: the views read through pyarrow/fsspec, SQL itself gets no file access.
    con.execute("SET python_enable_replacements = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def query(output: str, sql: str, storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    """Run one read-only SQL statement over a job's ``clips`` and ``videos`` tables.

    Args:
        output: The job's output URI.
        sql: One read statement (see the module docstring).
        storage_options: fsspec options for ``output``.

    Returns:
        The result as a pyarrow table.

    Raises:
        QueryRefusedError: The SQL is not a single read statement.
        QueryError: The output does not exist, or DuckDB rejected or failed the query (its
            message, e.g. a parser, binder or permission error).
    """
    check_read_only(sql)
    con = connect(output, storage_options)
    try:
        relation = con.sql(sql)
        if relation is None:  # defensive: check_read_only only admits queries with results
            raise QueryRefusedError("statement returned no result; queries are read-only")
        return relation.to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(with_read_hint(str(exc))) from exc
    finally:
        con.close()


def write_result(
    table: pa.Table,
    fmt: OutputFormat = "table",
    dest: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str | None:
    """Render a query result.

    Args:
        table: The result.
        fmt: ``table`` (aligned text, long cells shortened), ``csv`` (nested values as JSON),
            ``json`` (an array of row objects, one per line) or ``parquet``.
        dest: File or URI to write to; required for ``parquet``.
        storage_options: fsspec options for ``dest``.

    Returns:
        The text for ``table``, ``csv`` and ``json`` (also when written to ``dest``); ``None``
        for ``parquet``.

    Raises:
        ValueError: Unknown format, or ``parquet`` without ``dest``.
    """
    if fmt == "parquet":
        if dest is None:
            raise ValueError("parquet output needs a destination file")
        fs, path = filesystem(dest, storage_options)
        with fs.open(path, "wb") as f:
            pq.write_table(table, f, compression="zstd")
        return None
    renderers = {"table": _render_table, "csv": _render_csv, "json": _render_json}
    if fmt not in renderers:
        raise ValueError(f"unknown format {fmt!r}; use table, csv, json or parquet")
    text = renderers[fmt](table)
    if dest is not None:
        fs, path = filesystem(dest, storage_options)
        with fs.open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return text


# -- helpers -------------------------------------------------------------------------------


_FIXED_SIZE_NULLS = "Expected all lists to be of size"


def with_read_hint(message: str) -> str:
    """``message`` plus what to do when it is a known unreadable-Parquet error."""
    if _FIXED_SIZE_NULLS in message:
        return (
            f"{message}\n(a Parquet file holds null entries in a fixed-size list column, which "
            "pyarrow cannot read back, apache/arrow#35692: write such tables with "
            "store_schema=False or feature as list<float32>)"
        )
    return message


def _is_data_file(path: str, root: str) -> bool:
    relative = path[len(root) :].lstrip("/")
    return relative.endswith(".parquet") and not any(
        part.startswith(("_", ".")) for part in relative.split("/")
    )


def _explained_statement(sql: str) -> Any:
    """The statement after ``EXPLAIN [ANALYZE]``, parsed by DuckDB, or None."""
    tokens = duckdb.tokenize(sql)
    start = None
    for position, kind in tokens:
        word_end = next((p for p, _ in tokens if p > position), len(sql))
        word = sql[position:word_end].strip().lower()
        if kind == duckdb.token_type.keyword and word in _EXPLAIN_WORDS:
            continue
        start = position
        break
    if start is None:
        return None
    try:
        inner = duckdb.extract_statements(sql[start:])
    except duckdb.Error:
        return None  # e.g. EXPLAIN (FORMAT json) ...: options are not needed for a read-only CLI
    return inner[0] if len(inner) == 1 else None


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    maps = {f.name for f in table.schema if pa.types.is_map(f.type)}
    return [
        {k: (_plain(dict(v)) if k in maps and v is not None else _plain(v)) for k, v in row.items()}
        for row in table.to_pylist()
    ]


def _plain(value: Any) -> Any:
    """A JSON-friendly Python value (maps as dicts, NaN/inf as None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return {str(k): _plain(v) for k, v in value}  # pyarrow map -> list of pairs
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _render_json(table: pa.Table) -> str:
    lines = [json.dumps(row, default=str, ensure_ascii=False) for row in _rows(table)]
    return "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"


def _render_csv(table: pa.Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in _rows(table):
        writer.writerow(
            [
                ""
                if v is None
                else json.dumps(v, default=str)
                if isinstance(v, (list, dict))
                else v
                for v in row.values()
            ]
        )
    return buffer.getvalue()


def _render_table(table: pa.Table) -> str:
    header = table.column_names
    body = [[_cell(v) for v in row.values()] for row in _rows(table)]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in body]
    out.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(out) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        text = "NULL"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, list) and value and isinstance(value[0], float):
        text = "[" + ", ".join(f"{v:.4g}" if v is not None else "NULL" for v in value) + "]"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value, default=str, ensure_ascii=False)
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= _CELL_CHARS else text[: _CELL_CHARS - 1] + "…"

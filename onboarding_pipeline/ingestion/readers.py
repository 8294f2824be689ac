"""Read input files into string-typed Arrow tables without losing a row.

Every row leaves here either as a staged row (all values as text, plus `source` and
`row_number`) or as a malformed row with the reason. Blank values become nulls here, so the
warehouse treats blank and missing alike without trimming every string. Row numbers are 1-based data records:
the first record after a CSV header is row 1; in JSON Lines the first line is row 1.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

SUPPORTED_SUFFIXES = (".csv", ".parquet", ".jsonl")


class InputError(ValueError):
    """An input file that cannot be read at all (missing file or required column)."""


@dataclass
class MalformedRow:
    source: str
    row_number: int | None
    raw: str
    reason: str = "malformed_row"
    field: str | None = None


@dataclass
class StagedFile:
    """One input file as text columns named per the data contract."""

    source: str
    table: pa.Table  # contract columns (text) + extras + `source`, `row_number`
    malformed: list[MalformedRow] = field(default_factory=list)
    rows_parsed: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows_parsed = self.table.num_rows

    @property
    def rows_read(self) -> int:
        return self.rows_parsed + len(self.malformed)

    def release(self) -> None:
        """Drop the rows (keeping the counts) once the warehouse holds them."""
        self.table = self.table.slice(0, 0)


def read_file(
    path: Path, mapping: dict[str, str], required: tuple[str, ...], source: str
) -> StagedFile:
    """Read one CSV, Parquet or JSON Lines file; rename columns per `mapping`."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        staged = _read_csv(path, source)
    elif suffix == ".parquet":
        staged = StagedFile(source, _as_text(pq.read_table(path)))
    elif suffix == ".jsonl":
        staged = _read_jsonl(path, source)
    else:
        raise InputError(
            f"{path}: unsupported file type (expected {', '.join(SUPPORTED_SUFFIXES)})"
        )

    table = staged.table.rename_columns(
        [mapping.get(name, name) for name in staged.table.column_names]
    )
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise InputError(
            f"{path}: missing required column(s) {', '.join(missing)}; found "
            f"{', '.join(staged.table.column_names) or 'none'} "
            "(map differently named columns with `column_mapping` in onboarding.yaml)"
        )
    # Dictionary-encoded: one copy of the file name, not one per row.
    sources = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(table.num_rows, dtype=np.int32)), pa.array([source])
    )
    table = table.append_column("source", sources)
    staged.table = table.append_column("row_number", _row_numbers(table.num_rows, staged.malformed))
    return staged


def _read_csv(path: Path, source: str) -> StagedFile:
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise InputError(f"{path}: empty file, expected a header row")
    text_columns = {name: pa.string() for name in header}
    malformed: list[tuple[int | None, str]] = []

    def read(use_threads: bool) -> pa.Table:
        malformed.clear()

        def on_invalid(row: Any) -> str:
            malformed.append((row.number, row.text))
            return "skip"

        return pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(use_threads=use_threads, block_size=1 << 24),
            # Blank lines are kept (as malformed rows) so row numbers stay true to the file.
            parse_options=pa_csv.ParseOptions(
                invalid_row_handler=on_invalid, ignore_empty_lines=False
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types=text_columns,
                # Blank fields become nulls here, at parse speed, not in the warehouse.
                strings_can_be_null=True,
                null_values=[""],
            ),
        )

    table = read(use_threads=True)
    if any(number is None for number, _ in malformed):
        # The threaded reader cannot number bad rows; re-read the (rare) bad file serially.
        table = read(use_threads=False)
    rows = [
        MalformedRow(source, number - 1 if number is not None else None, text, field=None)
        for number, text in malformed
    ]
    return StagedFile(source, table, rows)


def _read_jsonl(path: Path, source: str) -> StagedFile:
    records: list[dict[str, Any]] = []
    numbers: list[int] = []
    malformed: list[MalformedRow] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                malformed.append(MalformedRow(source, number, line.rstrip("\n")))
                continue
            records.append({key: _to_text(value) for key, value in record.items()})
            numbers.append(number)
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    table = pa.table(
        {name: pa.array([r.get(name) for r in records], pa.string()) for name in columns}
    )
    return StagedFile(source, table, malformed)


def _row_numbers(accepted: int, malformed: list[MalformedRow]) -> pa.Array:
    """Data-record numbers of the rows that parsed, skipping the numbers of malformed ones."""
    bad = np.array([row.row_number for row in malformed if row.row_number is not None], np.int64)
    candidates = np.arange(1, accepted + len(bad) + 1, dtype=np.int64)
    return pa.array(np.setdiff1d(candidates, bad, assume_unique=True)[:accepted])


def _as_text(table: pa.Table) -> pa.Table:
    """Every column as text, so all formats share one validation path."""
    columns = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            columns.append(column.cast(pa.string()))
        elif pa.types.is_timestamp(column.type):
            if column.type.tz is None:
                column = column.cast(pa.timestamp(column.type.unit, tz="UTC"))
            # Arrow's %S already carries the fraction of a second.
            columns.append(pc.strftime(column, format="%Y-%m-%dT%H:%M:%S%z"))
        elif pa.types.is_nested(column.type):
            columns.append(pa.array([_to_text(v) for v in column.to_pylist()], pa.string()))
        else:
            columns.append(column.cast(pa.string()))
    blank_to_null = [
        pc.if_else(pc.equal(pc.utf8_trim_whitespace(c), ""), pa.scalar(None, pa.string()), c)
        for c in columns
    ]
    return pa.table(blank_to_null, names=table.column_names)


def _to_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, str):
        return value if value.strip() else None
    return json.dumps(value) if isinstance(value, bool) else str(value)

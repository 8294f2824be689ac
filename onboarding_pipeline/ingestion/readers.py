"""Read input files into string-typed Arrow tables without losing a row.

Every record leaves here either as a staged row (all values as text, plus `source` and
`row_number`) or as a malformed row with the reason, the column at fault where there is one
and what went wrong (`detail`). A bad record never stops the file: the reader resynchronises
at the next record. Blank values become nulls here, so the warehouse treats blank and missing
alike without trimming every string.

Row numbers name the place in the file: in CSV, row n is the record that starts on line n + 1
(line 1 is the header, so the first record is row 1); in JSON Lines and Parquet, row n is the
n-th line / row. Blank lines (and CSV records whose every field is empty) hold no data: they
are not rows, only counted (`blank_records`).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

SUPPORTED_SUFFIXES = (".csv", ".parquet", ".jsonl")
# A JSON Lines record longer than this, or nested deeper, is quarantined (`malformed_row`):
# no real event needs it, and it would cost memory or a recursion error downstream.
MAX_RECORD_BYTES = 1 << 20
MAX_JSON_DEPTH = 64
# A quoted CSV value may span lines, but not more than this many (else: an unbalanced quote).
MAX_QUOTED_LINES = 1000
# How much of an oversized or broken record `quarantine.raw` keeps (the file and row name it).
RAW_KEEP_CHARS = 10_000
_BOM = b"\xef\xbb\xbf"


class InputError(ValueError):
    """An input file that cannot be read at all (missing file or required column)."""


@dataclass
class MalformedRow:
    source: str
    row_number: int | None
    raw: str
    reason: str = "malformed_row"
    field: str | None = None
    detail: str | None = None


@dataclass
class StagedFile:
    """One input file as text columns named per the data contract."""

    source: str
    table: pa.Table  # contract columns (text) + extras + `source`, `row_number`
    malformed: list[MalformedRow] = field(default_factory=list)
    size_bytes: int | None = None
    modified_ns: int | None = None
    blank_records: int = 0
    # Said once per file: skipped (0 bytes), renamed header columns, ...
    warnings: list[str] = field(default_factory=list)
    skipped: bool = False
    rows_parsed: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows_parsed = self.table.num_rows

    @property
    def rows_read(self) -> int:
        return self.rows_parsed + len(self.malformed)

    def release(self) -> None:
        """Drop the rows (keeping the counts) once the warehouse holds them."""
        self.table = self.table.slice(0, 0)


@dataclass
class _Read:
    """What a format reader found: text columns, their row numbers, and the bad records."""

    table: pa.Table
    row_numbers: pa.Array
    header: list[str]  # the names as written (before de-duplication); [] for JSON Lines
    malformed: list[MalformedRow] = field(default_factory=list)
    blank_records: int = 0
    warnings: list[str] = field(default_factory=list)


def read_file(
    path: Path,
    mapping: dict[str, str],
    required: tuple[str, ...],
    source: str,
    *,
    contract: tuple[str, ...] = (),
) -> StagedFile:
    """Read one CSV, Parquet or JSON Lines file; rename columns per `mapping`.

    A 0-byte file is skipped with a warning (a copy in progress or an empty export must not
    block the other files). A contract column that appears twice in the header (after the
    mapping) is an `InputError`: which copy holds the data is ambiguous. Other repeated or
    blank header names are renamed (`name_2`, `column_5`) with a warning.
    """
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"{path}: unsupported file type (expected {', '.join(SUPPORTED_SUFFIXES)})"
        )
    stat = path.stat()
    if stat.st_size == 0:
        empty = pa.table(
            {name: pa.array([], pa.string()) for name in required}
            | {
                "source": pa.DictionaryArray.from_arrays(
                    pa.array([], pa.int32()), pa.array([source])
                ),
                "row_number": pa.array([], pa.int64()),
            }
        )
        return StagedFile(
            source,
            empty,
            size_bytes=0,
            modified_ns=stat.st_mtime_ns,
            warnings=[f"{source}: empty file (0 bytes), skipped"],
            skipped=True,
        )
    if suffix in (".csv", ".jsonl"):
        _refuse_other_encodings(path)
    if suffix == ".csv":
        read = _read_csv(path, source)
    elif suffix == ".parquet":
        read = _read_parquet(path, source)
    else:
        read = _read_jsonl(path, source)

    _refuse_ambiguous_columns(path, read.header, mapping, (*required, *contract))
    table = read.table.rename_columns([mapping.get(name, name) for name in read.table.column_names])
    missing = [name for name in required if name not in table.column_names]
    if missing and (table.num_rows or read.header):
        raise InputError(
            f"{path}: missing required column(s) {', '.join(missing)}; found "
            f"{', '.join(read.table.column_names) or 'none'} "
            + (
                _other_delimiter(read.table.column_names)
                or "(map differently named columns with `column_mapping` in onboarding.yaml)"
            )
        )
    for name in missing:  # JSON Lines whose every line was malformed: no columns at all
        table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    # Dictionary-encoded: one copy of the file name, not one per row.
    sources = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(table.num_rows, dtype=np.int32)), pa.array([source])
    )
    table = table.append_column("source", sources).append_column("row_number", read.row_numbers)
    table, with_nul = _without_nul_bytes(table, source)
    return StagedFile(
        source,
        table,
        [*read.malformed, *with_nul],
        size_bytes=stat.st_size,
        modified_ns=stat.st_mtime_ns,
        blank_records=read.blank_records,
        warnings=read.warnings,
    )


def _without_nul_bytes(table: pa.Table, source: str) -> tuple[pa.Table, list[MalformedRow]]:
    """Rows with a NUL byte in a text field, as `malformed_row` naming the field: PostgreSQL
    cannot store one in text (one such row would fail the whole load there) and no real
    export means it."""
    texts = [
        name
        for name in table.column_names
        if name not in ("source", "row_number")
        and pa.types.is_string(table.schema.field(name).type)
    ]
    masks = {name: pc.fill_null(pc.match_substring(table[name], "\x00"), False) for name in texts}
    if not masks or not any(pc.any(mask).as_py() for mask in masks.values()):
        return table, []
    bad = np.zeros(table.num_rows, dtype=bool)
    first_field: dict[int, str] = {}
    for name, mask in masks.items():
        hits = np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
        for position in np.flatnonzero(hits & ~bad):
            first_field[int(position)] = name
        bad |= hits
    rows = table.filter(pa.array(bad)).to_pylist()
    malformed = []
    for row_index, row in zip(sorted(first_field), rows, strict=True):
        name = first_field[row_index]
        values = [str(row[n]) for n in texts if row[n] is not None]
        malformed.append(
            MalformedRow(
                source,
                row["row_number"],
                _clip(",".join(values).replace("\x00", "\\x00")),
                field=name,
                detail=f"a NUL byte (0x00) in {name}",
            )
        )
    return table.filter(pa.array(~bad)), malformed


def _refuse_ambiguous_columns(
    path: Path, header: list[str], mapping: dict[str, str], contract: tuple[str, ...]
) -> None:
    positions: dict[str, list[str]] = {}
    for position, name in enumerate(header, start=1):
        positions.setdefault(mapping.get(name, name), []).append(f"{position} ({name!r})")
    for name, found in positions.items():
        if name in contract and len(found) > 1:
            raise InputError(
                f"{path}: column {name!r} appears {len(found)} times in the header (columns "
                f"{', '.join(found)}); which one holds the data is ambiguous: remove or rename "
                "the extra one in the export"
            )


def unique_names(header: list[str]) -> tuple[list[str], list[str]]:
    """Header names made unique and non-blank, deterministically: the first copy keeps its
    name, later ones get `_2`, `_3`, ...; a blank name becomes `column_<position>`."""
    taken = {name for name in header if name}
    seen: Counter[str] = Counter()
    names: list[str] = []
    renamed: list[str] = []
    for position, name in enumerate(header, start=1):
        seen[name] += 1
        if name and seen[name] == 1:
            names.append(name)
            continue
        base = name or "column"
        suffix = seen[name] if name else position
        candidate = f"{base}_{suffix}"
        while candidate in taken:
            suffix += 1
            candidate = f"{base}_{suffix}"
        taken.add(candidate)
        names.append(candidate)
        renamed.append(f"column {position} ({name!r}) read as {candidate!r}")
    return names, renamed


# -- CSV ---------------------------------------------------------------------------------------


def _read_csv(path: Path, source: str) -> _Read:
    header, header_lines = _csv_header(path)
    if not header:
        return _Read(
            pa.table({}),
            pa.array([], pa.int64()),
            [],
            warnings=[f"{source}: no header row (the file holds only blank lines), skipped"],
        )
    names, renamed = unique_names(header)
    warnings = (
        [f"{source}: repeated or blank header names: " + "; ".join(renamed)] if renamed else []
    )
    fast = None if header_lines != 1 else _read_csv_fast(path, source, names)
    read = fast or _read_csv_resync(path, source, names, header_lines)
    read.header = header
    read.warnings = warnings + read.warnings
    return read


_WIDE_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}


def _refuse_other_encodings(path: Path) -> None:
    """A UTF-16/32 text file (Excel's "Unicode text", PowerShell's default) is not a file of
    bad rows: every row would be quarantined. Said once, with what to do."""
    with path.open("rb") as handle:
        head = handle.read(4096)
    found = next((name for bom, name in _WIDE_BOMS.items() if head.startswith(bom)), None)
    if found is None and head.count(b"\x00") > len(head) // 4:
        found = "UTF-16"  # without a byte-order mark: every other byte is NUL
    if found:
        raise InputError(
            f"{path}: the file is {found} text, not UTF-8; re-save it as UTF-8 (e.g. "
            '`iconv -f UTF-16 -t UTF-8`, or "CSV UTF-8" in a spreadsheet)'
        )


def _other_delimiter(names: list[str]) -> str | None:
    """Why a CSV header yields one odd column: it is separated by something else."""
    if len(names) != 1:
        return None
    for delimiter, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")):
        if delimiter in names[0]:
            return (
                f"(the header is separated by {name}: only comma-separated CSV is read; "
                "re-save it with commas)"
            )
    return None


def _csv_header(path: Path) -> tuple[list[str], int]:
    """The header's names (BOM stripped, undecodable bytes replaced) and how many physical
    lines it spans (a quoted name may hold a line break)."""
    with path.open("rb") as handle:
        head = handle.read(MAX_RECORD_BYTES)
    # Split as the careful reader does (\n, \r\n or a lone \r), so line counts agree.
    lines: list[bytes] = []
    leading_blank = 0
    for line in head.removeprefix(_BOM).splitlines():
        if not lines and not line.strip():
            leading_blank += 1  # the header is the first line that holds something
            continue
        lines.append(line)
        text = b"\n".join(lines).decode("utf-8", errors="replace")
        if text.count('"') % 2 == 0 or len(lines) >= MAX_QUOTED_LINES:
            row = next(csv.reader([text]), [])
            return [name.strip() for name in row], leading_blank + len(lines)
    return [], 0


def _read_csv_fast(path: Path, source: str, names: list[str]) -> _Read | None:
    """pyarrow's reader, when the file is clean; None when it is not (the resynchronising
    reader takes over): bytes that are not UTF-8, or a record spanning lines (a quoted line
    break, or an unbalanced quote that swallowed the records after it)."""
    text_columns = {name: pa.string() for name in names}
    malformed: list[tuple[int | None, str]] = []

    def read(use_threads: bool) -> pa.Table:
        malformed.clear()

        def on_invalid(row: Any) -> str:
            malformed.append((row.number, row.text))
            return "skip"

        return pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(
                use_threads=use_threads, block_size=1 << 24, column_names=names, skip_rows=1
            ),
            # Blank lines are kept (as all-null rows) so row numbers stay true to the file.
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

    try:
        table = read(use_threads=True)
        if any(number is None for number, _ in malformed):
            # The threaded reader cannot number bad rows; re-read the (rare) bad file serially.
            table = read(use_threads=False)
    except pa.ArrowInvalid:
        return None  # e.g. invalid UTF-8: the careful reader finds the row and column
    if _holds_line_breaks(table):
        return None
    if any("\n" in text or "\r" in text for _, text in malformed):
        return None
    # A line of spaces holds no data, like an empty one: counted, not a malformed row (its
    # number is still taken, so the rows after it keep theirs).
    spaces = [
        MalformedRow(source, number - 1 if number is not None else None, text)
        for number, text in malformed
        if not text.strip()
    ]
    malformed = [(number, text) for number, text in malformed if text.strip()]
    bad = [
        MalformedRow(
            source,
            number - 1 if number is not None else None,
            text,
            detail=f"{_field_count(text)} fields where the header has {len(names)}",
        )
        for number, text in malformed
    ]
    numbers = _row_numbers(table.num_rows, bad + spaces)
    # Blank lines come back as rows of nulls: they hold no data, so they are not rows.
    blank = _all_null(table)
    blank_count = int(pc.sum(blank).as_py() or 0) if table.num_rows else 0
    if blank_count:
        keep = pc.invert(blank)
        table, numbers = table.filter(keep), numbers.filter(keep)
    return _Read(table, numbers, [], bad, blank_count + len(spaces))


def _holds_line_breaks(table: pa.Table) -> bool:
    """Whether any value holds a line break: a quoted break, or an unbalanced quote that
    swallowed the records after it. Scans the raw value bytes (no string kernels): ~0.1 s
    per GB."""
    for column in table.columns:
        for chunk in column.chunks:
            data = chunk.buffers()[2]
            if data is not None and data.size:
                values = np.frombuffer(data, np.uint8)
                if np.any((values == 10) | (values == 13)):
                    return True
    return False


def _field_count(text: str) -> int:
    return len(next(csv.reader([text]), []))


def _all_null(table: pa.Table) -> pa.Array:
    mask = None
    for column in table.columns:
        null = pc.is_null(column)
        mask = null if mask is None else pc.and_(mask, null)
    return pc.fill_null(mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask, False)


def _read_csv_resync(path: Path, source: str, names: list[str], header_lines: int) -> _Read:
    """The careful reader (plain Python, for the rare damaged file): each physical line is
    decoded and parsed on its own, so a bad byte or an unbalanced quote costs one record.

    A quoted value may span lines. But when a line inside it is, on its own, a complete
    record (balanced quotes, the header's number of fields), the quote is taken as
    unbalanced: the line that opened it is quarantined (`malformed_row`) and reading resumes
    at the next line, so the records it would have swallowed land.
    """
    lines = path.read_bytes().removeprefix(_BOM).splitlines()
    width = len(names)
    columns: list[list[str | None]] = [[] for _ in names]
    numbers: list[int] = []
    malformed: list[MalformedRow] = []
    blank = 0

    def decoded(index: int) -> str | None:
        try:
            return lines[index].decode("utf-8")
        except UnicodeDecodeError:
            return None

    def complete_record(text: str | None) -> bool:
        if text is None:
            return False
        fields, state = _parse_record(text)
        return state != "open" and len(fields) == width

    index = header_lines
    while index < len(lines):
        row_number = index  # the record starts on line index + 1; the header is line 1
        text = decoded(index)
        if text is None:
            malformed.append(_undecodable(source, row_number, lines[index], names))
            index += 1
            continue
        consumed = 1
        fields, state = _parse_record(text)
        if state == "open":
            # An open quote: the value continues on the next line(s), or the quote is bad.
            block = [text]
            for ahead in range(index + 1, min(index + MAX_QUOTED_LINES, len(lines))):
                following = decoded(ahead)
                if following is None or complete_record(following):
                    break
                block.append(following)
                fields, state = _parse_record("\n".join(block))
                if state != "open":
                    break
            # A value spanning lines must close cleanly and give a whole record; a quote that
            # closes mid-field on a later line (`"a\nb,"c`) means the first quote was bad.
            if state != "complete" or len(fields) != width:
                malformed.append(
                    MalformedRow(
                        source,
                        row_number,
                        _clip(text),
                        detail="unbalanced quote: the quoted value does not close into a "
                        "whole record before the next one; reading resumed at the next line",
                    )
                )
                index += 1
                continue
            text = "\n".join(block)
            consumed = len(block)
        if not any(value.strip() for value in fields):
            blank += 1
        elif len(fields) != width:
            malformed.append(
                MalformedRow(
                    source,
                    row_number,
                    _clip(text),
                    detail=f"{len(fields)} fields where the header has {width}",
                )
            )
        else:
            for values, value in zip(columns, fields, strict=True):
                values.append(value or None)
            numbers.append(row_number)
        index += consumed
    table = pa.table(
        {name: pa.array(values, pa.string()) for name, values in zip(names, columns, strict=True)}
    )
    return _Read(table, pa.array(numbers, pa.int64()), [], malformed, blank)


def _parse_record(text: str) -> tuple[list[str], str]:
    """The fields of one record's text and its state: `complete`; `open` when a quoted value
    is still open at the end (it continues on the next line, or the quote is bad); `lenient`
    when stray characters follow a closing quote (read as pyarrow does)."""
    if '"' not in text:
        return text.split(","), "complete"
    try:
        return next(csv.reader([text], strict=True), []), "complete"
    except csv.Error as error:
        if "unexpected end of data" in str(error):
            return [], "open"
    # Stray characters after a closing quote: read leniently, as pyarrow does.
    return next(csv.reader([text]), []), "lenient"


def _undecodable(source: str, row_number: int, line: bytes, names: list[str]) -> MalformedRow:
    """A record with bytes that are not UTF-8, naming the column that holds them."""
    text = line.decode("utf-8", errors="surrogateescape")
    fields = next(csv.reader([text]), [])
    column = next(
        (name for name, value in zip(names, fields, strict=False) if _has_surrogates(value)),
        None,
    )
    return MalformedRow(
        source,
        row_number,
        _clip(line.decode("utf-8", errors="backslashreplace")),
        field=column,
        detail=f"bytes that are not UTF-8{f' in column {column!r}' if column else ''}",
    )


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in text)


def _clip(text: str) -> str:
    if len(text) <= RAW_KEEP_CHARS:
        return text
    return text[:RAW_KEEP_CHARS] + f"... [{len(text) - RAW_KEEP_CHARS} more characters]"


# -- JSON Lines --------------------------------------------------------------------------------


def _read_jsonl(path: Path, source: str) -> _Read:
    records: list[dict[str, Any]] = []
    numbers: list[int] = []
    malformed: list[MalformedRow] = []
    blank = 0
    with path.open("rb") as handle:
        for number, line, oversized in _bounded_lines(handle):
            if number == 1:
                line = line.removeprefix(_BOM)
            if oversized:
                malformed.append(
                    MalformedRow(
                        source,
                        number,
                        _clip(line.decode("utf-8", errors="backslashreplace")),
                        detail=f"line longer than {MAX_RECORD_BYTES} bytes",
                    )
                )
                continue
            if not line.strip():
                blank += 1
                continue
            record, problem = _json_record(line)
            if record is None:
                malformed.append(
                    MalformedRow(
                        source,
                        number,
                        _clip(line.decode("utf-8", errors="backslashreplace").rstrip("\r\n")),
                        detail=problem,
                    )
                )
                continue
            records.append({key: _to_text(value) for key, value in record.items()})
            numbers.append(number)
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    table = pa.table(
        {name: pa.array([r.get(name) for r in records], pa.string()) for name in columns}
    )
    return _Read(table, pa.array(numbers, pa.int64()), [], malformed, blank)


def _bounded_lines(handle: io.BufferedReader) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line, oversized) without ever holding more than one record's limit:
    an oversized line yields its first bytes and the rest is skipped."""
    number = 0
    while True:
        line = handle.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            rest = line
            while rest and not rest.endswith(b"\n"):
                rest = handle.readline(1 << 20)
            yield number, line[:RAW_KEEP_CHARS], True
            continue
        yield number, line, False


def _json_record(line: bytes) -> tuple[dict[str, Any] | None, str]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"bytes that are not UTF-8 at byte {error.start}"
    try:
        record = json.loads(text)
    except RecursionError:
        return None, f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    except ValueError as error:
        return None, f"not JSON: {error}"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not an object"
    # Counting brackets is cheap; only a line with many of them is measured exactly.
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH and _depth(record) > MAX_JSON_DEPTH:
        return None, f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    return record, ""


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


# -- Parquet -----------------------------------------------------------------------------------


def _read_parquet(path: Path, source: str) -> _Read:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{path}: not a readable Parquet file ({error})") from error
    header = list(table.column_names)
    names, renamed = unique_names(header)
    table = table.rename_columns(names)
    columns: list[pa.Array | pa.ChunkedArray] = []
    bad_rows: dict[int, tuple[str, str]] = {}
    for name, column in zip(names, table.columns, strict=True):
        text, problems = _as_text(column)
        columns.append(text)
        for index, problem in problems.items():
            bad_rows.setdefault(index, (name, problem))
    text_table = pa.table(columns, names=names)
    numbers = pa.array(np.arange(1, table.num_rows + 1, dtype=np.int64))
    malformed = []
    if bad_rows:
        # The whole row is quarantined, as read, naming the first column that could not be read.
        keep = np.ones(table.num_rows, dtype=bool)
        keep[list(bad_rows)] = False
        for index, (name, problem) in sorted(bad_rows.items()):
            raw = {
                column: _to_text_safe(value)
                for column, value in zip(
                    names, table.slice(index, 1).to_pylist()[0].values(), strict=True
                )
            }
            malformed.append(
                MalformedRow(
                    source,
                    index + 1,
                    _clip(json.dumps(raw, default=str)),
                    field=name,
                    detail=problem,
                )
            )
        mask = pa.array(keep)
        text_table, numbers = text_table.filter(mask), numbers.filter(mask)
    warnings = (
        [f"{source}: repeated or blank column names: " + "; ".join(renamed)] if renamed else []
    )
    blank = _all_null(text_table) if text_table.num_rows and text_table.num_columns else None
    blank_count = int(pc.sum(blank).as_py() or 0) if blank is not None else 0
    if blank is not None and blank_count:
        keep_rows = pc.invert(blank)
        text_table, numbers = text_table.filter(keep_rows), numbers.filter(keep_rows)
    return _Read(text_table, numbers, header, malformed, blank_count, warnings)


def _as_text(column: pa.ChunkedArray) -> tuple[pa.ChunkedArray | pa.Array, dict[int, str]]:
    """A column as text, so all formats share one validation path, plus the rows whose value
    cannot be text (binary that is not UTF-8), by index."""
    kind = column.type
    problems: dict[int, str] = {}
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = kind.value_type
    if pa.types.is_timestamp(kind):
        if kind.tz is None:  # naive = UTC
            column = column.cast(pa.timestamp(kind.unit, tz="UTC"))
        # Arrow's %S already carries the fraction of a second.
        text = pc.strftime(column, format="%Y-%m-%dT%H:%M:%S%z")
    elif pa.types.is_nested(kind):
        text = pa.array([_to_text(v) for v in column.to_pylist()], pa.string())
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        try:
            text = column.cast(pa.string())
        except pa.ArrowInvalid:
            values: list[str | None] = []
            for index, value in enumerate(column.to_pylist()):
                try:
                    values.append(None if value is None else value.decode("utf-8"))
                except UnicodeDecodeError:
                    values.append(None)
                    problems[index] = "binary value that is not UTF-8 text"
            text = pa.array(values, pa.string())
    else:
        try:
            text = column.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # A type Arrow cannot cast to text (e.g. a map): Python's rendering of it.
            text = pa.array([_to_text_safe(v) for v in column.to_pylist()], pa.string())
    blank_to_null = pc.if_else(
        pc.equal(pc.utf8_trim_whitespace(text), ""), pa.scalar(None, pa.string()), text
    )
    return blank_to_null, problems


def _to_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, str):
        return value if value.strip() else None
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _to_text_safe(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    try:
        return _to_text(value)
    except (TypeError, ValueError):
        return str(value)


def _row_numbers(accepted: int, malformed: list[MalformedRow]) -> pa.Array:
    """Data-record numbers of the rows that parsed, skipping the numbers of malformed ones."""
    bad = np.array([row.row_number for row in malformed if row.row_number is not None], np.int64)
    candidates = np.arange(1, accepted + len(bad) + 1, dtype=np.int64)
    return pa.array(np.setdiff1d(candidates, bad, assume_unique=True)[:accepted])

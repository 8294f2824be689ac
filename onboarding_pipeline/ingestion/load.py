"""Ingestion as plain functions: read -> stage in the warehouse -> classify -> write.

Invariant, checked here and shown in the asset metadata:
rows read = rows accepted + duplicates + rows quarantined.

Everything is validated before anything is written; the raw table, the quarantine and the
manifest of file versions are then written in one transaction, so an error anywhere leaves
the previous tables as they were.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from onboarding_pipeline.config.product import EVENT_COLUMNS, USER_COLUMNS, ProductConfig
from onboarding_pipeline.ingestion.readers import StagedFile
from onboarding_pipeline.ingestion.sources import EventSource, FileSource
from onboarding_pipeline.ingestion.validation import (
    ANONYMOUS_REASON,
    OK,
    PARSED_SUFFIX,
    STATUS_SUFFIX,
    classify_events,
    classify_users,
    json_object_check,
    repeated_ids,
    repeated_rows,
    with_parsed_timestamp,
)
from onboarding_pipeline.warehouse.resource import (
    TableWrite,
    WarehouseResource,
    where_equal,
    where_in,
    where_in_range,
)
from onboarding_pipeline.warehouse.tables import (
    INGESTION_MANIFEST,
    QUARANTINE,
    RAW_EVENTS,
    RAW_USERS,
    UTC_TIMESTAMP,
)

_BOOKKEEPING = ("source", "row_number")
_AUXILIARY = (PARSED_SUFFIX, STATUS_SUFFIX)

# What each reason means, in words, next to the row in `quarantine.detail`.
REASON_DETAILS = {
    "missing_user_id": "no user_id: anonymous traffic, governed by ingestion.max_anonymous_share",
    "missing_event_name": "no event_name",
    "missing_timestamp": "no timestamp",
    "missing_signup_at": "no signup_at",
    "unparseable_timestamp": "not ISO-8601 text or an epoch number (ingestion.timestamp_format)",
    "unparseable_signup_at": "not ISO-8601 text or an epoch number (ingestion.timestamp_format)",
    "out_of_range_timestamp": "parses, but before ingestion.min_timestamp, after 9999-12-31 or "
    "infinite",
    "invalid_properties": "properties is not a JSON object",
    "unknown_user": "user_id is not in raw_users",
    "future_timestamp": "later than the clock (or as_of) plus ingestion.future_tolerance_hours",
    "before_signup": "earlier than the user's signup minus ingestion.pre_signup_tolerance_hours",
    "before_partitions_start": "earlier than partitions_start_date: no daily partition holds it",
}
# Where a users row means something else than an events row with the same reason.
USERS_REASON_DETAILS = {
    "missing_user_id": "no user_id: a users row must name its user",
}


@dataclass
class IngestionReport:
    """Counts of one ingestion, reconciled: read = accepted + duplicates + quarantined."""

    kind: str
    rows_read: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined_by_reason: Counter[str] = field(default_factory=Counter)
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    rows_written: int = 0
    # Duplicates among rows without an event_id: identical rows collapsed into one.
    identical_rows_collapsed: int = 0
    blank_records: int = 0
    skipped_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Files ingested before and gone now: their rows deleted from the raw table.
    removed_files: dict[str, int] = field(default_factory=dict)
    # Rows of other files that take the place of removed ones (same event_id), all dates.
    restored_rows: int = 0
    # users: `file`, or `first_event` when the data directory has no users file.
    signup_source: str = "file"

    @property
    def quarantined(self) -> int:
        return sum(self.quarantined_by_reason.values())

    @property
    def anonymous(self) -> int:
        return self.quarantined_by_reason.get(ANONYMOUS_REASON, 0)

    @property
    def malformed(self) -> int:
        """Quarantined rows other than anonymous traffic."""
        return self.quarantined - self.anonymous

    def reconciles(self) -> bool:
        return self.rows_read == self.accepted + self.duplicates + self.quarantined

    def empty_note(self) -> str | None:
        """Why nothing was accepted or written, when that is so (a normal state, said aloud)."""
        if not self.by_source:
            return "no input files"
        if self.rows_read == 0:
            return "the input holds no rows (header-only or skipped files)"
        if self.accepted == 0:
            return f"no row accepted: all {self.rows_read} rows read are duplicates or quarantined"
        if self.kind == "events" and self.rows_written == 0:
            return "no accepted event falls in this partition window"
        return None


def ingest_users(
    warehouse: WarehouseResource,
    source: EventSource,
    config: ProductConfig,
    *,
    clock: datetime | None = None,
) -> IngestionReport:
    """Replace `raw_users` with the accepted users of the source; quarantine the rest.

    Without a users file in the data directory, each user's signup is their first valid
    event (a Segment-style export), and the report says so.
    """
    reference = config.as_of or clock or datetime.now(UTC)
    rules = config.ingestion
    future_limit = reference + timedelta(hours=rules.future_tolerance_hours)
    earliest = _earliest(config)
    files = source.read_users(config.column_mapping.users)
    if isinstance(source, FileSource) and all(f.rows_read == 0 for f in files):
        # No users file, or only empty ones (0 bytes, header only): every event would be
        # `unknown_user`, so signups come from the events, said aloud.
        empty = [f.source for f in files]
        return _users_from_events(warehouse, source, config, future_limit, empty)
    users = _with_attributes(_combine(files, USER_COLUMNS))
    fmt = rules.format_of("users.signup_at")
    staged = warehouse.stage(
        "_staged_users", _parse_if_needed(warehouse, users, "signup_at", fmt, earliest)
    )
    classified = warehouse.temp_table(
        "_classified_users",
        classify_users(staged, timestamp_format=fmt, earliest=earliest, future_limit=future_limit),
    )
    accepted = classified.filter(classified.reason.isnull() & ~classified.is_duplicate)
    report = _count(
        warehouse.execute(
            classified.group_by("source", "reason", "is_duplicate").agg(rows=classified.count())
        ),
        files,
        "users",
    )
    report.identical_rows_collapsed = report.duplicates
    # `raw` shows the rows as read: join the rejects back to their input text.
    rejected = classified.filter(classified.reason.notnull()).select(
        "source", "row_number", "reason", "field", "detail", event_date=ibis.null("date")
    )
    originals = [
        c
        for c in staged.columns
        if c not in (*_BOOKKEEPING, "attributes") and not c.endswith(_AUXILIARY)
    ]
    quarantine = _quarantine_table(
        "users",
        warehouse.to_pyarrow(
            rejected.join(staged.select(*_BOOKKEEPING, *originals), list(_BOOKKEEPING))
        ),
        originals,
        files,
    )
    warehouse.write_together(
        [
            TableWrite(RAW_USERS.name, accepted),
            TableWrite(QUARANTINE.name, quarantine, where_equal("kind", "users")),
            TableWrite(
                INGESTION_MANIFEST.name, _manifest(files, report), where_equal("kind", "users")
            ),
        ]
    )
    report.rows_written = report.accepted
    return report


def _users_from_events(
    warehouse: WarehouseResource,
    source: FileSource,
    config: ProductConfig,
    future_limit: datetime,
    empty_users_files: list[str],
) -> IngestionReport:
    """`raw_users` from the events when there is no users file (or only empty ones): one row
    per user id with a valid event, signup = that user's first valid event (its file and row
    as provenance)."""
    rules = config.ingestion
    fmt = rules.format_of("events.timestamp")
    earliest = _earliest(config)
    files = source.read_events(config.column_mapping.events)
    text = _combine(files, EVENT_COLUMNS).select(
        ["user_id", "event_name", "timestamp", "source", "row_number"]
    )
    staged = with_parsed_timestamp(
        ibis.memtable(_parse_if_needed(warehouse, text, "timestamp", fmt, earliest)),
        "timestamp",
        fmt,
        earliest,
    )
    signup_at = staged["timestamp" + PARSED_SUFFIX]
    valid = staged.mutate(signup_at=signup_at).filter(
        staged.user_id.notnull()
        & staged.event_name.notnull()
        & (staged["timestamp" + STATUS_SUFFIX] == OK)
        & (signup_at <= ibis.literal(future_limit, UTC_TIMESTAMP))
    )
    order = ibis.window(group_by="user_id", order_by=["signup_at", "source", "row_number"])
    first = valid.mutate(_rank=ibis.row_number().over(order))
    first = first.filter(first._rank == 0)
    users = first.select(
        "user_id",
        "signup_at",
        *[ibis.null("string").name(c) for c in USER_COLUMNS if c not in ("user_id", "signup_at")],
        ibis.null("string").name("attributes"),
        first.source.cast("string").name("source"),
        first.row_number.cast("int64").name("row_number"),
    )
    derived = warehouse.temp_table("_derived_users", users)
    count = int(warehouse.execute(derived.count()))
    report = IngestionReport(kind="users", rows_read=count, accepted=count, rows_written=count)
    report.signup_source = "first_event"
    found = (
        f"the users file holds no rows ({', '.join(empty_users_files)})"
        if empty_users_files
        else "no users file"
    )
    report.warnings.append(
        f"{source.root}: {found}; each user's signup_at is their first valid event "
        f"({count} users from the events files)"
    )
    report.skipped_files = list(empty_users_files)
    warehouse.write_together(
        [
            TableWrite(RAW_USERS.name, derived),
            TableWrite(QUARANTINE.name, None, where_equal("kind", "users")),
            TableWrite(INGESTION_MANIFEST.name, None, where_equal("kind", "users")),
        ]
    )
    return report


def ingest_events(
    warehouse: WarehouseResource,
    source: EventSource,
    config: ProductConfig,
    start: datetime,
    end: datetime,
    *,
    clock: datetime | None = None,
) -> IngestionReport:
    """Write accepted events with `start <= timestamp < end` to `raw_events`.

    Every file is validated as a whole (duplicates and counts are global), the partition range
    is replaced atomically, and `quarantine` is rebuilt from the current inputs, so re-running
    on the same files changes nothing. The rows of a file that is gone from the source are
    deleted from every date (and rows of other files with the same event_id take their place).
    """
    reference = config.as_of or clock or datetime.now(UTC)
    rules = config.ingestion
    fmt = rules.format_of("events.timestamp")
    earliest = _earliest(config)
    files = source.read_events(config.column_mapping.events)
    # The text table is scanned in place (no copy into the warehouse) and classified once.
    text = _combine(files, EVENT_COLUMNS)
    originals = [c for c in text.column_names if c not in _BOOKKEEPING]
    users = warehouse.to_pyarrow(warehouse.table(RAW_USERS.name).select("user_id", "signup_at"))
    staged = _attach_signups(text, users)
    staged = _parse_if_needed(warehouse, staged, "timestamp", fmt, earliest, properties=True)
    expression = classify_events(
        ibis.memtable(staged),
        future_limit=reference + timedelta(hours=rules.future_tolerance_hours),
        pre_signup_tolerance=timedelta(hours=rules.pre_signup_tolerance_hours),
        partitions_start=datetime.combine(config.partitions_start_date, datetime.min.time(), UTC),
        timestamp_format=fmt,
        earliest=earliest,
    )
    classified = warehouse.temp_table("_classified_events", expression)
    del staged, expression
    repeated = warehouse.temp_table("_repeated_ids", repeated_ids(classified))
    repeats = warehouse.temp_table("_repeated_events", repeated_rows(classified, repeated))
    conflicts = warehouse.execute(repeats.filter(repeats.outcome == "conflicting_event_id"))
    # Conflicting rows were valid, so only the input text still has their timestamp as read.
    conflict_originals = _input_rows(text, conflicts, originals)
    # From here on the warehouse holds everything: let the text go to bound peak memory.
    del text
    for staged_file in files:
        staged_file.release()

    # Count without joining millions of rows: reasons from the classification, and the
    # (few) repeats taken out of each file's valid rows.
    outcomes = warehouse.execute(
        classified.group_by("source", "reason").agg(rows=classified.count())
    ).assign(is_duplicate=False)
    repeat_counts = warehouse.execute(
        repeats.group_by("source", "outcome", "id_derived").agg(rows=repeats.count())
    )
    for repeat in repeat_counts.itertuples(index=False):
        valid_row = outcomes.source.eq(repeat.source) & outcomes.reason.isna()
        outcomes.loc[valid_row, "rows"] -= repeat.rows
    outcomes = pd.concat(
        [
            outcomes,
            repeat_counts.assign(
                reason=repeat_counts.outcome.where(repeat_counts.outcome != "duplicate", None),
                is_duplicate=repeat_counts.outcome == "duplicate",
            )[["source", "reason", "rows", "is_duplicate"]],
        ],
        ignore_index=True,
    )
    report = _count(outcomes, files, "events")
    if isinstance(source, FileSource) and source.unread_files():
        report.warnings.append(unread_files_warning(source.unread_files()))
    collapsed = repeat_counts[(repeat_counts.outcome == "duplicate") & repeat_counts.id_derived]
    report.identical_rows_collapsed = int(collapsed.rows.sum())

    valid = classified.filter(classified.reason.isnull()).anti_join(repeats, list(_BOOKKEEPING))
    in_range = valid.filter((valid.timestamp >= start) & (valid.timestamp < end))
    writes = _removed_file_writes(warehouse, report, valid, files, start, end)
    writes.append(TableWrite(RAW_EVENTS.name, in_range, where_in_range("timestamp", start, end)))

    rejected = classified.filter(classified.reason.notnull())
    rejected = warehouse.to_pyarrow(
        rejected.mutate(
            event_date=rejected.timestamp.date(),
            timestamp=rejected.timestamp_text,
            detail=ibis.null("string"),
        ).select("source", "row_number", "reason", "field", "detail", "event_date", *originals)
    )
    conflict_rows = _conflict_rows(conflicts, conflict_originals, originals)
    quarantine = _quarantine_table(
        "events",
        pa.concat_tables([rejected, conflict_rows], promote_options="permissive"),
        originals,
        files,
    )
    writes += [
        TableWrite(QUARANTINE.name, quarantine, where_equal("kind", "events")),
        TableWrite(
            INGESTION_MANIFEST.name, _manifest(files, report), where_equal("kind", "events")
        ),
    ]
    warehouse.write_together(writes)
    # Count what landed (one column of the partition) rather than re-run the classification.
    written = warehouse.table(RAW_EVENTS.name)
    report.rows_written = int(
        warehouse.execute(
            written.filter((written.timestamp >= start) & (written.timestamp < end)).count()
        )
    )
    con = warehouse.connect()
    for name in ("_classified_events", "_repeated_ids", "_repeated_events", "_restored_events"):
        con.drop_table(name, force=True)
    return report


def _removed_file_writes(
    warehouse: WarehouseResource,
    report: IngestionReport,
    valid: ir.Table,
    files: list[StagedFile],
    start: datetime,
    end: datetime,
) -> list[TableWrite]:
    """Deletes for the rows of files that are gone, and inserts for the rows of other files
    that take their place (same event_id) outside this run's range, where the partition
    write does not reach."""
    raw = warehouse.table(RAW_EVENTS.name)
    present = {f.source for f in files}
    held = warehouse.execute(raw.group_by("source").agg(rows=raw.count()))
    removed = {
        str(row.source): int(row.rows)
        for row in held.itertuples(index=False)
        if row.source is not None and row.source not in present
    }
    if not removed:
        return []
    report.removed_files = removed
    gone = raw.filter(raw.source.isin(list(removed)))
    outside = valid.filter((valid.timestamp < start) | (valid.timestamp >= end))
    restored = warehouse.temp_table(
        "_restored_events", outside.semi_join(gone.select("event_id"), "event_id")
    )
    report.restored_rows = int(warehouse.execute(restored.count()))
    days = warehouse.execute(gone.aggregate(first=gone.timestamp.min(), last=gone.timestamp.max()))
    first, last = days.iloc[0]["first"], days.iloc[0]["last"]
    report.warnings.append(
        "files gone from the source since the last run: "
        + ", ".join(f"{name} ({rows} rows)" for name, rows in sorted(removed.items()))
        + f"; their rows are deleted from raw_events ({first:%Y-%m-%d}..{last:%Y-%m-%d}"
        + (
            f", {report.restored_rows} rows of other files take their place"
            if report.restored_rows
            else ""
        )
        + "): re-run those days' downstream partitions"
    )
    return [
        TableWrite(RAW_EVENTS.name, None, where_in("source", sorted(removed))),
        TableWrite(RAW_EVENTS.name, restored, delete=False),
    ]


def unread_files_warning(names: list[str]) -> str:
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return (
        f"not read: {shown} (only users.csv|parquet|jsonl and events files ending in .csv, "
        ".parquet or .jsonl are read; decompress or convert the others)"
    )


def _earliest(config: ProductConfig) -> datetime:
    return datetime.combine(config.ingestion.min_timestamp, datetime.min.time(), UTC)


def _combine(files: list[StagedFile], columns: tuple[str, ...]) -> pa.Table:
    """One text table for all files, with every contract column present."""
    tables = [staged.table for staged in files if staged.table.num_columns]
    combined = (
        pa.concat_tables(tables, promote_options="permissive")
        if tables
        else pa.table(
            {name: pa.array([], pa.string()) for name in (*columns, "source")}
            | {"row_number": pa.array([], pa.int64())}
        )
    )
    for name in columns:
        if name not in combined.column_names:
            combined = combined.append_column(name, pa.nulls(combined.num_rows, pa.string()))
    return combined


def _parse_if_needed(
    warehouse: WarehouseResource,
    table: pa.Table,
    column: str,
    timestamp_format: str,
    earliest: datetime,
    *,
    properties: bool = False,
) -> pa.Table:
    """PostgreSQL has no TRY_CAST: parse `column` (value and status) and check the
    properties here, so one bad value cannot fail a whole statement. The same Ibis
    expressions run in an in-process DuckDB over the Arrow table, so both warehouses accept
    and reject exactly the same rows. DuckDB does both in the warehouse itself."""
    if warehouse.engine == "duckdb":
        return table
    rows = ibis.memtable(table.select([column, *(["properties"] if properties else [])]))
    rows = with_parsed_timestamp(rows, column, timestamp_format, earliest)
    checks: dict[str, ir.Value] = {
        name: rows[name] for name in (column + PARSED_SUFFIX, column + STATUS_SUFFIX)
    }
    if properties:
        checks["properties" + PARSED_SUFFIX] = json_object_check(rows.properties).fill_null(False)
    local = ibis.duckdb.connect()
    try:
        # A plain projection keeps the row order, so the columns line up with `table`.
        parsed = local.to_pyarrow(rows.select(**checks))
    finally:
        local.disconnect()
    for name in parsed.column_names:
        table = table.append_column(name, parsed[name])
    return table


def _attach_signups(events: pa.Table, users: pa.Table) -> pa.Table:
    """Add `_signup_at` (null for an unknown user) by a vectorised lookup on user_id.

    A warehouse join would do the same, but it drags every wide text column through a hash
    join; this lookup is a fraction of the cost on tens of millions of rows.
    """
    position = pc.index_in(events["user_id"], value_set=users["user_id"])
    return events.append_column("_signup_at", pc.take(users["signup_at"], position))


def _with_attributes(users: pa.Table) -> pa.Table:
    """Add the input's extra columns as one JSON `attributes` column (extras stay for `raw`)."""
    extras = sorted(c for c in users.column_names if c not in (*USER_COLUMNS, *_BOOKKEEPING))
    if not extras or not users.num_rows:
        return users.append_column("attributes", pa.nulls(users.num_rows, pa.string()))
    # pandas' JSON writer escapes in C: one JSON object per line, one line per user.
    lines = users.select(extras).to_pandas().to_json(orient="records", lines=True)
    values = lines.rstrip("\n").split("\n")
    return users.append_column("attributes", pa.array(values, pa.string()))


def _count(grouped: pd.DataFrame, files: list[StagedFile], kind: str) -> IngestionReport:
    """Reconcile `source, reason, is_duplicate, rows` counts with what each file held."""
    report = IngestionReport(kind=kind)
    by_source = {f.source: Counter[str]() for f in files}
    for source, reason, is_duplicate, rows in zip(
        grouped.source, grouped.reason, grouped.is_duplicate, grouped.rows, strict=True
    ):
        outcome = (
            reason if isinstance(reason, str) else ("duplicate" if is_duplicate else "accepted")
        )
        by_source[str(source)][outcome] += int(rows)
    for staged in files:
        if staged.malformed:
            by_source[staged.source]["malformed_row"] += len(staged.malformed)
        counts = by_source[staged.source]
        report.rows_read += staged.rows_read
        report.accepted += counts["accepted"]
        report.duplicates += counts["duplicate"]
        report.blank_records += staged.blank_records
        report.warnings += staged.warnings
        if staged.skipped:
            report.skipped_files.append(staged.source)
        for outcome, rows in counts.items():
            if outcome not in ("accepted", "duplicate") and rows:
                report.quarantined_by_reason[outcome] += rows
        report.by_source[staged.source] = {
            "read": staged.rows_read,
            **{k: v for k, v in counts.items() if v},
            **({"blank_records": staged.blank_records} if staged.blank_records else {}),
        }
    if not report.reconciles():
        raise RuntimeError(f"{kind}: row counts do not reconcile: {report}")
    return report


def _input_rows(
    text: pa.Table, keys: pd.DataFrame, columns: list[str]
) -> dict[tuple[str, int], dict[str, Any]]:
    """The input text of the rows named by `keys` (source, row_number): few rows, looked up."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    if keys.empty:
        return found
    for source, group in keys.groupby("source"):
        mask = pc.and_(
            pc.equal(text["source"].cast(pa.string()), str(source)),
            pc.is_in(text["row_number"], value_set=pa.array(group.row_number, pa.int64())),
        )
        for record in text.filter(mask).select([*columns, "row_number"]).to_pylist():
            found[(str(source), int(record["row_number"]))] = {c: record[c] for c in columns}
    return found


def _conflict_rows(
    conflicts: pd.DataFrame,
    originals: dict[tuple[str, int], dict[str, Any]],
    columns: list[str],
) -> pa.Table:
    """Quarantine rows for event ids repeated with other content, naming the kept row."""
    records = []
    for row in conflicts.to_dict("records"):
        key = (str(row["source"]), int(row["row_number"]))
        text = originals.get(key, {})
        records.append(
            {
                "source": key[0],
                "row_number": key[1],
                "reason": "conflicting_event_id",
                "field": "event_id",
                "detail": f"event_id {row['event_id']!r} also at {row['kept_source']} row "
                f"{int(row['kept_row_number'])} (kept); differs in {row['differing']}",
                "event_date": None,
                **{c: text.get(c) for c in columns},
            }
        )
    schema = pa.schema(
        [
            ("source", pa.string()),
            ("row_number", pa.int64()),
            ("reason", pa.string()),
            ("field", pa.string()),
            ("detail", pa.string()),
            ("event_date", pa.date32()),
            *[(c, pa.string()) for c in columns],
        ]
    )
    return pa.Table.from_pylist(records, schema=schema)


def _quarantine_table(
    kind: str, rejected: pa.Table, input_columns: list[str], files: list[StagedFile]
) -> pa.Table:
    """This kind's quarantine rows from the current inputs (the whole kind is rebuilt).

    `rejected` holds source, row_number, reason, field, detail, event_date and the input
    columns as text; `raw` keeps them as read (a JSON object), or the line itself if it did
    not parse.
    """
    present = [c for c in input_columns if c in rejected.column_names]
    records = [
        {
            "source": str(row["source"]),
            "row_number": row["row_number"],
            "reason": row["reason"],
            "field": row["field"],
            "raw": json.dumps({c: row[c] for c in present}),
            "kind": kind,
            "event_date": row["event_date"],
            "detail": row.get("detail")
            or (USERS_REASON_DETAILS if kind == "users" else {}).get(row["reason"])
            or REASON_DETAILS.get(row["reason"]),
        }
        for row in rejected.to_pylist()
    ]
    records += [
        {
            "source": bad.source,
            "row_number": bad.row_number,
            "reason": bad.reason,
            "field": bad.field,
            "raw": bad.raw,
            "kind": kind,
            "event_date": None,
            "detail": bad.detail,
        }
        for staged in files
        for bad in staged.malformed
    ]
    return pa.Table.from_pylist(records, schema=QUARANTINE.schema.to_pyarrow())


def _manifest(files: list[StagedFile], report: IngestionReport) -> pa.Table:
    """One row per file version this ingestion read, with its counts."""
    now = datetime.now(UTC)
    rows = []
    for staged in files:
        counts = report.by_source.get(staged.source, {})
        quarantined = sum(
            v
            for k, v in counts.items()
            if k not in ("read", "accepted", "duplicate", "blank_records")
        )
        rows.append(
            {
                "kind": report.kind,
                "source": staged.source,
                "size_bytes": staged.size_bytes,
                "modified_at": None
                if staged.modified_ns is None
                else datetime.fromtimestamp(staged.modified_ns / 1e9, UTC),
                "status": "skipped_empty" if staged.skipped else "ingested",
                "rows_read": staged.rows_read,
                "rows_accepted": counts.get("accepted", 0),
                "duplicates": counts.get("duplicate", 0),
                "rows_quarantined": quarantined,
                "blank_records": staged.blank_records,
                "ingested_at": now,
            }
        )
    return pa.Table.from_pylist(rows, schema=INGESTION_MANIFEST.schema.to_pyarrow())


def event_date_span(
    files: list[StagedFile], config: ProductConfig, *, clock: datetime | None = None
) -> tuple[date, date] | None:
    """First and last day with plausible events, so a full run touches only those partitions."""
    reference = config.as_of or clock or datetime.now(UTC)
    latest = reference + timedelta(hours=config.ingestion.future_tolerance_hours)
    earliest = datetime.combine(config.partitions_start_date, datetime.min.time(), UTC)
    stamps = with_parsed_timestamp(
        ibis.memtable(_combine(files, EVENT_COLUMNS).select(["timestamp"])),
        "timestamp",
        config.ingestion.format_of("events.timestamp"),
        _earliest(config),
    )
    ts = stamps["timestamp" + PARSED_SUFFIX]
    ok = stamps["timestamp" + STATUS_SUFFIX] == OK
    plausible = stamps.mutate(ts=ts).filter(ok & (ts >= earliest) & (ts <= latest))
    local = ibis.duckdb.connect()
    try:
        first, last = local.execute(
            plausible.aggregate(first=plausible.ts.min(), last=plausible.ts.max())
        ).iloc[0]
    finally:
        local.disconnect()
    if first is None or first != first:  # no rows, or NaT
        return None
    return first.date(), last.date()

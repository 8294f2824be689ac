"""Ingestion as plain functions: read -> stage in the warehouse -> classify -> write.

Invariant, checked here and shown in the asset metadata:
rows read = rows accepted + duplicates + rows quarantined.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from onboarding_pipeline.config.product import EVENT_COLUMNS, USER_COLUMNS, ProductConfig
from onboarding_pipeline.ingestion.readers import StagedFile
from onboarding_pipeline.ingestion.validation import (
    classify_events,
    classify_users,
    mark_duplicates,
    parse_timestamp,
)
from onboarding_pipeline.warehouse.resource import WarehouseResource
from onboarding_pipeline.warehouse.tables import QUARANTINE, RAW_EVENTS, RAW_USERS

_BOOKKEEPING = ("source", "row_number")


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

    @property
    def quarantined(self) -> int:
        return sum(self.quarantined_by_reason.values())

    def reconciles(self) -> bool:
        return self.rows_read == self.accepted + self.duplicates + self.quarantined


def ingest_users(
    warehouse: WarehouseResource, files: list[StagedFile], config: ProductConfig
) -> IngestionReport:
    """Replace `raw_users` with the accepted users of `files`; quarantine the rest."""
    del config  # the column mapping was applied by the source; kept for a uniform signature
    staged = warehouse.stage("_staged_users", _with_attributes(_combine(files, USER_COLUMNS)))
    classified = warehouse.stage("_classified_users", warehouse.to_pyarrow(classify_users(staged)))
    accepted = classified.filter(classified.reason.isnull() & ~classified.is_duplicate)
    report = _count(warehouse, classified, files, "users")
    warehouse.replace_all(RAW_USERS.name, accepted)
    _replace_quarantine(warehouse, "users", staged, classified, files, event_date=None)
    report.rows_written = report.accepted
    return report


def ingest_events(
    warehouse: WarehouseResource,
    files: list[StagedFile],
    config: ProductConfig,
    start: datetime,
    end: datetime,
    *,
    clock: datetime | None = None,
) -> IngestionReport:
    """Write accepted events with `start <= timestamp < end` to `raw_events`.

    Every file is validated as a whole (duplicates and counts are global), the partition range
    is replaced atomically, and `quarantine` is rebuilt from the current inputs, so re-running
    on the same files changes nothing.
    """
    reference = config.as_of or clock or datetime.now(UTC)
    rules = config.ingestion
    staged = warehouse.stage("_staged_events", _combine(files, EVENT_COLUMNS))
    expression = classify_events(
        staged,
        warehouse.table(RAW_USERS.name),
        future_limit=reference + timedelta(hours=rules.future_tolerance_hours),
        pre_signup_tolerance=timedelta(hours=rules.pre_signup_tolerance_hours),
        partitions_start=datetime.combine(config.partitions_start_date, datetime.min.time(), UTC),
    )
    valid = expression.filter(expression.reason.isnull())
    flagged = mark_duplicates(valid).union(
        expression.filter(expression.reason.notnull()).mutate(is_duplicate=ibis.literal(False))
    )
    classified = warehouse.connect().create_table(
        "_classified_events", flagged, temp=True, overwrite=True
    )
    report = _count(warehouse, classified, files, "events")

    in_range = classified.filter(
        classified.reason.isnull()
        & ~classified.is_duplicate
        & (classified.timestamp >= start)
        & (classified.timestamp < end)
    )
    warehouse.replace_range(RAW_EVENTS.name, in_range, "timestamp", start, end)
    report.rows_written = int(warehouse.execute(in_range.count()))
    _replace_quarantine(
        warehouse, "events", staged, classified, files, event_date=classified.timestamp.date()
    )
    return report


def _combine(files: list[StagedFile], columns: tuple[str, ...]) -> pa.Table:
    """One text table for all files, with every contract column present."""
    tables = [staged.table for staged in files]
    combined = (
        pa.concat_tables(tables, promote_options="permissive")
        if tables
        else pa.table({name: pa.array([], pa.string()) for name in (*columns, "source")})
    )
    for name in columns:
        if name not in combined.column_names:
            combined = combined.append_column(name, pa.nulls(combined.num_rows, pa.string()))
    if "row_number" not in combined.column_names:
        combined = combined.append_column("row_number", pa.array([], pa.int64()))
    return combined


def _with_attributes(users: pa.Table) -> pa.Table:
    """Add the input's extra columns as one JSON `attributes` column (extras stay for `raw`)."""
    extras = [c for c in users.column_names if c not in (*USER_COLUMNS, *_BOOKKEEPING)]
    rows = users.select(extras).to_pylist() if extras else [None] * users.num_rows
    values = [json.dumps(row, sort_keys=True) if row is not None else None for row in rows]
    return users.append_column("attributes", pa.array(values, pa.string()))


def _count(
    warehouse: WarehouseResource, classified: ir.Table, files: list[StagedFile], kind: str
) -> IngestionReport:
    grouped = classified.group_by("source", "reason", "is_duplicate").agg(rows=classified.count())
    report = IngestionReport(kind=kind)
    by_source = {f.source: Counter[str]() for f in files}
    for row in warehouse.execute(grouped).itertuples(index=False):
        outcome = (
            row.reason
            if isinstance(row.reason, str)
            else ("duplicate" if row.is_duplicate else "accepted")
        )
        by_source[row.source][outcome] += int(row.rows)
    for staged in files:
        if staged.malformed:
            by_source[staged.source]["malformed_row"] += len(staged.malformed)
        counts = by_source[staged.source]
        report.rows_read += staged.rows_read
        report.accepted += counts["accepted"]
        report.duplicates += counts["duplicate"]
        for outcome, rows in counts.items():
            if outcome not in ("accepted", "duplicate") and rows:
                report.quarantined_by_reason[outcome] += rows
        report.by_source[staged.source] = {"read": staged.rows_read, **dict(counts)}
    if not report.reconciles():
        raise RuntimeError(f"{kind}: row counts do not reconcile: {report}")
    return report


def _replace_quarantine(
    warehouse: WarehouseResource,
    kind: str,
    staged: ir.Table,
    classified: ir.Table,
    files: list[StagedFile],
    event_date: ir.DateValue | None,
) -> None:
    """Rebuild this kind's quarantine rows from the current inputs (idempotent).

    `raw` is the row as it was read (every input column as text), not as it was parsed.
    """
    rejected = classified.filter(classified.reason.notnull()).select(
        "source",
        "row_number",
        "reason",
        "field",
        event_date=event_date if event_date is not None else ibis.null("date"),
    )
    originals = staged.rename(_source="source", _row_number="row_number")
    joined = rejected.join(
        originals,
        (rejected.source == originals._source) & (rejected.row_number == originals._row_number),
    )
    input_columns = [c for c in staged.columns if c not in (*_BOOKKEEPING, "attributes")]
    records = [
        {
            "source": row["source"],
            "row_number": row["row_number"],
            "reason": row["reason"],
            "field": row["field"],
            "raw": json.dumps({c: row[c] for c in input_columns}),
            "kind": kind,
            "event_date": row["event_date"],
        }
        for row in warehouse.to_pyarrow(joined).to_pylist()
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
        }
        for staged in files
        for bad in staged.malformed
    ]
    table = pa.Table.from_pylist(records, schema=QUARANTINE.schema.to_pyarrow())
    warehouse.replace_where_equal(QUARANTINE.name, table, "kind", kind)


def event_date_span(
    files: list[StagedFile], config: ProductConfig, *, clock: datetime | None = None
) -> tuple[date, date] | None:
    """First and last day with plausible events, so a full run touches only those partitions."""
    reference = config.as_of or clock or datetime.now(UTC)
    latest = reference + timedelta(hours=config.ingestion.future_tolerance_hours)
    earliest = datetime.combine(config.partitions_start_date, datetime.min.time(), UTC)
    stamps = ibis.memtable(_combine(files, EVENT_COLUMNS).select(["timestamp"]))
    parsed = parse_timestamp(stamps.timestamp)
    plausible = stamps.mutate(ts=parsed).filter(lambda t: (t.ts >= earliest) & (t.ts <= latest))
    first, last = (
        ibis.duckdb.connect()
        .execute(plausible.aggregate(first=plausible.ts.min(), last=plausible.ts.max()))
        .iloc[0]
    )
    if first is None or first != first:  # no rows, or NaT
        return None
    return first.date(), last.date()

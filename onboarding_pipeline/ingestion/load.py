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
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from onboarding_pipeline.config.product import EVENT_COLUMNS, USER_COLUMNS, ProductConfig
from onboarding_pipeline.ingestion.readers import StagedFile
from onboarding_pipeline.ingestion.sources import EventSource
from onboarding_pipeline.ingestion.validation import (
    PARSED_SUFFIX,
    classify_events,
    classify_users,
    duplicate_rows,
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
    warehouse: WarehouseResource, source: EventSource, config: ProductConfig
) -> IngestionReport:
    """Replace `raw_users` with the accepted users of the source; quarantine the rest."""
    files = source.read_users(config.column_mapping.users)
    con = warehouse.connect()
    users = _with_attributes(_combine(files, USER_COLUMNS))
    staged = warehouse.stage("_staged_users", _parse_if_needed(warehouse, users, "signup_at"))
    classified = con.create_table(
        "_classified_users", classify_users(staged), temp=True, overwrite=True
    )
    accepted = classified.filter(classified.reason.isnull() & ~classified.is_duplicate)
    report = _count(
        warehouse.execute(
            classified.group_by("source", "reason", "is_duplicate").agg(rows=classified.count())
        ),
        files,
        "users",
    )
    warehouse.replace_all(RAW_USERS.name, accepted)
    # `raw` shows the rows as read: join the rejects back to their input text.
    rejected = classified.filter(classified.reason.notnull()).select(
        "source", "row_number", "reason", "field", event_date=ibis.null("date")
    )
    originals = [
        c
        for c in staged.columns
        if c not in (*_BOOKKEEPING, "attributes") and not c.endswith(PARSED_SUFFIX)
    ]
    _replace_quarantine(
        warehouse,
        "users",
        rejected.join(staged.select(*_BOOKKEEPING, *originals), list(_BOOKKEEPING)),
        originals,
        files,
    )
    report.rows_written = report.accepted
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
    on the same files changes nothing.
    """
    reference = config.as_of or clock or datetime.now(UTC)
    rules = config.ingestion
    con = warehouse.connect()
    files = source.read_events(config.column_mapping.events)
    # The text table is scanned in place (no copy into the warehouse) and classified once.
    text = _combine(files, EVENT_COLUMNS)
    originals = [c for c in text.column_names if c not in _BOOKKEEPING]
    users = warehouse.to_pyarrow(warehouse.table(RAW_USERS.name).select("user_id", "signup_at"))
    staged = _attach_signups(text, users)
    staged = _parse_if_needed(warehouse, staged, "timestamp", properties=True)
    staged = ibis.memtable(staged)
    expression = classify_events(
        staged,
        future_limit=reference + timedelta(hours=rules.future_tolerance_hours),
        pre_signup_tolerance=timedelta(hours=rules.pre_signup_tolerance_hours),
        partitions_start=datetime.combine(config.partitions_start_date, datetime.min.time(), UTC),
    )
    classified = warehouse.temp_table("_classified_events", expression)
    # From here on the warehouse holds everything: let the text go to bound peak memory.
    del text, staged, expression
    for staged_file in files:
        staged_file.release()
    duplicates = warehouse.temp_table("_duplicate_events", duplicate_rows(classified))
    # Count without joining millions of rows: reasons from the classification, and the
    # (few) duplicates taken out of each file's valid rows.
    outcomes = warehouse.execute(
        classified.group_by("source", "reason").agg(rows=classified.count())
    ).assign(is_duplicate=False)
    repeats = warehouse.execute(duplicates.group_by("source").agg(rows=duplicates.count()))
    for repeat in repeats.itertuples(index=False):
        valid_row = outcomes.source.eq(repeat.source) & outcomes.reason.isna()
        outcomes.loc[valid_row, "rows"] -= repeat.rows
    outcomes = pd.concat(
        [outcomes, repeats.assign(reason=None, is_duplicate=True)], ignore_index=True
    )
    report = _count(outcomes, files, "events")

    valid = classified.filter(classified.reason.isnull()).anti_join(
        duplicates, ["source", "row_number"]
    )
    in_range = valid.filter((valid.timestamp >= start) & (valid.timestamp < end))
    warehouse.replace_range(RAW_EVENTS.name, in_range, "timestamp", start, end)
    # Count what landed (one column of the partition) rather than re-run the classification.
    written = warehouse.table(RAW_EVENTS.name)
    report.rows_written = int(
        warehouse.execute(
            written.filter((written.timestamp >= start) & (written.timestamp < end)).count()
        )
    )

    rejected = classified.filter(classified.reason.notnull())
    _replace_quarantine(
        warehouse,
        "events",
        rejected.mutate(event_date=rejected.timestamp.date(), timestamp=rejected.timestamp_text),
        originals,
        files,
    )
    con.drop_table("_classified_events", force=True)
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


def _parse_if_needed(
    warehouse: WarehouseResource, table: pa.Table, column: str, *, properties: bool = False
) -> pa.Table:
    """PostgreSQL has no TRY_CAST: parse `column` (unparseable -> null) and check the
    properties here, so one bad value cannot fail a whole statement. DuckDB does both in the
    warehouse, much faster."""
    if warehouse.engine == "duckdb":
        return table
    text = table[column].to_pandas()
    stamps = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    table = table.append_column(
        column + PARSED_SUFFIX, pa.array(stamps, pa.timestamp("us", tz="UTC"), from_pandas=True)
    )
    if properties:
        checked = [
            value is None or _is_json_object(value) for value in table["properties"].to_pylist()
        ]
        table = table.append_column("properties" + PARSED_SUFFIX, pa.array(checked, pa.bool_()))
    return table


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


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
    rejected: ir.Table,
    input_columns: list[str],
    files: list[StagedFile],
) -> None:
    """Rebuild this kind's quarantine rows from the current inputs (idempotent).

    `rejected` holds source, row_number, reason, field, event_date and the input columns as
    text; `raw` keeps them as read (a JSON object), or the line itself if it did not parse.
    """
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
        for row in warehouse.to_pyarrow(rejected).to_pylist()
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

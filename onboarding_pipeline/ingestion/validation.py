"""Row validation as warehouse expressions: each staged row gets a reason (or none).

Reasons are stable codes that the quarantine table, the docs and the tests share. The first
failing rule wins, in the order listed, so every rejected row carries exactly one reason.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import ibis
import ibis.expr.types as ir

from onboarding_pipeline.warehouse.tables import UTC_TIMESTAMP

USER_REASONS = (
    "malformed_row",
    "missing_user_id",
    "missing_signup_at",
    "unparseable_signup_at",
    "conflicting_duplicate_user",
)
EVENT_REASONS = (
    "malformed_row",
    "missing_user_id",
    "missing_event_name",
    "missing_timestamp",
    "unparseable_timestamp",
    "invalid_properties",
    "unknown_user",
    "future_timestamp",
    "before_signup",
    "before_partitions_start",
)

_ROW_KEY = ("source", "row_number")
_SEPARATOR = "\x1f"  # unit separator: cannot collide with text in a content hash


@ibis.udf.scalar.builtin
def md5(value: str) -> str:  # type: ignore[empty-body]
    """The engine's own md5 (hex text in DuckDB and PostgreSQL alike)."""


def blank_to_null(value: ir.StringValue) -> ir.StringValue:
    return ibis.ifelse(value.strip() == "", ibis.null(), value)


PARSED_SUFFIX = "__parsed"


def parse_timestamp(value: ir.StringValue) -> ir.TimestampValue:
    """ISO-8601 text to a UTC timestamp: `Z` and offsets honoured, naive read as UTC."""
    return value.try_cast(UTC_TIMESTAMP)


def parsed(staged: ir.Table, column: str) -> ir.TimestampValue:
    """The parsed timestamp of `column`: parsed at staging where the engine cannot TRY_CAST
    (PostgreSQL), else parsed here."""
    name = column + PARSED_SUFFIX
    return staged[name] if name in staged.columns else parse_timestamp(staged[column])


def content_hash(*values: ir.StringValue) -> ir.StringValue:
    return md5(ibis.literal(_SEPARATOR).join([v.fill_null("") for v in values]))


def properties_are_an_object(staged: ir.Table) -> ir.BooleanValue:
    """Valid JSON that starts with "{" is an object; anything else is not a property bag.
    (Checked at staging where the engine cannot TRY_CAST to JSON.)"""
    name = "properties" + PARSED_SUFFIX
    if name in staged.columns:
        return staged[name]
    text = staged.properties
    return text.try_cast("json").notnull() & text.startswith("{")


def classify_users(staged: ir.Table) -> ir.Table:
    """Staged users with `signup_at` parsed and `reason`/`field` set on rejected rows.

    A repeated user_id with identical content is a duplicate (counted, not quarantined); with
    different content it is a conflict, and the first row (by file, then row) wins.
    """
    user_id = blank_to_null(staged.user_id)
    signup_text = blank_to_null(staged.signup_at)
    signup_at = ibis.ifelse(
        signup_text.isnull(), ibis.null(UTC_TIMESTAMP), parsed(staged, "signup_at")
    )
    rows = staged.mutate(user_id=user_id, signup_at=signup_at, _signup_text=signup_text)
    first_rule = ibis.cases(
        (rows.user_id.isnull(), "missing_user_id"),
        (rows._signup_text.isnull(), "missing_signup_at"),
        (rows.signup_at.isnull(), "unparseable_signup_at"),
        else_=ibis.null(),
    )
    rows = rows.mutate(reason=first_rule)
    content_columns = [
        c
        for c in rows.columns
        if c not in {"source", "row_number", "reason", "signup_at"}
        and not c.endswith(PARSED_SUFFIX)
    ]
    rows = rows.mutate(_content=content_hash(*[rows[c].cast("string") for c in content_columns]))
    order = ibis.window(
        group_by=[rows.user_id, rows.reason.isnull()], order_by=["source", "row_number"]
    )
    rows = rows.mutate(
        _rank=ibis.row_number().over(order), _first_content=rows._content.first().over(order)
    )
    repeated = rows.reason.isnull() & (rows._rank > 0)
    rows = rows.mutate(
        is_duplicate=repeated & (rows._content == rows._first_content),
        reason=ibis.ifelse(
            repeated & (rows._content != rows._first_content),
            "conflicting_duplicate_user",
            rows.reason,
        ),
    )
    field = rows.reason.cases(
        ("missing_user_id", "user_id"),
        ("conflicting_duplicate_user", "user_id"),
        ("missing_signup_at", "signup_at"),
        ("unparseable_signup_at", "signup_at"),
        else_=ibis.null(),
    )
    return rows.mutate(field=field).drop("_signup_text", "_content", "_rank", "_first_content")


def classify_events(
    staged: ir.Table,
    *,
    future_limit: datetime,
    pre_signup_tolerance: timedelta,
    partitions_start: datetime,
) -> ir.Table:
    """Staged events with `timestamp` parsed, `reason`/`field` on rejects, `event_id` on the
    valid ones, and `timestamp_text` (the input text) kept for rejects only.

    `staged` carries `_signup_at`, the user's signup (null for an unknown user).
    Blank input values arrive as nulls (the readers see to it), so this runs no string
    trimming over millions of rows. A missing event_id becomes a content hash of user, event,
    instant and properties, so re-reading a file gives the same ids and exact duplicates
    collapse to one row.
    """
    rows = staged.mutate(
        timestamp=parsed(staged, "timestamp"),
        timestamp_text=staged.timestamp,
        _properties_ok=staged.properties.isnull() | properties_are_an_object(staged),
    )
    signup_floor = rows._signup_at - ibis.interval(
        seconds=int(pre_signup_tolerance.total_seconds())
    )
    rules = [
        (rows.user_id.isnull(), "missing_user_id", "user_id"),
        (rows.event_name.isnull(), "missing_event_name", "event_name"),
        (rows.timestamp_text.isnull(), "missing_timestamp", "timestamp"),
        (rows.timestamp.isnull(), "unparseable_timestamp", "timestamp"),
        (~rows._properties_ok, "invalid_properties", "properties"),
        (rows._signup_at.isnull(), "unknown_user", "user_id"),
        (
            rows.timestamp > ibis.literal(future_limit, UTC_TIMESTAMP),
            "future_timestamp",
            "timestamp",
        ),
        (rows.timestamp < signup_floor, "before_signup", "timestamp"),
        # No daily partition would hold it; quarantined rather than silently left out.
        (
            rows.timestamp < ibis.literal(partitions_start, UTC_TIMESTAMP),
            "before_partitions_start",
            "timestamp",
        ),
    ]
    rows = rows.mutate(
        reason=ibis.cases(*[(rule, reason) for rule, reason, _ in rules], else_=ibis.null())
    )
    field_of = {reason: field for _, reason, field in rules}
    valid = rows.reason.isnull()
    # Hash only valid rows without an id (CASE evaluates its branch for those rows alone).
    derived_id = content_hash(
        rows.user_id, rows.event_name, rows.timestamp.cast("string"), rows.properties
    )
    rows = rows.mutate(
        event_id=ibis.ifelse(valid & rows.event_id.isnull(), derived_id, rows.event_id),
        field=rows.reason.cases(*field_of.items(), else_=ibis.null()),
        timestamp_text=ibis.ifelse(valid, ibis.null("string"), rows.timestamp_text),
    )
    return rows.drop("_properties_ok", "_signup_at")


def duplicate_rows(classified: ir.Table) -> ir.Table:
    """`(source, row_number)` of every valid row whose event_id appeared earlier (by file, row).

    Repeats are rare, so the ordering window runs only over the ids that do repeat.
    """
    valid = classified.filter(classified.reason.isnull()).select("event_id", *_ROW_KEY)
    counts = valid.group_by("event_id").agg(_copies=valid.count())
    repeated = valid.semi_join(counts.filter(counts._copies > 1), "event_id")
    order = ibis.window(group_by="event_id", order_by=["source", "row_number"])
    ranked = repeated.mutate(_rank=ibis.row_number().over(order))
    return ranked.filter(ranked._rank > 0).select(*_ROW_KEY)

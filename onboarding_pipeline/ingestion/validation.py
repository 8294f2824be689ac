"""Row validation as warehouse expressions: each staged row gets a reason (or none).

Reasons are stable codes that the quarantine table, the docs and the tests share. The first
failing rule wins, in the order listed, so every rejected row carries exactly one reason.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import ibis
import ibis.expr.types as ir

from onboarding_pipeline.warehouse.tables import UTC_TIMESTAMP

USER_REASONS = (
    "malformed_row",
    "missing_user_id",
    "missing_signup_at",
    "unparseable_signup_at",
    "out_of_range_timestamp",
    "future_timestamp",
    "conflicting_duplicate_user",
)
EVENT_REASONS = (
    "malformed_row",
    "missing_user_id",
    "missing_event_name",
    "missing_timestamp",
    "unparseable_timestamp",
    "out_of_range_timestamp",
    "invalid_properties",
    "unknown_user",
    "future_timestamp",
    "before_signup",
    "before_partitions_start",
    "conflicting_event_id",
)
# Anonymous traffic: quarantined, but governed by its own limit (`max_anonymous_share`).
ANONYMOUS_REASON = "missing_user_id"

_ROW_KEY = ("source", "row_number")
# What a derived event_id always hashes (other columns count where they hold a value).
_HASHED = ("user_id", "event_name", "timestamp", "properties")
_SEPARATOR = "\x1f"  # unit separator: cannot collide with text in a content hash
# A number at least this large is milliseconds (`timestamp_format: auto`): 1e11 seconds is
# the year 5138, 1e11 milliseconds is 1973-03-03, so every plausible instant reads one way.
EPOCH_MS_THRESHOLD = 1e11
# The latest instant stored; later values (and infinity) are `out_of_range_timestamp`.
MAX_TIMESTAMP = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# ISO text with a year of five or more digits: a date no engine holds, not gibberish.
_LARGE_YEAR = r"^\s*[+-]?\d{5,}-\d{1,2}-\d{1,2}"
# Two letters in a row: a zone name or a month name (a `T` or `Z` alone is ISO).
_ZONE_NAME = r"[A-Za-z]{2,}"
_UTC_NAME = r"(?i)(^|[0-9\s])(UTC|GMT)$"
OK, UNPARSEABLE, OUT_OF_RANGE = "ok", "unparseable", "out_of_range"


@ibis.udf.scalar.builtin
def md5(value: str) -> str:  # type: ignore[empty-body]
    """The engine's own md5 (hex text in DuckDB and PostgreSQL alike)."""


def blank_to_null(value: ir.StringValue) -> ir.StringValue:
    return ibis.ifelse(value.strip() == "", ibis.null(), value)


PARSED_SUFFIX = "__parsed"
STATUS_SUFFIX = "__status"


def parse_timestamp(
    text: ir.StringValue, timestamp_format: str, earliest: datetime
) -> tuple[ir.TimestampValue, ir.StringValue]:
    """Timestamp text to a UTC instant (null unless it parses and can be stored), and why
    not where it is null: `unparseable` or `out_of_range` (`timestamp_status` combines them;
    `with_parsed_timestamp` adds both as columns).

    ISO-8601 text: `Z` and offsets honoured, naive read as UTC, a date alone is midnight UTC.
    A number (or numeric text) is seconds or milliseconds since 1970-01-01 UTC, per
    `timestamp_format` (auto: at least `EPOCH_MS_THRESHOLD` is milliseconds); `iso` rejects
    numbers. Instants before `earliest` or after `MAX_TIMESTAMP`, infinity, and ISO years of
    five digits parse but cannot be stored: `out_of_range`.
    """
    number = text.try_cast("float64")
    # A zone *name* (`America/New_York`, `PST`) is not read: DuckDB's cast keeps the last
    # name it saw and applies it to the naive values after it. Only offsets, `Z` and a
    # trailing UTC/GMT are honoured; the CASE keeps the cast from ever seeing a name.
    named_zone = text.re_search(_ZONE_NAME) & ~text.re_search(_UTC_NAME)
    iso = ibis.ifelse(named_zone, ibis.null(UTC_TIMESTAMP), text.try_cast(UTC_TIMESTAMP))
    if timestamp_format == "epoch_ms":
        seconds = number / 1000
    elif timestamp_format == "auto":
        seconds = ibis.ifelse(number.abs() >= EPOCH_MS_THRESHOLD, number / 1000, number)
    else:
        seconds = number
    lowest = (earliest - _EPOCH).total_seconds()
    highest = (MAX_TIMESTAMP - _EPOCH).total_seconds()
    # NaN compares as the largest double in DuckDB: rule it out before the range.
    storable = ~number.isnan() & (seconds >= lowest) & (seconds <= highest)
    micros = (ibis.ifelse(storable, seconds, 0) * 1_000_000).round().cast("int64")
    from_epoch = ibis.literal(_EPOCH, UTC_TIMESTAMP) + micros.as_interval("us")
    iso_storable = (iso >= ibis.literal(earliest, UTC_TIMESTAMP)) & (
        iso <= ibis.literal(MAX_TIMESTAMP, UTC_TIMESTAMP)
    )
    numbers_allowed = ibis.literal(timestamp_format != "iso")
    # CASE evaluates a branch only for the rows that reach it: ISO text (the common case)
    # costs one cast; the number path runs only where the ISO cast failed.
    value = ibis.cases(
        (iso_storable, iso),
        (iso.isnull() & numbers_allowed & storable, from_epoch),
        else_=ibis.null(UTC_TIMESTAMP),
    )
    why_not = ibis.cases(
        (number.notnull() & ~numbers_allowed, UNPARSEABLE),
        (number.notnull() & number.isnan(), UNPARSEABLE),
        (number.notnull(), OUT_OF_RANGE),
        (iso.notnull(), OUT_OF_RANGE),
        (text.re_search(_LARGE_YEAR), OUT_OF_RANGE),
        else_=UNPARSEABLE,
    )
    return value, why_not


def timestamp_status(
    text: ir.StringValue, value: ir.TimestampValue, why_not: ir.StringValue
) -> ir.StringValue:
    """`ok` where `value` parsed, null for null text, else why not (evaluated for those only).
    Takes `value` as an already computed column: recomputing it here would parse twice."""
    return ibis.cases((value.notnull(), OK), (text.isnull(), ibis.null("string")), else_=why_not)


def with_parsed_timestamp(
    staged: ir.Table, column: str, timestamp_format: str, earliest: datetime
) -> ir.Table:
    """`staged` plus `<column>__parsed` (the instant) and `<column>__status` (see
    `parse_timestamp`). Where staging already parsed them (PostgreSQL, which cannot TRY_CAST)
    they are kept as they are."""
    value_name, status_name = column + PARSED_SUFFIX, column + STATUS_SUFFIX
    if value_name in staged.columns:
        return staged
    value, why_not = parse_timestamp(staged[column], timestamp_format, earliest)
    # Two steps, so the status reads the parsed column instead of parsing again.
    step = staged.mutate(**{value_name: value})
    return step.mutate(**{status_name: timestamp_status(step[column], step[value_name], why_not)})


def content_hash(*values: ir.StringValue) -> ir.StringValue:
    return md5(ibis.literal(_SEPARATOR).join([v.fill_null("") for v in values]))


def event_content_hash(
    user_id: ir.StringValue,
    event_name: ir.StringValue,
    instant: ir.StringValue,
    properties: ir.StringValue,
    others: dict[str, ir.StringValue],
) -> ir.StringValue:
    """The derived event_id: an md5 of user, event, instant and properties, plus every other
    value of the row (as `name=value`), so rows that differ only in, say, a `lesson` column
    are two events, not one. A column without a value adds nothing: a row's id does not change
    when another file brings a new column, and rows without other values keep the id they had
    before other columns counted."""
    base = ibis.literal(_SEPARATOR).join(
        [value.fill_null("") for value in (user_id, event_name, instant, properties)]
    )
    if not others:
        return md5(base)
    # concat_ws skips nulls: the named values present, or "" when there are none.
    named = ibis.literal(_SEPARATOR).join(
        [
            ibis.ifelse(value.isnull(), ibis.null("string"), f"{name}=" + value)
            for name, value in others.items()
        ]
    )
    return md5(base + ibis.ifelse(named == "", "", ibis.literal(_SEPARATOR) + named))


def properties_are_an_object(staged: ir.Table) -> ir.BooleanValue:
    """Valid JSON that starts with "{" is an object; anything else is not a property bag.
    (Checked at staging where the engine cannot TRY_CAST to JSON.)"""
    name = "properties" + PARSED_SUFFIX
    if name in staged.columns:
        return staged[name]
    return json_object_check(staged.properties)


def json_object_check(text: ir.StringValue) -> ir.BooleanValue:
    return text.try_cast("json").notnull() & text.startswith("{")


def classify_users(
    staged: ir.Table,
    *,
    timestamp_format: str,
    earliest: datetime,
    future_limit: datetime,
) -> ir.Table:
    """Staged users with `signup_at` parsed and `reason`/`field` set on rejected rows.

    A repeated user_id with identical content is a duplicate (counted, not quarantined); with
    different content it is a conflict, and the first row (by file, then row) wins.
    """
    user_id = blank_to_null(staged.user_id)
    signup_text = blank_to_null(staged.signup_at)
    staged = with_parsed_timestamp(staged, "signup_at", timestamp_format, earliest)
    rows = staged.mutate(
        user_id=user_id,
        signup_at=ibis.ifelse(
            signup_text.isnull(), ibis.null(UTC_TIMESTAMP), staged["signup_at" + PARSED_SUFFIX]
        ),
        _signup_text=signup_text,
        _status=staged["signup_at" + STATUS_SUFFIX],
    )
    first_rule = ibis.cases(
        (rows.user_id.isnull(), "missing_user_id"),
        (rows._signup_text.isnull(), "missing_signup_at"),
        (rows._status == OUT_OF_RANGE, "out_of_range_timestamp"),
        (rows.signup_at.isnull(), "unparseable_signup_at"),
        (rows.signup_at > ibis.literal(future_limit, UTC_TIMESTAMP), "future_timestamp"),
        else_=ibis.null(),
    )
    rows = rows.mutate(reason=first_rule)
    content_columns = [
        c
        for c in rows.columns
        if c not in {"source", "row_number", "reason", "signup_at", "_status"}
        and not c.endswith((PARSED_SUFFIX, STATUS_SUFFIX))
    ]
    rows = rows.mutate(_content=content_hash(*[rows[c].cast("string") for c in content_columns]))
    order = ibis.window(
        group_by=[rows.user_id, rows.reason.isnull()], order_by=["source", "row_number"]
    )
    rows = rows.mutate(
        _rank=ibis.row_number().over(order),
        _first_content=rows._content.first().over(order),
        _first_source=rows.source.first().over(order),
        _first_row=rows.row_number.first().over(order),
    )
    repeated = rows.reason.isnull() & (rows._rank > 0)
    conflict = repeated & (rows._content != rows._first_content)
    rows = rows.mutate(
        is_duplicate=repeated & (rows._content == rows._first_content),
        reason=ibis.ifelse(conflict, "conflicting_duplicate_user", rows.reason),
        detail=ibis.ifelse(
            conflict,
            ibis.literal("user_id also at ")
            + rows._first_source
            + " row "
            + rows._first_row.cast("string")
            + " (kept) with other content",
            ibis.null("string"),
        ),
    )
    field = rows.reason.cases(
        ("missing_user_id", "user_id"),
        ("conflicting_duplicate_user", "user_id"),
        ("missing_signup_at", "signup_at"),
        ("unparseable_signup_at", "signup_at"),
        ("out_of_range_timestamp", "signup_at"),
        ("future_timestamp", "signup_at"),
        else_=ibis.null(),
    )
    auxiliary = [c for c in rows.columns if c.endswith((PARSED_SUFFIX, STATUS_SUFFIX))]
    return rows.mutate(field=field).drop(
        *auxiliary,
        "_signup_text",
        "_status",
        "_content",
        "_rank",
        "_first_content",
        "_first_source",
        "_first_row",
    )


def classify_events(
    staged: ir.Table,
    *,
    future_limit: datetime,
    pre_signup_tolerance: timedelta,
    partitions_start: datetime,
    timestamp_format: str = "auto",
    earliest: datetime = datetime(1990, 1, 1, tzinfo=UTC),
) -> ir.Table:
    """Staged events with `timestamp` parsed, `reason`/`field` on rejects, `event_id` on the
    valid ones, and `timestamp_text` (the input text) kept for rejects only.

    `staged` carries `_signup_at`, the user's signup (null for an unknown user).
    Blank input values arrive as nulls (the readers see to it), so this runs no string
    trimming over millions of rows. A missing event_id becomes a content hash of user, event,
    instant, properties and the row's other values (`event_content_hash`; `id_derived` says
    so), so re-reading a file gives the same ids and exact duplicates collapse to one row.
    """
    staged = with_parsed_timestamp(staged, "timestamp", timestamp_format, earliest)
    rows = staged.mutate(
        timestamp=staged["timestamp" + PARSED_SUFFIX],
        timestamp_text=staged.timestamp,
        _status=staged["timestamp" + STATUS_SUFFIX],
        _properties_ok=staged.properties.isnull() | properties_are_an_object(staged),
    )
    signup_floor = rows._signup_at - ibis.interval(
        seconds=int(pre_signup_tolerance.total_seconds())
    )
    rules = [
        (rows.user_id.isnull(), ANONYMOUS_REASON, "user_id"),
        (rows.event_name.isnull(), "missing_event_name", "event_name"),
        (rows.timestamp_text.isnull(), "missing_timestamp", "timestamp"),
        (rows._status == OUT_OF_RANGE, "out_of_range_timestamp", "timestamp"),
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
    derive = valid & rows.event_id.isnull()
    # Hash only valid rows without an id (CASE evaluates its branch for those rows alone).
    others = {
        name: rows[name]
        for name in staged.columns
        if name not in {*_HASHED, "event_id", *_ROW_KEY}
        and not name.startswith("_")
        and not name.endswith((PARSED_SUFFIX, STATUS_SUFFIX))
    }
    derived_id = event_content_hash(
        rows.user_id, rows.event_name, rows.timestamp.cast("string"), rows.properties, others
    )
    rows = rows.mutate(
        event_id=ibis.ifelse(derive, derived_id, rows.event_id),
        id_derived=derive,
        field=rows.reason.cases(*field_of.items(), else_=ibis.null()),
        timestamp_text=ibis.ifelse(valid, ibis.null("string"), rows.timestamp_text),
    )
    auxiliary = [c for c in rows.columns if c.endswith((PARSED_SUFFIX, STATUS_SUFFIX))]
    return rows.drop("_properties_ok", "_signup_at", "_status", *auxiliary)


_CONTENT = ("user_id", "event_name", "timestamp", "properties")


def repeated_ids(classified: ir.Table) -> ir.Table:
    """`(event_id, source, row_number)` of every valid row whose event_id occurs more than
    once: few rows, found from three columns, so the wide ones are read only for these."""
    valid = classified.filter(classified.reason.isnull()).select("event_id", *_ROW_KEY)
    counts = valid.group_by("event_id").agg(_copies=valid.count())
    return valid.semi_join(counts.filter(counts._copies > 1), "event_id")


def repeated_rows(classified: ir.Table, repeated: ir.Table) -> ir.Table:
    """Every valid row whose event_id appeared earlier (by file, then row), with the row
    that is kept: `duplicate` when user, event, instant and properties are the same,
    `conflicting_event_id` (and the columns that differ) when they are not.

    `repeated` is `repeated_ids(classified)`, materialized: the ordering window runs only
    over the ids that do repeat.
    """
    content = classified.select(*_ROW_KEY, *_CONTENT, "id_derived")
    rows = repeated.join(content, list(_ROW_KEY))
    order = ibis.window(group_by="event_id", order_by=list(_ROW_KEY))
    ranked = rows.mutate(
        _rank=ibis.row_number().over(order),
        kept_source=rows.source.first().over(order),
        kept_row_number=rows.row_number.first().over(order),
        **{f"_first_{c}": rows[c].first().over(order) for c in _CONTENT},
    )
    later = ranked.filter(ranked._rank > 0)
    differs = [
        ibis.ifelse(later[c].identical_to(later[f"_first_{c}"]), ibis.null("string"), c)
        for c in _CONTENT
    ]
    # concat_ws skips nulls: the names of the columns that differ, or "" when none do.
    differing = ibis.literal(", ").join(differs).fill_null("")
    return later.select(
        *_ROW_KEY,
        "event_id",
        "id_derived",
        "kept_source",
        "kept_row_number",
        differing=differing,
        outcome=ibis.ifelse(differing == "", "duplicate", "conflicting_event_id"),
    )

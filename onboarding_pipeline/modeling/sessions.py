"""Sessionization inside the warehouse.

A supplied `session_id` is the session (grouped per user, however long its gaps). Events
without one are split by inactivity: a gap longer than the timeout starts a new session.
A session belongs to the daily partition of its start; rebuilding one day reads a little
context either side so results equal a full recompute, even across midnight.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import ibis
import ibis.expr.types as ir

from onboarding_pipeline.warehouse.resource import WarehouseResource
from onboarding_pipeline.warehouse.tables import RAW_EVENTS, SESSIONS

# Every window over events sorts by this: timestamp, then the unique event id on ties.
SESSION_ORDER = ("timestamp", "event_id")


def inactivity_sessions(events: ir.Table, timeout: timedelta) -> ir.Table:
    """Sessions of events without a supplied session id, split at gaps longer than `timeout`."""
    events = events.filter(events.session_id.isnull())
    # A total order (event_id is unique) in both windows: ordered by timestamp alone, the
    # engine may sort tied events one way for `lag` and another for `cumsum`, and a user's
    # first two events at the same instant then become two sessions with the same id.
    order = ibis.window(group_by="user_id", order_by=SESSION_ORDER)
    previous = events.timestamp.lag().over(order)
    gap_limit = ibis.interval(seconds=int(timeout.total_seconds()))
    starts_session = previous.isnull() | (events.timestamp > previous + gap_limit)
    numbered = events.mutate(_starts=ibis.ifelse(starts_session, 1, 0))
    numbered = numbered.mutate(
        _session_number=numbered._starts.cumsum(group_by="user_id", order_by=SESSION_ORDER)
    )
    sessions = numbered.group_by("user_id", "_session_number").agg(
        session_start=numbered.timestamp.min(),
        session_end=numbered.timestamp.max(),
        event_count=numbered.count(),
    )
    start = sessions.session_start
    # Letters stay outside strftime: PostgreSQL's to_char reads "T" in "%dT" as a suffix.
    readable_start = start.strftime("%Y%m%d").concat("T", start.strftime("%H%M%S.%f"), "Z")
    return sessions.mutate(
        session_id=sessions.user_id.concat("#", readable_start),
        session_id_source=ibis.literal("inactivity"),
    ).drop("_session_number")


def supplied_sessions(events: ir.Table) -> ir.Table:
    """Sessions whose id came with the input."""
    events = events.filter(events.session_id.notnull())
    return events.group_by("user_id", "session_id").agg(
        session_start=events.timestamp.min(),
        session_end=events.timestamp.max(),
        event_count=events.count(),
        session_id_source=ibis.literal("input"),
    )


def with_duration(sessions: ir.Table) -> ir.Table:
    milliseconds = sessions.session_end.delta(sessions.session_start, unit="millisecond")
    sessions = sessions.mutate(duration_seconds=milliseconds.cast("float64") / 1000)
    return sessions.select(*SESSIONS.schema.names).cast(SESSIONS.schema)


def sessions_starting_between(
    events: ir.Table, timeout: timedelta, start: datetime, end: datetime, right_edge: datetime
) -> ir.Table:
    """Sessions that start in `[start, end)`, reading events in `[start - timeout, right_edge)`.

    Events before `start - timeout` cannot join a session that starts at or after `start`, so
    that much look-back decides every start exactly. `right_edge` must lie past the end of
    every session that starts in the range (see `write_sessions`).
    """
    window = events.filter((events.timestamp >= start - timeout) & (events.timestamp < right_edge))
    inferred = inactivity_sessions(window, timeout)
    inferred = inferred.filter((inferred.session_start >= start) & (inferred.session_start < end))

    # A supplied id may span days: collect every event of the ids first seen in the range.
    supplied_keys = (
        events.filter(
            events.session_id.notnull() & (events.timestamp >= start) & (events.timestamp < end)
        )
        .select("user_id", "session_id")
        .distinct()
    )
    supplied = supplied_sessions(events.semi_join(supplied_keys, ["user_id", "session_id"]))
    supplied = supplied.filter((supplied.session_start >= start) & (supplied.session_start < end))
    return with_duration(inferred).union(with_duration(supplied))


def write_sessions(
    warehouse: WarehouseResource, timeout: timedelta, start: datetime, end: datetime
) -> int:
    """Rebuild the sessions that start in `[start, end)`; returns how many were written."""
    events = warehouse.table(RAW_EVENTS.name)
    latest = warehouse.execute(events.timestamp.max())
    horizon = timedelta(days=1)
    while True:
        right_edge = end + horizon
        table = warehouse.temp_table(
            "_sessions_range", sessions_starting_between(events, timeout, start, end, right_edge)
        )
        if latest is None or right_edge > latest:
            break
        # A session still running at the right edge may go on past it: widen and redo.
        open_at_edge = table.filter(table.session_end + _interval(timeout) >= right_edge)
        if warehouse.execute(open_at_edge.count()) == 0:
            break
        horizon *= 2
    warehouse.replace_range(SESSIONS.name, table, "session_start", start, end)
    return int(warehouse.execute(table.count()))


def _interval(delta: timedelta) -> ir.IntervalScalar:
    return ibis.interval(seconds=int(delta.total_seconds()))


def session_violations(
    warehouse: WarehouseResource, start: datetime, end: datetime
) -> dict[str, int]:
    """Sessions in the range that end before they start, are empty, or repeat an id."""
    sessions = warehouse.table(SESSIONS.name)
    sessions = sessions.filter((sessions.session_start >= start) & (sessions.session_start < end))
    found = warehouse.execute(
        sessions.aggregate(
            ends_before_start=(sessions.session_end < sessions.session_start).sum(),
            empty=(sessions.event_count < 1).sum(),
            repeated_id=sessions.count()
            - sessions.user_id.concat("\x1f", sessions.session_id).nunique(),
        )
    ).iloc[0]
    # Sums over no rows are NULL (NaN in pandas): an empty range has no violations.
    return {name: int(value) for name, value in found.items() if value == value and value}

"""Data-quality queries behind the ingestion checks; each returns what it found wrong.

Sums over an empty table are NULL in SQL (NaN here): counted as 0, since an empty window or
table is a normal state, not a violation.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import ibis

from onboarding_pipeline.warehouse.resource import WarehouseResource
from onboarding_pipeline.warehouse.tables import QUARANTINE, RAW_EVENTS, RAW_USERS


def user_key_violations(warehouse: WarehouseResource) -> dict[str, int]:
    users = warehouse.table(RAW_USERS.name)
    found = warehouse.execute(
        users.aggregate(
            null_user_id=users.user_id.isnull().sum(),
            null_signup_at=users.signup_at.isnull().sum(),
            repeated_user_id=users.count() - users.user_id.nunique(),
        )
    ).iloc[0]
    return _nonzero(found.items())


def _nonzero(found: Any) -> dict[str, int]:
    counts = {name: _as_count(value) for name, value in found}
    return {name: count for name, count in counts.items() if count}


def _as_count(value: Any) -> int:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0
    return int(value)


def event_key_violations(
    warehouse: WarehouseResource, start: datetime, end: datetime
) -> dict[str, int]:
    events = warehouse.table(RAW_EVENTS.name)
    events = events.filter((events.timestamp >= start) & (events.timestamp < end))
    missing = warehouse.execute(
        events.aggregate(
            **{
                f"null_{name}": events[name].isnull().sum()
                for name in ("event_id", "user_id", "event_name", "timestamp")
            }
        )
    ).iloc[0]
    problems = _nonzero(missing.items())
    expected = set(RAW_EVENTS.schema.names)
    actual = set(events.columns)
    if expected != actual:
        problems["schema_mismatch"] = len(expected ^ actual)
    return problems


def duplicate_event_ids(warehouse: WarehouseResource) -> int:
    events = warehouse.table(RAW_EVENTS.name)
    return _as_count(warehouse.execute(events.count() - events.event_id.nunique()))


def event_bounds_violations(
    warehouse: WarehouseResource,
    start: datetime,
    end: datetime,
    *,
    latest_allowed: datetime,
    pre_signup_tolerance: timedelta,
) -> dict[str, int]:
    events = warehouse.table(RAW_EVENTS.name)
    users = warehouse.table(RAW_USERS.name).select("user_id", "signup_at")
    events = events.filter((events.timestamp >= start) & (events.timestamp < end))
    joined = events.left_join(users, "user_id")
    floor = joined.signup_at - ibis.interval(seconds=int(pre_signup_tolerance.total_seconds()))
    found = warehouse.execute(
        joined.aggregate(
            after_latest_allowed=(joined.timestamp > latest_allowed).sum(),
            before_signup=(joined.timestamp < floor).sum(),
            unknown_user=joined.signup_at.isnull().sum(),
        )
    ).iloc[0]
    return _nonzero(found.items())


def users_table_state(warehouse: WarehouseResource) -> tuple[int, dict[str, int]]:
    """How many users `raw_users` holds, and its quarantined input rows by reason: what an
    `unknown_user` share is really about."""
    users = _as_count(warehouse.execute(warehouse.table(RAW_USERS.name).count()))
    quarantine = warehouse.table(QUARANTINE.name)
    users_rows = quarantine.filter(quarantine.kind == "users")
    rejected = warehouse.execute(users_rows.group_by("reason").agg(rows=users_rows.count()))
    return users, {row.reason: int(row.rows) for row in rejected.itertuples()}

"""Data-quality queries behind the ingestion checks; each returns what it found wrong."""

from __future__ import annotations

from datetime import datetime, timedelta

import ibis

from onboarding_pipeline.warehouse.resource import WarehouseResource
from onboarding_pipeline.warehouse.tables import RAW_EVENTS, RAW_USERS


def user_key_violations(warehouse: WarehouseResource) -> dict[str, int]:
    users = warehouse.table(RAW_USERS.name)
    found = warehouse.execute(
        users.aggregate(
            null_user_id=users.user_id.isnull().sum(),
            null_signup_at=users.signup_at.isnull().sum(),
            repeated_user_id=users.count() - users.user_id.nunique(),
        )
    ).iloc[0]
    return {name: int(value) for name, value in found.items() if value}


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
    problems = {name: int(value) for name, value in missing.items() if value}
    expected = set(RAW_EVENTS.schema.names)
    actual = set(events.columns)
    if expected != actual:
        problems["schema_mismatch"] = len(expected ^ actual)
    return problems


def duplicate_event_ids(warehouse: WarehouseResource) -> int:
    events = warehouse.table(RAW_EVENTS.name)
    return int(warehouse.execute(events.count() - events.event_id.nunique()))


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
    return {name: int(value) for name, value in found.items() if value}

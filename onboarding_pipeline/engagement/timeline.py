"""How a user moved: signup, milestones, stalls, queue entries, activation (or leaving) and
outcome, in order.

One function builds the rows for any set of users from the warehouse (the `user_timelines`
asset for everyone the experiment assigned, the `timeline` command for one user), so the
table and the command always agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import ibis
import ibis.expr.types as ir
import pandas as pd

from onboarding_pipeline.config.engagement import OnboardingPath
from onboarding_pipeline.outreach.ledger import (
    DUE,
    EXPIRED,
    FAILED,
    OUTBOX,
    SENDING,
    SENT,
    SUPPRESSED,
)
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.tables import (
    INTERVENTION_DELIVERIES,
    INTERVENTION_LEDGER,
    RAW_EVENTS,
    RAW_USERS,
)

TIMELINE_COLUMNS = ["user_id", "at", "kind", "detail", "source"]
# The kind of a delivery row follows its status: only a message that left (or went to the
# outbox for a person to send) reads `delivered`.
DELIVERY_KINDS = {
    SENT: "delivered",
    OUTBOX: "delivered",
    SENDING: "delivery_unconfirmed",  # may have left; checked before any resend
    FAILED: "delivery_failed",
    SUPPRESSED: "suppressed",
    EXPIRED: "expired",
}
# Every kind a timeline row can have, and the order of rows at the same instant: what
# happened before what was decided about it.
KIND_ORDER = {
    "signup": 0,
    "milestone": 1,
    # Leaving at the very instant of the aha moment wins (that activation does not count), so
    # it is read first.
    "left": 2,
    "activated": 3,
    "stalled": 4,
    "queued": 5,
    "held_out": 5,
    **dict.fromkeys(DELIVERY_KINDS.values(), 6),
    "outcome": 7,
}


def milestone_events(paths: dict[str, OnboardingPath]) -> dict[str, str]:
    """Event name -> the label of the first milestone (over all paths) it completes."""
    found: dict[str, str] = {}
    for path in paths.values():
        for milestone in path.milestones:
            for event in milestone.events:
                found.setdefault(event, milestone.label or milestone.name)
    return found


def user_timeline_rows(
    warehouse: WarehouseResource,
    users: ir.Table,
    paths: dict[str, OnboardingPath],
    aha_events: Sequence[str],
    experiment: str,
    *,
    terminal_events: Sequence[str] = (),
) -> pd.DataFrame:
    """The timeline of the users in `users` (a table with a `user_id` column), sorted by
    user, time and kind."""
    ids = users.select(_who=users.user_id).distinct()
    frames = [
        _signups(warehouse, ids),
        _milestones(warehouse, ids, milestone_events(paths), aha_events, terminal_events),
        _ledger(warehouse, ids, experiment),
        _deliveries(warehouse, ids, experiment),
    ]
    found = [frame for frame in frames if len(frame)]
    rows = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=TIMELINE_COLUMNS)
    rows["at"] = pd.to_datetime(rows["at"], utc=True)
    order = rows.kind.map(KIND_ORDER).fillna(9)
    rows = rows.assign(_order=order).sort_values(["user_id", "at", "_order", "detail"])
    return rows[TIMELINE_COLUMNS].reset_index(drop=True)


def _signups(warehouse: WarehouseResource, ids: ir.Table) -> pd.DataFrame:
    raw = warehouse.table(RAW_USERS.name)
    chosen = raw.semi_join(ids, raw.user_id == ids._who)
    frame = warehouse.execute(chosen.select("user_id", at=chosen.signup_at))
    return frame.assign(kind="signup", detail="signed up", source=RAW_USERS.name)


def _milestones(
    warehouse: WarehouseResource,
    ids: ir.Table,
    milestones: dict[str, str],
    aha_events: Sequence[str],
    terminal_events: Sequence[str] = (),
) -> pd.DataFrame:
    """First occurrence of each milestone event, of the aha moment (activation) and of a
    terminal event (the user left; an aha moment after it does not count)."""
    wanted = sorted({*milestones, *aha_events, *terminal_events})
    if not wanted:
        return pd.DataFrame(columns=TIMELINE_COLUMNS)
    events = warehouse.table(RAW_EVENTS.name)
    chosen = events.filter(events.event_name.isin(wanted))
    chosen = chosen.semi_join(ids, chosen.user_id == ids._who)
    first = warehouse.execute(
        chosen.group_by("user_id", "event_name").agg(first_at=chosen.timestamp.min())
    )
    first["first_at"] = pd.to_datetime(first.first_at, utc=True)
    left = first[first.event_name.isin(terminal_events)].groupby("user_id").first_at.min()
    rows = []
    for user, event, at in zip(first.user_id, first.event_name, first.first_at, strict=True):
        gone = user in left.index and left[user] <= at
        after = ", after leaving: not counted" if gone else ""
        if event in milestones:
            detail = f"{milestones[event]} ({event}){after}"
            rows.append((user, at, "milestone", detail, RAW_EVENTS.name))
        if event in aha_events:
            detail = f"aha moment ({event}){after}"
            rows.append((user, at, "activated", detail, RAW_EVENTS.name))
        if event in terminal_events:
            rows.append((user, at, "left", f"left onboarding ({event})", RAW_EVENTS.name))
    return pd.DataFrame(rows, columns=TIMELINE_COLUMNS)


def _ledger(warehouse: WarehouseResource, ids: ir.Table, experiment: str) -> pd.DataFrame:
    """Each queue entry (its stall label, what was decided, the arm) and the outcome."""
    ledger = warehouse.table(INTERVENTION_LEDGER.name)
    chosen = ledger.filter(ledger.experiment == experiment)
    chosen = chosen.semi_join(ids, chosen.user_id == ids._who)
    frame = warehouse.execute(chosen)
    rows = []
    for entry in frame.itertuples(index=False):
        if isinstance(entry.failure_label, str):
            rows.append(
                (
                    entry.user_id,
                    entry.queued_at,
                    "stalled",
                    entry.failure_label,
                    INTERVENTION_LEDGER.name,
                )
            )
        if entry.holdout:
            detail = f"held out (control) from {entry.intervention_type}: {entry.next_action}"
            rows.append(
                (entry.user_id, entry.queued_at, "held_out", detail, INTERVENTION_LEDGER.name)
            )
        else:
            detail = (
                f"{entry.intervention_type} via {entry.channel} (step {entry.escalation_step}, "
                f"owner {entry.owner}): {entry.next_action}"
            )
            rows.append(
                (entry.user_id, entry.queued_at, "queued", detail, INTERVENTION_LEDGER.name)
            )
    outcomes = frame.dropna(subset=["outcome"]).drop_duplicates("user_id")
    for entry in outcomes.itertuples(index=False):
        rows.append(
            (entry.user_id, entry.outcome_at, "outcome", entry.outcome, INTERVENTION_LEDGER.name)
        )
    return pd.DataFrame(rows, columns=TIMELINE_COLUMNS)


def _deliveries(warehouse: WarehouseResource, ids: ir.Table, experiment: str) -> pd.DataFrame:
    """What reached the user (or their owner), or was held back, on the data's clock like
    every other row (`sent_at`, `intent_at` and `updated_at` are the wall clock of the run,
    an audit trail: in a backfill or a simulation they come after every event).

    A delivery run's data-clock time is not stored; it is read back from its day: a row last
    attempted on the day it was queued is at its queue entry's `queued_at` (the queue and the
    delivery run on the same "now"); a row attempted on a later day is at that day's queue
    run (the latest `queued_at` of the ledger on that day), or, with nobody queued that day,
    at the start of the day (UTC): never before its own queue entry. Rows never attempted
    (suppressed, expired) are at their queue entry's time."""
    deliveries = warehouse.table(INTERVENTION_DELIVERIES.name)
    chosen = deliveries.filter((deliveries.experiment == experiment) & (deliveries.status != DUE))
    chosen = chosen.semi_join(ids, chosen.user_id == ids._who)
    ledger = warehouse.table(INTERVENTION_LEDGER.name)
    ledger = ledger.filter(ledger.experiment == experiment)
    queued = ledger.select(_user=ledger.user_id, _day=ledger.queued_on, queued_at=ledger.queued_at)
    chosen = chosen.left_join(
        queued, (chosen.user_id == queued._user) & (chosen.queued_on == queued._day)
    )
    day_clock = ledger.group_by(_run_day=ledger.queued_on).agg(_day_clock=ledger.queued_at.max())
    chosen = chosen.left_join(day_clock, chosen.last_attempt_on == day_clock._run_day)
    frame = warehouse.execute(chosen)
    if frame.empty:
        return pd.DataFrame(columns=TIMELINE_COLUMNS)
    queued_at = pd.to_datetime(frame["queued_at"], utc=True)
    attempt_day = pd.to_datetime(frame["last_attempt_on"]).dt.tz_localize("UTC")
    run_at = pd.to_datetime(frame["_day_clock"], utc=True).fillna(attempt_day)
    # NaT (never attempted) leaves the queue time; max() skips it.
    at = pd.concat([queued_at, run_at], axis=1).max(axis=1)
    rows = [
        (
            entry.user_id,
            when,
            DELIVERY_KINDS.get(entry.status, str(entry.status)),
            f"{entry.channel} {entry.status} (step {entry.escalation_step}): {entry.next_action}"
            + (f" ({entry.note})" if isinstance(entry.note, str) else ""),
            INTERVENTION_DELIVERIES.name,
        )
        for entry, when in zip(frame.itertuples(index=False), at, strict=True)
    ]
    return pd.DataFrame(rows, columns=TIMELINE_COLUMNS)


def one_user(user_id: str) -> ir.Table:
    """A table holding one user id, for `user_timeline_rows`."""
    return ibis.memtable({"user_id": [user_id]})

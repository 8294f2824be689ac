"""What each user had done by a cutoff, aggregated in the warehouse.

Two populations, each seen at a moment that cannot leak its outcome:
- `onboarding`: users still onboarding (window open, not activated, no terminal event), seen
  as of now;
- `backtest`: users whose window has closed, seen as of the end of their early horizon
  (`observation_hours` after signup) or their activation moment, whichever came first. Their
  health scores are compared with what happened next, so the weights are judged on outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import ibis
import ibis.expr.types as ir
import pandas as pd

ONBOARDING = "onboarding"
BACKTEST = "backtest"


@dataclass
class Activity:
    """Per user (`users`) and per user and event (`by_event`), up to each user's cutoff."""

    users: pd.DataFrame  # user_id, population, signup_at, cutoff, label, segments, ...
    by_event: pd.DataFrame  # user_id, event_name, n, first_at, last_at


def people(features: ir.Table, users: ir.Table, now: datetime, observation_hours: int) -> ir.Table:
    """Users of both populations with their cutoff and the attributes paths are chosen by."""
    horizon_end = features.signup_at + ibis.interval(hours=observation_hours)
    early_cutoff = ibis.ifelse(
        features.activation_at.notnull() & (features.activation_at < horizon_end),
        features.activation_at,
        horizon_end,
    )
    # A user who left (terminal event) is not onboarding any more: no score, no queue.
    # (`user_features` built before terminal events existed has no such column: nobody left.)
    stayed = (
        features.terminated_at.isnull()
        if "terminated_at" in features.columns
        else ibis.literal(True)
    )
    population = ibis.cases(
        (features.label.isnull() & stayed, ONBOARDING),
        (features.window_closed, BACKTEST),
        else_=ibis.null("string"),
    )
    chosen = features.select(
        "user_id",
        "signup_at",
        "label",
        population=population,
        cutoff=ibis.ifelse(
            features.label.isnull(), ibis.literal(now, type="timestamp('UTC')"), early_cutoff
        ),
    ).filter(lambda t: t.population.notnull())
    attributes = users.select(
        _user_id=users.user_id,
        role=users.role,
        company_size=users.company_size,
        plan=users.plan,
        use_case=users.use_case,
        tech_savvy=users.tech_savvy,
        job_title=users.job_title,
    )
    return chosen.left_join(attributes, chosen.user_id == attributes._user_id).drop("_user_id")


def _before_cutoff(rows: ir.Table, moment: str, who: ir.Table) -> ir.Table:
    cut = who.select(_user_id=who.user_id, _cutoff=who.cutoff)
    joined = rows.join(cut, rows.user_id == cut._user_id)
    return joined.filter(joined[moment] < joined._cutoff)


def activity_expressions(
    who: ir.Table, events: ir.Table, sessions: ir.Table
) -> tuple[ir.Table, ir.Table]:
    """(per user and event: n, first_at, last_at; per user: active_days, sessions, events)."""
    seen = _before_cutoff(events, "timestamp", who)
    by_event = seen.group_by("user_id", "event_name").agg(
        n=seen.count(), first_at=seen.timestamp.min(), last_at=seen.timestamp.max()
    )
    per_user = seen.group_by(_active_user="user_id").agg(
        active_days=seen.timestamp.truncate("D").nunique(), events=seen.count()
    )
    started = _before_cutoff(sessions, "session_start", who)
    session_counts = started.group_by(_session_user="user_id").agg(sessions=started.count())
    users = who.left_join(per_user, who.user_id == per_user._active_user).drop("_active_user")
    users = users.left_join(session_counts, users.user_id == session_counts._session_user).drop(
        "_session_user"
    )
    users = users.mutate(
        active_days=users.active_days.fill_null(0),
        events=users.events.fill_null(0),
        sessions=users.sessions.fill_null(0),
    )
    return users, by_event


def early_event_reach(features: ir.Table, events: ir.Table, observation_hours: int) -> ir.Table:
    """Per event: how many users did it in their first `observation_hours` and how many
    hours after signup on average (first occurrence); what default paths are derived from."""
    signups = features.select(_user_id=features.user_id, _signup_at=features.signup_at)
    joined = events.join(signups, events.user_id == signups._user_id)
    early = joined.filter(
        (joined.timestamp >= joined._signup_at)
        & (joined.timestamp < joined._signup_at + ibis.interval(hours=observation_hours))
    )
    firsts = early.group_by("user_id", "event_name", "_signup_at").agg(
        first_at=early.timestamp.min()
    )
    hours = (firsts.first_at.epoch_seconds() - firsts._signup_at.epoch_seconds()) / 3600
    firsts = firsts.mutate(hours=hours)
    return firsts.group_by("event_name").agg(users=firsts.count(), mean_hours=firsts.hours.mean())

"""Onboarding KPIs per signup week, with honest eligibility and Wilson intervals.

Every KPI counts only users who had the full chance to reach it by the watermark:

- `activation_rate`: activated users / users whose activation window is closed
  (signup + `window_days` <= watermark).
- `median_hours_to_value`, `p75_hours_to_value`: hours from signup to the first aha event
  among closed-window users who activated within the window (open-window cohorts would only
  show their fast activators). Pre-signup aha events count as zero hours. `eligible_users` is
  the number of users the quantile is taken over; numerator, denominator and the interval
  are NaN.
- `activation_within_<d>d`: users whose first aha event is at most d days after signup /
  users with signup + d days <= watermark (tiers may exceed the activation window).
- `retention_rate`: users active on any calendar day in [signup day + `retention_days`,
  signup day + `retention_days` + 7) / users with signup + `retention_days` + 7 days <=
  watermark (UTC calendar days, matching the daily `activity_days`).
- `onboarding_completion_rate`: closed-window users who did every `onboarding_steps` event
  (any order) within the window / closed-window users. Omitted when no steps are configured.

A user who left (a terminal event: account deleted, unsubscribed) stays in every denominator
they are eligible for and counts in no numerator by what they did at or after leaving: an aha
event or a step after it is no activation or completion (as in `user_features`), and terminal
events and what follows them are no activity (`retention_activity`).

Rows: one per (signup week, KPI), weeks ascending (Monday, ISO date), then an "all" row per
KPI over every user. `meets_target` compares with `targets` (lower is better for
`median_hours_to_value`, higher for rates) and is None when there is no target or no value.
"""

from __future__ import annotations

from collections.abc import Sequence

import ibis.expr.types as ir
import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from onboarding_pipeline.activation.funnel import (
    as_utc,
    before_leaving,
    epoch_days,
    left_at,
    signup_week,
    step_times,
    utc_timestamp,
)
from onboarding_pipeline.config.product import KpiTargets
from onboarding_pipeline.warehouse.resource import milliseconds_between

ALL_WEEKS = "all"
KPI_COLUMNS = [
    "signup_week",
    "kpi",
    "value",
    "numerator",
    "denominator",
    "eligible_users",
    "target",
    "meets_target",
    "ci_low",
    "ci_high",
]
# KPI -> True when lower values are better; KPIs missing here have no target field.
_TARGET_DIRECTION = {
    "activation_rate": False,
    "median_hours_to_value": True,
    "retention_rate": False,
    "onboarding_completion_rate": False,
}


def onboarding_kpis(
    users: pd.DataFrame,
    first_events: pd.DataFrame,
    activity_days: pd.DataFrame,
    *,
    window_days: int,
    tiers_days: list[int],
    retention_days: int,
    onboarding_steps: list[str],
    targets: KpiTargets,
    watermark: pd.Timestamp,
    terminal_events: Sequence[str] = (),
) -> pd.DataFrame:
    """Onboarding KPIs per signup week plus an "all" row; columns in `KPI_COLUMNS`.

    See the module docstring for each KPI's numerator and eligible population. When each user
    left is read from `terminated_at` in `users` and from the `first_events` rows of
    `terminal_events` (`funnel.left_at`); `activity_days` should come from
    `retention_activity` with the same `terminal_events`.
    """
    if users.empty:
        return _empty()
    users = users.reset_index(drop=True)
    now = utc_timestamp(watermark)
    signup = as_utc(users["signup_at"])
    left = left_at(users, first_events, terminal_events)
    # An aha event at or after leaving is no activation: `activated` in user_features says so
    # already, the raw `first_aha_at` (read by the tiers and time to value) does not.
    raw_aha = as_utc(users["first_aha_at"])
    aha_after_leaving = raw_aha >= left  # NaT on either side compares False
    first_aha = raw_aha.mask(aha_after_leaving)
    closed = signup + pd.Timedelta(days=window_days) <= now
    activated = users["activated"].fillna(False).astype(bool) & ~aha_after_leaving

    # Ratio KPIs as per-user (numerator, denominator) booleans, summed per week below.
    ratios: dict[str, tuple[pd.Series, pd.Series]] = {
        "activation_rate": (activated & closed, closed),
    }
    for days in sorted(set(tiers_days)):
        span = pd.Timedelta(days=days)
        eligible = signup + span <= now
        ratios[f"activation_within_{days}d"] = (
            eligible & first_aha.notna() & (first_aha - signup <= span),
            eligible,
        )
    retention_eligible = signup + pd.Timedelta(days=retention_days + 7) <= now
    retained = _retained(users, activity_days, retention_days, left)
    ratios["retention_rate"] = (retention_eligible & retained, retention_eligible)
    if onboarding_steps:
        times = step_times(users, first_events, onboarding_steps)
        deadline = signup + pd.Timedelta(days=window_days)
        in_time = pd.DataFrame(
            {step: (at <= deadline) & before_leaving(at, left) for step, at in times.items()}
        )
        done = in_time.all(axis=1)  # NaT compares False: not done
        ratios["onboarding_completion_rate"] = (closed & done, closed)

    hours_to_value = (
        ((first_aha - signup).dt.total_seconds() / 3600).clip(lower=0).where(activated & closed)
    )

    week = signup_week(users["signup_at"])
    counts = pd.DataFrame(
        {
            (kpi, part): series.to_numpy(dtype=np.int64)
            for kpi, pair in ratios.items()
            for part, series in zip(("num", "den"), pair, strict=True)
        }
    )
    sums = counts.groupby(week.to_numpy(), sort=True).sum()
    sums.loc[ALL_WEEKS] = counts.sum()
    by_week = hours_to_value.groupby(week.to_numpy(), sort=True)
    ttv = pd.DataFrame(
        {"median": by_week.median(), "p75": by_week.quantile(0.75), "count": by_week.count()}
    )
    ttv.loc[ALL_WEEKS] = pd.Series(
        {
            "median": hours_to_value.median(),
            "p75": hours_to_value.quantile(0.75),
            "count": hours_to_value.count(),
        }
    )
    ttv = ttv.reindex(sums.index)

    parts = [_ratio_rows(sums, kpi) for kpi in ratios]
    for kpi, column in (("median_hours_to_value", "median"), ("p75_hours_to_value", "p75")):
        parts.append(
            pd.DataFrame(
                {
                    "signup_week": sums.index.to_numpy(dtype=object),
                    "kpi": kpi,
                    "value": ttv[column].to_numpy(dtype=float),
                    "numerator": np.nan,
                    "denominator": np.nan,
                    "eligible_users": ttv["count"].fillna(0).to_numpy(dtype=np.int64),
                    "ci_low": np.nan,
                    "ci_high": np.nan,
                }
            )
        )
    out = pd.concat(parts, ignore_index=True)
    out = _with_targets(out, targets)
    return _ordered(out, list(ratios))


def retention_activity(
    events: ir.Table,
    users: ir.Table,
    retention_days: int,
    terminal_events: Sequence[str] = (),
) -> ir.Table:
    """`user_id, day` (UTC calendar days with an event) as `_retained` reads them, only near
    each user's retention week: events more than `retention_days` - 1 and less than
    `retention_days` + 7 days after signup, which hold every calendar day of that week (a day
    offset d means a time difference strictly between d - 1 and d + 1 days). Every active
    day of every user would be millions of rows to fetch and look up at 10M events.

    Terminal events are no activity, and nor is anything at or after a user's first one (they
    left for good): a day whose only event is `account_deleted` is not an active day."""
    people = users.select(_user_id=users.user_id, _signup_at=users.signup_at)
    joined = events.join(people, events.user_id == people._user_id)
    elapsed = milliseconds_between(joined.timestamp, joined._signup_at)
    day = 86_400_000
    near = joined.filter(
        (elapsed >= (retention_days - 1) * day) & (elapsed <= (retention_days + 7) * day)
    )
    if terminal_events:
        # Joined after the week's filter: the few events near it, not every event.
        ends = events.filter(events.event_name.isin(list(terminal_events)))
        first_end = ends.group_by(_end_user=ends.user_id).agg(_left_at=ends.timestamp.min())
        marked = near.left_join(first_end, near.user_id == first_end._end_user)
        near = marked.filter(marked._left_at.isnull() | (marked.timestamp < marked._left_at))
    return near.select("user_id", day=near.timestamp.truncate("D")).distinct()


def _retained(
    users: pd.DataFrame, activity_days: pd.DataFrame, retention_days: int, left: pd.Series
) -> pd.Series:
    """Whether each user was active in the week starting `retention_days` after signup day,
    on a day no later than the day they left (the day itself is the warehouse's to judge:
    `retention_activity` keeps only what came before the terminal event)."""
    retained = np.zeros(len(users), dtype=bool)
    if not activity_days.empty:
        position = pd.Index(users["user_id"]).get_indexer(activity_days["user_id"])
        known = position >= 0
        day = epoch_days(activity_days["day"])[known]
        offset = day - epoch_days(users["signup_at"])[position[known]]
        left_day = epoch_days(left)[position[known]]  # NaN: never left
        in_week = (offset >= retention_days) & (offset < retention_days + 7)
        in_week &= ~(day > left_day)  # NaN compares False: kept
        retained[position[known][in_week]] = True
    return pd.Series(retained, index=users.index)


def _ratio_rows(sums: pd.DataFrame, kpi: str) -> pd.DataFrame:
    numerator = sums[(kpi, "num")].to_numpy(dtype=np.int64)
    denominator = sums[(kpi, "den")].to_numpy(dtype=np.int64)
    has_users = denominator > 0
    safe = np.where(has_users, denominator, 1)  # avoid 0/0 inside statsmodels; masked below
    low, high = proportion_confint(numerator, safe, alpha=0.05, method="wilson")
    return pd.DataFrame(
        {
            "signup_week": sums.index.to_numpy(dtype=object),
            "kpi": kpi,
            "value": np.where(has_users, numerator / safe, np.nan),
            "numerator": numerator.astype(float),
            "denominator": denominator.astype(float),
            "eligible_users": denominator,
            "ci_low": np.where(has_users, low, np.nan),
            "ci_high": np.where(has_users, high, np.nan),
        }
    )


def _with_targets(out: pd.DataFrame, targets: KpiTargets) -> pd.DataFrame:
    goals = {kpi: getattr(targets, kpi) for kpi in _TARGET_DIRECTION}
    target = out["kpi"].map(lambda kpi: goals.get(kpi)).astype(float)
    lower_is_better = out["kpi"].map(lambda kpi: _TARGET_DIRECTION.get(kpi, False)).astype(bool)
    meets = np.where(lower_is_better, out["value"] <= target, out["value"] >= target)
    known = target.notna() & out["value"].notna()
    out["target"] = target
    out["meets_target"] = pd.Series(meets, index=out.index, dtype=object).where(known, None)
    return out


def _ordered(out: pd.DataFrame, ratio_kpis: list[str]) -> pd.DataFrame:
    kpi_order = [
        "activation_rate",
        "median_hours_to_value",
        "p75_hours_to_value",
        *[kpi for kpi in ratio_kpis if kpi.startswith("activation_within_")],
        "retention_rate",
        "onboarding_completion_rate",
    ]
    weeks = sorted(set(out["signup_week"]) - {ALL_WEEKS})
    week_rank = {week: i for i, week in enumerate([*weeks, ALL_WEEKS])}
    kpi_rank = {kpi: i for i, kpi in enumerate(kpi_order)}
    out = out.assign(
        _week=out["signup_week"].map(week_rank), _kpi=out["kpi"].map(kpi_rank)
    ).sort_values(["_week", "_kpi"], kind="stable")
    return out[KPI_COLUMNS].reset_index(drop=True)


def _empty() -> pd.DataFrame:
    dtypes = {
        "signup_week": object,
        "kpi": object,
        "value": float,
        "numerator": float,
        "denominator": float,
        "eligible_users": np.int64,
        "target": float,
        "meets_target": object,
        "ci_low": float,
        "ci_high": float,
    }
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in dtypes.items()})

"""Ordered onboarding funnel inside the activation window, overall and per segment.

A user reaches step k when the first occurrences of steps 1..k are in order (each at or after
the previous step's) and all fall within `window_days` of signup. Only first occurrences are
used: a step first done out of order does not count even if it is repeated later in order.
Events stamped a little before signup (anonymous activity merged at signup) are accepted, and
their duration from signup is clipped at zero. A user who left (a terminal event: account
deleted, unsubscribed) reaches no step done at or after leaving, as an aha event after leaving
is no activation (`left_at`).

Population: closed windows only (signup + window <= watermark). A user whose window is still
open may yet reach any step; counting those who already did and not those who have not yet
would inflate every rate, so open windows are in no count.

When the last step is an aha event, it is activation itself as the `activation_rate` KPI counts
it (the first aha within the window, whatever path led there), so the funnel's last
`conversion_from_start` is the KPI of the same users and window.

Denominators, per segment and step k (every count is over closed-window users of that segment):

- `users_entered` = closed-window users.
- `users_reached` = users who reached step k.
- `conversion_from_start` = `users_reached` / `users_entered`.
- `users_at_previous` = users who reached step k-1 (for k = 1: everyone who signed up).
- `conversion_from_previous` = users who reached steps k-1 and k / `users_at_previous` ("of the
  N users who reached step k-1, this share reached step k").
- `dropped` = users who reached step k-1 but not step k.
- `drop_off_rate` = `dropped` / `users_at_previous` (= 1 - `conversion_from_previous`).
- `median_hours_from_previous` = median hours from step k-1 (for k = 1: signup) to step k
  among the users who reached step k.

Rates are NaN when their denominator is zero. Missing segment values are reported as
"unknown"; signup weeks are the Monday (UTC) of the signup week as an ISO date string.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

SEGMENT_TYPES = ("overall", "role", "company_size", "plan", "signup_week")
OVERALL_SEGMENT = "all"
UNKNOWN_SEGMENT = "unknown"
FUNNEL_COLUMNS = [
    "segment_type",
    "segment",
    "step_index",
    "step",
    "users_entered",
    "users_reached",
    "conversion_from_start",
    "users_at_previous",
    "conversion_from_previous",
    "dropped",
    "drop_off_rate",
    "median_hours_from_previous",
]
_COUNTS = ("entered", "reached", "at_previous", "continued", "dropped")
_DAY = pd.Timedelta(days=1)
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def as_utc(values: pd.Series) -> pd.Series:
    """Timestamps as tz-aware UTC (naive input is taken to be UTC already)."""
    values = pd.to_datetime(values)
    if values.dt.tz is None:
        return values.dt.tz_localize("UTC")
    return values.dt.tz_convert("UTC")


def utc_timestamp(value: pd.Timestamp | str) -> pd.Timestamp:
    """One timestamp as tz-aware UTC (naive input is taken to be UTC already)."""
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def epoch_days(values: pd.Series) -> np.ndarray:
    """Whole UTC days since 1970-01-01 (a calendar-day number; NaT becomes NaN)."""
    return ((as_utc(values) - _EPOCH) // _DAY).to_numpy(dtype=float)


def signup_week(signup_at: pd.Series) -> pd.Series:
    """Monday (UTC) of each signup's week as an ISO date string, e.g. "2026-06-01"."""
    days = epoch_days(signup_at)
    # 1970-01-01 was a Thursday (weekday 3), so (days + 3) % 7 is the weekday, Monday = 0.
    mondays = days - (days + 3) % 7
    # Format each distinct Monday once instead of 300k strftime calls.
    unique, inverse = np.unique(mondays, return_inverse=True)
    labels = pd.to_datetime(unique, unit="D").strftime("%Y-%m-%d").to_numpy(dtype=object)
    return pd.Series(labels[inverse], index=signup_at.index, dtype=object)


def step_times(users: pd.DataFrame, first_events: pd.DataFrame, steps: list[str]) -> pd.DataFrame:
    """First time of each step per user: rows aligned with `users`, one column per step."""
    relevant = first_events[first_events["event_name"].isin(steps)]
    stamps = as_utc(relevant["first_at"])
    known = stamps.notna().to_numpy()
    unit = stamps.dt.unit
    ticks = stamps.to_numpy(dtype=f"datetime64[{unit}]").view(np.int64)[known]
    # Codes instead of a (user, step) groupby and pivot: first_events should already hold
    # one row per (user, event), and the earliest wins if not.
    person, people = pd.factorize(relevant["user_id"][known])
    step = pd.Index(steps).get_indexer(pd.Index(relevant["event_name"][known]))
    never = np.iinfo(np.int64).max
    # One row per user with a step, and a last row of "never" for everyone else.
    flat = np.full((len(people) + 1) * len(steps), never, dtype=np.int64)
    np.minimum.at(flat, person * len(steps) + step, ticks)
    earliest = flat.reshape(len(people) + 1, len(steps))
    rows = people.get_indexer(pd.Index(users["user_id"]))
    rows[rows < 0] = len(people)
    first = pd.DataFrame(index=users.index)
    for position, name in enumerate(steps):
        column = earliest[rows, position]
        column[column == never] = np.iinfo(np.int64).min  # NaT
        first[name] = pd.to_datetime(column.view(f"datetime64[{unit}]"), utc=True)
    return first


def left_at(
    users: pd.DataFrame, first_events: pd.DataFrame, terminal_events: Sequence[str] = ()
) -> pd.Series:
    """When each user left (their first terminal event), NaT if they did not; aligned with
    `users`. Read from the `first_events` rows of `terminal_events` and from a `terminated_at`
    column when `users` has one (`user_features`: a terminal event in the window before any
    activation), the earlier of the two."""
    sources = []
    if "terminated_at" in users.columns:
        sources.append(as_utc(users["terminated_at"]))
    if terminal_events:
        sources.append(step_times(users, first_events, list(terminal_events)).min(axis=1))
    if not sources:
        return pd.Series(pd.NaT, index=users.index, dtype="datetime64[us, UTC]")
    return pd.concat(sources, axis=1).min(axis=1)


def before_leaving(at: pd.Series, left: pd.Series) -> pd.Series:
    """Whether each time is strictly before the user left (always, for users who did not
    leave): what a user does at or after leaving does not count, like an aha event."""
    return left.isna() | (at < left)


def step_reach(
    users: pd.DataFrame,
    first_events: pd.DataFrame,
    steps: list[str],
    window_days: int | None,
    terminal_events: Sequence[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Which ordered steps each user reached, and the hours from the previous step.

    Returns (`reached`, `hours`), both aligned with `users` with one column per step: `reached`
    is boolean and prefix-closed (reaching step k implies reaching 1..k-1); `hours` is the time
    from the previous step (signup for the first) for users who reached the step, else NaN.
    `window_days=None` drops the window condition (order only). A step done at or after the
    user left (`left_at`) is not reached.
    """
    times = step_times(users, first_events, steps)
    left = left_at(users, first_events, terminal_events)
    signup = as_utc(users["signup_at"])
    deadline = signup + pd.Timedelta(days=window_days) if window_days is not None else None
    reached = pd.DataFrame(index=users.index)
    hours = pd.DataFrame(index=users.index)
    previous_ok = pd.Series(True, index=users.index)
    previous_at = signup
    for index, step in enumerate(steps):  # a loop over steps, not users
        at = times[step]
        ok = previous_ok & at.notna() & before_leaving(at, left)
        if deadline is not None:
            ok &= at <= deadline
        if index > 0:
            ok &= at >= previous_at
        reached[step] = ok.astype(bool)
        # Pre-signup events (allowed by ingestion) would give negative hours: clip at zero.
        elapsed = ((at - previous_at).dt.total_seconds() / 3600).clip(lower=0)
        hours[step] = elapsed.where(ok)
        previous_ok, previous_at = ok, at
    return reached, hours


def _segment_keys(users: pd.DataFrame) -> dict[str, pd.Series]:
    keys: dict[str, pd.Series] = {
        "overall": pd.Series(OVERALL_SEGMENT, index=users.index, dtype=object)
    }
    for column in ("role", "company_size", "plan"):
        if column in users.columns:
            keys[column] = users[column].astype(object).fillna(UNKNOWN_SEGMENT).astype(str)
    keys["signup_week"] = signup_week(users["signup_at"])
    return keys


def build_funnel(
    users: pd.DataFrame,
    first_events: pd.DataFrame,
    steps: list[str],
    window_days: int,
    watermark: pd.Timestamp,
    aha_events: list[str] | None = None,
    terminal_events: Sequence[str] = (),
) -> pd.DataFrame:
    """Ordered funnel of `steps` within the activation window, overall and per segment.

    One row per (`segment_type`, `segment`, `step_index`, `step`) with the columns in
    `FUNNEL_COLUMNS`; `step_index` starts at 1. See the module docstring for the denominators.
    The window counts as closed when signup + `window_days` <= `watermark`; `users` needs an
    `activated` column (the aha within the window) when the last step is in `aha_events`.
    Steps done after leaving do not count: leaving is read from `terminated_at` in `users`
    and from the `first_events` rows of `terminal_events` (see `left_at`).
    """
    if not steps or users.empty:
        return _empty()
    signup = as_utc(users["signup_at"])
    closed = (signup + pd.Timedelta(days=window_days) <= utc_timestamp(watermark)).to_numpy()
    users = users[closed].reset_index(drop=True)
    if users.empty:
        return _empty()
    reached, hours = step_reach(users, first_events, steps, window_days, terminal_events)

    # Per-user flags (users x steps), summed per segment below.
    reached_arr = reached.to_numpy(dtype=bool)
    previous = np.column_stack([np.ones(len(users), dtype=bool), reached_arr[:, :-1]])
    if steps[-1] in (aha_events or []):
        reached_arr[:, -1] = users["activated"].fillna(False).to_numpy(dtype=bool)
    flags = {
        "entered": np.ones_like(reached_arr),
        "reached": reached_arr,
        "at_previous": previous,
        "continued": previous & reached_arr,
        "dropped": previous & ~reached_arr,
    }
    positions = range(len(steps))
    wide = pd.DataFrame(
        {(name, j): flags[name][:, j].astype(np.int64) for name in _COUNTS for j in positions}
        | {("hours", j): hours.iloc[:, j].to_numpy(dtype=float) for j in positions}
    )
    count_columns = [(name, j) for name in _COUNTS for j in positions]
    hour_columns = [("hours", j) for j in positions]

    parts = []
    for segment_type, key in _segment_keys(users).items():
        grouped = wide.groupby(key.to_numpy(), sort=True)
        sums = grouped[count_columns].sum()
        medians = grouped[hour_columns].median()
        table = pd.concat([sums, medians], axis=1)  # columns: (metric, step position)
        long = table.stack(level=1)
        long.index = long.index.set_names(["segment", "position"])
        long = long.reset_index()
        long.insert(0, "segment_type", segment_type)
        parts.append(long)
    long = pd.concat(parts, ignore_index=True)
    return _finish(long, steps)


def _finish(long: pd.DataFrame, steps: list[str]) -> pd.DataFrame:
    def ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
        return (numerator / denominator.where(denominator > 0)).astype(float)

    out = pd.DataFrame(
        {
            "segment_type": long["segment_type"].astype(str),
            "segment": long["segment"].astype(str),
            "step_index": long["position"].astype(np.int64) + 1,
            "step": np.asarray(steps, dtype=object)[long["position"].astype(np.int64)],
            "users_entered": long["entered"].astype(np.int64),
            "users_reached": long["reached"].astype(np.int64),
            "conversion_from_start": ratio(long["reached"], long["entered"]),
            "users_at_previous": long["at_previous"].astype(np.int64),
            "conversion_from_previous": ratio(long["continued"], long["at_previous"]),
            "dropped": long["dropped"].astype(np.int64),
            "drop_off_rate": ratio(long["dropped"], long["at_previous"]),
            "median_hours_from_previous": long["hours"].astype(float),
        }
    )
    order = {name: i for i, name in enumerate(SEGMENT_TYPES)}
    out = out.sort_values(
        ["segment_type", "segment", "step_index"],
        key=lambda column: column.map(order) if column.name == "segment_type" else column,
        kind="stable",
    )
    return out.reset_index(drop=True)[FUNNEL_COLUMNS]


def _empty() -> pd.DataFrame:
    dtypes = {
        "segment_type": object,
        "segment": object,
        "step_index": np.int64,
        "step": object,
        "users_entered": np.int64,
        "users_reached": np.int64,
        "conversion_from_start": float,
        "users_at_previous": np.int64,
        "conversion_from_previous": float,
        "dropped": np.int64,
        "drop_off_rate": float,
        "median_hours_from_previous": float,
    }
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in dtypes.items()})

"""Behaviour up to a landmark age, for any set of users and ages.

A landmark is an age since signup (e.g. 72 h). Its population is the users whose activation
window has closed and who had not activated by that age; their behaviour is read over the
whole span [signup, signup + age) — never cut at the outcome, so its length is the same for
everyone and cannot carry the answer. The same reading at the user's current age is what the
scoring model sees for a user still onboarding.

The warehouse does the heavy part once: events (aha excluded) bucketed per user, event and
hour since signup, and session starts per hour. Features at any age are then sums over
buckets below that age, in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ibis.expr.types as ir
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from onboarding_pipeline.config import ProductConfig


def hour_buckets(
    events: ir.Table,
    sessions: ir.Table,
    outcomes: ir.Table,
    config: ProductConfig,
    max_hours: int,
) -> tuple[ir.Table, ir.Table]:
    """(`user_id, event_name, hour, n`, `user_id, hour, n`): events and session starts per
    whole hour since signup, in [0, `max_hours`), for the users of `outcomes`."""
    people = outcomes.select(_user_id=outcomes.user_id, _signup_at=outcomes.signup_at)

    def bucketed(rows: ir.Table, moment: str) -> ir.Table:
        joined = rows.join(people, rows.user_id == people._user_id)
        millis = joined[moment].delta(joined._signup_at, unit="millisecond")
        joined = joined.mutate(_hour=(millis.cast("float64") / 3.6e6).floor().cast("int64"))
        return joined.filter((joined._hour >= 0) & (joined._hour < max_hours))

    early = bucketed(events.filter(~events.event_name.isin(config.aha_events)), "timestamp")
    event_hours = early.group_by("user_id", "event_name", hour=early._hour).agg(n=early.count())
    starts = bucketed(sessions, "session_start")
    session_hours = starts.group_by("user_id", hour=starts._hour).agg(n=starts.count())
    return event_hours, session_hours


@dataclass
class Buckets:
    """Hour buckets pulled from the warehouse, indexed for fast sums below any age."""

    user_ids: pd.Index
    events: list[str]
    user: np.ndarray  # per event bucket: user position
    event: np.ndarray  # per event bucket: event position (-1: not a chosen event)
    hour: np.ndarray
    n: np.ndarray
    session_user: np.ndarray
    session_hour: np.ndarray
    session_n: np.ndarray

    @classmethod
    def from_frames(
        cls,
        user_ids: pd.Series | pd.Index,
        events: list[str],
        event_hours: pd.DataFrame,
        session_hours: pd.DataFrame,
    ) -> Buckets:
        """As `from_arrow`, from pandas frames (small inputs, tests)."""
        return cls.from_arrow(
            user_ids,
            events,
            pa.Table.from_pandas(
                event_hours.astype({"user_id": str, "event_name": str}), preserve_index=False
            ),
            pa.Table.from_pandas(session_hours.astype({"user_id": str}), preserve_index=False),
        )

    @classmethod
    def from_arrow(
        cls,
        user_ids: pd.Series | pd.Index,
        events: list[str],
        event_hours: pa.Table,
        session_hours: pa.Table,
    ) -> Buckets:
        """Code user ids and event names once per distinct value (millions of rows)."""
        index = pd.Index(user_ids)

        def codes(column: pa.ChunkedArray, vocabulary: pd.Index) -> np.ndarray:
            encoded = pc.dictionary_encode(column).combine_chunks()
            lookup = vocabulary.get_indexer(pd.Index(encoded.dictionary.to_pylist()))
            indices = encoded.indices.to_numpy(zero_copy_only=False)
            return lookup[indices] if len(lookup) else np.full(len(indices), -1)

        user = codes(event_hours["user_id"], index)
        keep = user >= 0
        session_user = codes(session_hours["user_id"], index)
        session_keep = session_user >= 0
        return cls(
            user_ids=index,
            events=list(events),
            user=user[keep],
            event=codes(event_hours["event_name"], pd.Index(events))[keep],
            hour=_ints(event_hours["hour"])[keep],
            n=_ints(event_hours["n"])[keep],
            session_user=session_user[session_keep],
            session_hour=_ints(session_hours["hour"])[session_keep],
            session_n=_ints(session_hours["n"])[session_keep],
        )

    def at(self, rows: np.ndarray, ages: np.ndarray) -> pd.DataFrame:
        """Behaviour of user `rows[i]` (positions in `user_ids`) before age `ages[i]` hours.

        A user may appear several times, once per age (one row per landmark). Returns one row
        per input row: `n_<event>` counts, `first_hour_<event>` (hour of the first
        occurrence, NaN if none), and the engagement columns.
        """
        rows = np.asarray(rows, dtype=np.int64)
        ages = np.asarray(ages, dtype=float)
        if len(np.unique(rows)) == len(rows):
            return self._at_unique(rows, ages)
        parts = []
        for age in np.unique(ages):  # each age holds a user at most once
            picked = np.flatnonzero(ages == age)
            part = self._at_unique(rows[picked], ages[picked])
            part.index = picked
            parts.append(part)
        return pd.concat(parts).sort_index()

    def _at_unique(self, rows: np.ndarray, ages: np.ndarray) -> pd.DataFrame:
        row_of_user = np.full(len(self.user_ids), -1, dtype=np.int64)
        row_of_user[rows] = np.arange(len(rows))
        target = row_of_user[self.user]
        keep = target >= 0
        keep[keep] = self.hour[keep] < ages[target[keep]]
        target, event, hour, n = target[keep], self.event[keep], self.hour[keep], self.n[keep]
        count = np.zeros((len(rows), len(self.events)), dtype=np.int64)
        first = np.full((len(rows), len(self.events)), np.inf)
        chosen = event >= 0
        np.add.at(count, (target[chosen], event[chosen]), n[chosen])
        np.minimum.at(first, (target[chosen], event[chosen]), hour[chosen])
        out: dict[str, np.ndarray] = {}
        for position, name in enumerate(self.events):
            out[f"n_{name}"] = count[:, position]
            out[f"first_hour_{name}"] = np.where(
                np.isinf(first[:, position]), np.nan, first[:, position]
            )
        last = np.full(len(rows), -1.0)
        np.maximum.at(last, target, hour.astype(float))
        days = np.zeros(len(rows), dtype=np.int64)
        if len(target):
            day_keys = np.unique(target * 100_000 + hour // 24)
            days = np.bincount(day_keys // 100_000, minlength=len(rows))
        out["events_so_far"] = np.bincount(target, weights=n, minlength=len(rows))
        out["sessions_so_far"] = self._sessions_before(rows, ages, row_of_user)
        out["active_days_so_far"] = days
        # Hours since the last activity (the age itself for a user who did nothing yet).
        out["hours_idle"] = np.where(last >= 0, ages - (last + 1), ages).clip(min=0)
        return pd.DataFrame(out)

    def daily_counts(self, rows: np.ndarray, days: int) -> DailyCounts:
        """Per event, how often user `rows[i]` (each at most once) did it by the end of each of
        their first `days` days: what "at least n times within d days" rules are read from."""
        rows = np.asarray(rows, dtype=np.int64)
        row_of_user = np.full(len(self.user_ids), -1, dtype=np.int64)
        row_of_user[rows] = np.arange(len(rows))
        target = row_of_user[self.user]
        keep = (target >= 0) & (self.event >= 0) & (self.hour < days * 24)
        order = np.argsort(self.event[keep], kind="stable")
        return DailyCounts(
            len(rows),
            days,
            target[keep][order],
            self.event[keep][order],
            (self.hour[keep] // 24)[order],
            self.n[keep][order],
        )

    def _sessions_before(
        self, rows: np.ndarray, ages: np.ndarray, row_of_user: np.ndarray
    ) -> np.ndarray:
        target = row_of_user[self.session_user]
        keep = target >= 0
        keep[keep] = self.session_hour[keep] < ages[target[keep]]
        return np.bincount(target[keep], weights=self.session_n[keep], minlength=len(rows))


@dataclass
class DailyCounts:
    """Event buckets of some users below a number of days, grouped by event."""

    users: int
    days: int
    row: np.ndarray
    event: np.ndarray  # sorted
    day: np.ndarray
    n: np.ndarray

    def by_day(self, event: int) -> np.ndarray:
        """(users x days): times each user did `event` by the end of day 1, 2, ..."""
        start, stop = np.searchsorted(self.event, [event, event + 1])
        counts = np.zeros((self.users, self.days), dtype=np.int64)
        np.add.at(counts, (self.row[start:stop], self.day[start:stop]), self.n[start:stop])
        return np.cumsum(counts, axis=1)


def _ints(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.to_numpy(), dtype=np.int64)


def load_buckets(
    warehouse: Any,
    events: ir.Table,
    sessions: ir.Table,
    people: ir.Table,
    user_ids: pd.Series,
    feature_events: list[str],
    config: ProductConfig,
    max_hours: int,
) -> Buckets:
    """Hour buckets of `people` (a table of `user_id, signup_at`) up to `max_hours`, aligned
    with `user_ids`. `warehouse` is the `WarehouseResource`."""
    event_hours, session_hours = hour_buckets(events, sessions, people, config, max_hours)
    return Buckets.from_arrow(
        user_ids,
        feature_events,
        warehouse.to_pyarrow(event_hours),
        warehouse.to_pyarrow(session_hours),
    )


def activated_by(outcomes: pd.DataFrame, ages_hours: np.ndarray | float) -> np.ndarray:
    """Whether each user had activated (within the window) before the given age."""
    hours = (outcomes.activation_at - outcomes.signup_at).dt.total_seconds().to_numpy() / 3600
    return np.nan_to_num(hours, nan=np.inf) < np.asarray(ages_hours, dtype=float)


def landmark_population(outcomes: pd.DataFrame, age_hours: float) -> np.ndarray:
    """Closed windows, not activated by `age_hours`: who a landmark's analysis is about."""
    closed = outcomes.window_closed.to_numpy(dtype=bool) & outcomes.label.notna().to_numpy()
    return closed & ~activated_by(outcomes, age_hours)


def scoring_ages(landmarks: list[int], window_days: int) -> list[float]:
    """Ages (hours) at which the scoring model is trained: the ladder, a few early looks,
    then daily through the first two weeks, weekly to eight weeks, every four weeks after;
    all before the window closes."""
    window = window_days * 24
    ages = {*landmarks, 1, 3, 6, 12}
    ages |= set(range(24, min(window, 14 * 24), 24))
    ages |= set(range(14 * 24, min(window, 56 * 24), 7 * 24))
    ages |= set(range(56 * 24, window, 28 * 24))
    return sorted(float(a) for a in ages if 0 < a < window)


def expand_rows(
    outcomes: pd.DataFrame, ages: list[float], *, eligible: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(user positions, ages): one row per eligible user and age at which they had not
    activated yet."""
    positions = np.flatnonzero(eligible)
    hours = (outcomes.activation_at - outcomes.signup_at).dt.total_seconds().to_numpy() / 3600
    hours = np.nan_to_num(hours, nan=np.inf)[positions]
    user_rows, age_rows = [], []
    for age in ages:
        alive = hours >= age
        user_rows.append(positions[alive])
        age_rows.append(np.full(int(alive.sum()), age))
    if not user_rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(user_rows), np.concatenate(age_rows)

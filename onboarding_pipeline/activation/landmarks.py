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

from dataclasses import dataclass, field
from typing import Any

import ibis.expr.types as ir
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.warehouse.resource import milliseconds_between


def hour_buckets(
    events: ir.Table,
    sessions: ir.Table,
    outcomes: ir.Table,
    config: ProductConfig,
    max_hours: int,
) -> tuple[ir.Table, ir.Table]:
    """(`user_id, event_name, hour, n`, `user_id, hour, n`): events and session starts per
    whole hour since signup, in [0, `max_hours`), for the users of `outcomes`.

    When `outcomes` has a `position` column (the caller's integer for each user), the buckets
    carry it instead of `user_id`: integers group and travel faster than millions of strings.
    """
    key = "position" if "position" in outcomes.columns else "user_id"
    people = outcomes.select(
        _user_id=outcomes.user_id, _signup_at=outcomes.signup_at, _key=outcomes[key]
    )

    def bucketed(rows: ir.Table, moment: str) -> ir.Table:
        joined = rows.join(people, rows.user_id == people._user_id)
        millis = milliseconds_between(joined[moment], joined._signup_at)
        joined = joined.mutate(_hour=(millis.cast("float64") / 3.6e6).floor().cast("int64"))
        return joined.filter((joined._hour >= 0) & (joined._hour < max_hours))

    early = bucketed(events.filter(~events.event_name.isin(config.aha_events)), "timestamp")
    event_hours = early.group_by(early._key.name(key), "event_name", hour=early._hour).agg(
        n=early.count()
    )
    starts = bucketed(sessions, "session_start")
    session_hours = starts.group_by(starts._key.name(key), hour=starts._hour).agg(n=starts.count())
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
    # The chosen events' buckets (user, event, hour, n) sorted by event (stable), made once
    # for every `daily_counts` call.
    _by_event: tuple[np.ndarray, ...] | None = field(default=None, repr=False, compare=False)

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
        """Code user ids and event names once per distinct value (millions of rows); buckets
        that carry a `position` (see `hour_buckets`) already hold each user's position in
        `user_ids`."""
        index = pd.Index(user_ids)

        def codes(column: pa.ChunkedArray, vocabulary: pd.Index) -> np.ndarray:
            encoded = pc.dictionary_encode(column).combine_chunks()
            lookup = vocabulary.get_indexer(pd.Index(encoded.dictionary.to_pylist()))
            indices = encoded.indices.to_numpy(zero_copy_only=False)
            return lookup[indices] if len(lookup) else np.full(len(indices), -1)

        def users(table: pa.Table) -> np.ndarray:
            if "position" in table.column_names:
                return _ints(table["position"])
            return codes(table["user_id"], index)

        user = users(event_hours)
        keep = user >= 0
        session_user = users(session_hours)
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
        # Flat cells and matching dtypes: numpy's fast path for ufunc.at (several times
        # faster than a 2-D index with an int-to-float cast at 10M events).
        width = len(self.events)
        chosen = event >= 0
        cell = target[chosen] * width + event[chosen]
        flat_count = np.zeros(len(rows) * width, dtype=np.int64)
        np.add.at(flat_count, cell, n[chosen])
        flat_first = np.full(len(rows) * width, np.inf)
        np.minimum.at(flat_first, cell, hour[chosen].astype(float))
        count = flat_count.reshape(len(rows), width)
        first = flat_first.reshape(len(rows), width)
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
            # Distinct (row, day) pairs as flags in a rows x days grid, not a sort.
            slots = int(hour.max()) // 24 + 1
            active = np.zeros(len(rows) * slots, dtype=bool)
            active[target * slots + hour // 24] = True
            days = active.reshape(len(rows), slots).sum(axis=1)
        out["events_so_far"] = np.bincount(target, weights=n, minlength=len(rows))
        out["sessions_so_far"] = self._sessions_before(rows, ages, row_of_user)
        out["active_days_so_far"] = days
        # Hours since the last activity (the age itself for a user who did nothing yet).
        out["hours_idle"] = np.where(last >= 0, ages - (last + 1), ages).clip(min=0)
        return pd.DataFrame(out)

    def did_before(self, rows: np.ndarray, ages: np.ndarray) -> np.ndarray:
        """(rows x events): whether user `rows[i]` (each at most once) did each event before
        age `ages[i]` hours, i.e. `at(rows, ages)["n_<event>"] > 0` without the other columns."""
        rows = np.asarray(rows, dtype=np.int64)
        ages = np.asarray(ages, dtype=float)
        row_of_user = np.full(len(self.user_ids), -1, dtype=np.int64)
        row_of_user[rows] = np.arange(len(rows))
        target = row_of_user[self.user]
        keep = (target >= 0) & (self.event >= 0) & (self.n > 0)
        keep[keep] = self.hour[keep] < ages[target[keep]]
        did = np.zeros((len(rows), len(self.events)), dtype=bool)
        did[target[keep], self.event[keep]] = True
        return did

    def daily_counts(self, rows: np.ndarray, days: int) -> DailyCounts:
        """Per event, how often user `rows[i]` (each at most once) did it by the end of each of
        their first `days` days: what "at least n times within d days" rules are read from."""
        rows = np.asarray(rows, dtype=np.int64)
        row_of_user = np.full(len(self.user_ids), -1, dtype=np.int64)
        row_of_user[rows] = np.arange(len(rows))
        if self._by_event is None:
            chosen = np.flatnonzero(self.event >= 0)
            # A few dozen event codes: as int16 the stable sort is a radix sort.
            codes = self.event[chosen]
            order = chosen[
                np.argsort(
                    codes.astype(np.int16) if len(self.events) < 2**15 else codes, kind="stable"
                )
            ]
            self._by_event = (self.user[order], self.event[order], self.hour[order], self.n[order])
        # Filtering buckets already in event order keeps that order (the sort is stable).
        user, event, hour, n = self._by_event
        target = row_of_user[user]
        keep = (target >= 0) & (hour < days * 24)
        return DailyCounts(len(rows), days, target[keep], event[keep], hour[keep] // 24, n[keep])

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

    def subset(self, rows: np.ndarray) -> DailyCounts:
        """The counts of users `rows` (positions here), renumbered in that order."""
        renumber = np.full(self.users, -1, dtype=np.int64)
        renumber[rows] = np.arange(len(rows))
        row = renumber[self.row]
        keep = row >= 0  # a filter keeps the buckets in event order
        return DailyCounts(
            len(rows), self.days, row[keep], self.event[keep], self.day[keep], self.n[keep]
        )

    def by_day(self, event: int) -> np.ndarray:
        """(users x days): times each user did `event` by the end of day 1, 2, ..."""
        start, stop = np.searchsorted(self.event, [event, event + 1])
        counts = np.zeros(self.users * self.days, dtype=np.int64)
        cells = self.row[start:stop] * self.days + self.day[start:stop]
        np.add.at(counts, cells, self.n[start:stop])
        return np.cumsum(counts.reshape(self.users, self.days), axis=1)


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


def _hours_to(outcomes: pd.DataFrame, moment: str) -> np.ndarray:
    """Hours from signup to `moment` per user; infinity where it never came (or no column)."""
    if moment not in outcomes:
        return np.full(len(outcomes), np.inf)
    hours = (outcomes[moment] - outcomes.signup_at).dt.total_seconds().to_numpy() / 3600
    return np.nan_to_num(hours.astype(float), nan=np.inf)


def activated_by(outcomes: pd.DataFrame, ages_hours: np.ndarray | float) -> np.ndarray:
    """Whether each user had activated (within the window) before the given age."""
    return _hours_to(outcomes, "activation_at") < np.asarray(ages_hours, dtype=float)


def left_by(outcomes: pd.DataFrame, ages_hours: np.ndarray | float) -> np.ndarray:
    """Whether each user had a terminal event (deleted the account...) before the given age."""
    return _hours_to(outcomes, "terminated_at") < np.asarray(ages_hours, dtype=float)


def landmark_population(outcomes: pd.DataFrame, age_hours: float) -> np.ndarray:
    """Closed windows, neither activated nor gone by `age_hours`: who a landmark's analysis
    is about (the same risk set as a user scored at that age)."""
    closed = outcomes.window_closed.to_numpy(dtype=bool) & outcomes.label.notna().to_numpy()
    return closed & ~activated_by(outcomes, age_hours) & ~left_by(outcomes, age_hours)


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
    """(user positions, ages): one row per eligible user and age at which they had neither
    activated nor left yet (a scored user is in the same risk set)."""
    positions = np.flatnonzero(eligible)
    exits = np.minimum(_hours_to(outcomes, "activation_at"), _hours_to(outcomes, "terminated_at"))
    hours = exits[positions]
    user_rows, age_rows = [], []
    for age in ages:
        alive = hours >= age
        user_rows.append(positions[alive])
        age_rows.append(np.full(int(alive.sum()), age))
    if not user_rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(user_rows), np.concatenate(age_rows)

"""Which early steps go with activation: an honest association table per landmark.

For every landmark of the ladder, the population is the users whose activation window has
closed and who had not activated by the landmark; behaviour is what they did before it and the
outcome is activation later in the window. A population (or an event's users within it) with
fewer than `min_users` users with and without the event is not judged: its rows are
`inconclusive` with a note saying how many users there are and how many are needed. Every
other event of that population gets:

- naive rates with and without it, and a Haldane-corrected odds ratio (0.5 added to every
  cell, so a 0 % cell is shown, not hidden) with its interval and Fisher / chi-square p;
- a **total effect**: Firth-penalized logistic regression adjusted only for what comes before
  the event: segment attributes, engagement so far *without the event's own activity* (the
  other events' count, how many distinct other events, days and hours active with other
  events: counting the event itself would make doing it look like engagement and push its
  effect below 0) and the events that users typically do before it (earlier median first
  occurrence);
- a **direct effect**: the same, also holding every other event fixed (engagement is then the
  activity outside the chosen events; the event columns are the rest of it);
- Benjamini-Hochberg q-values over every row judged, all landmarks and segments together;
- an E-value for drivers (how strong an unmeasured confounder would have to be, on the risk
  ratio scale, to explain the association away);
- the best "at least n times within d days" rule by phi (a rule whose precision is the base
  rate has phi 0), only for events with a positive association.

An event logged under two names is judged once, under the more widespread one: the same users
(Jaccard >= `alias_jaccard`), or a lossy copy (nearly all its doers did the other, and nearly
every hour it was logged the other was too). An event is newly tracked, and judged only on the
users who signed up after it was first seen, when no doer among the users whose whole span
came before that is implausible (Poisson P(0) < 0.001 at the later signups' rate).

Classes, one definition used by the table, the report, Slack and the UI (m = the equivalence
margin, log of `equivalence_odds_ratio`):
`driver` (total > 0, q < alpha, interval above m), `prerequisite` (as a driver, but it
matters through a later step, named in `works_through`: with the direct effect
indistinguishable from 0, a step before the landmark carries it; or a step read at the next
landmark (or the window's end) that activators mostly did before activating does),
`vanity` (a naive association that adjustment explains away: the total effect's interval
excludes the naive effect and holds 0), `blocker` (total < 0, q < alpha, interval below -m),
`no_effect` (the total effect's interval lies inside (-m, m)), `inconclusive` (anything else,
or a statistic that could not be computed; `note` says why).

Association is not cause: only an experiment proves that pushing a step moves activation.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from firthmodels import FirthLogisticRegression
from scipy import sparse
from scipy.stats import chi2_contingency, fisher_exact, norm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint
from threadpoolctl import threadpool_limits

from onboarding_pipeline.activation.landmarks import (
    Buckets,
    DailyCounts,
    activated_by,
    landmark_population,
)
from onboarding_pipeline.config.product import CriticalPathRules
from onboarding_pipeline.warehouse.tables import CRITICAL_PATH, LANDMARK_POPULATIONS

SEGMENT_TYPES = ("role", "plan", "company_size")
# Engagement so far without the event judged (see `engagement_without`).
ENGAGEMENT = (
    "log_other_events",
    "other_events_distinct",
    "other_active_days",
    "log_other_active_hours",
)
ADJUST_FOR = ("role", "plan", "company_size", "use_case", "tech_savvy")
CLASSES = ("driver", "prerequisite", "vanity", "blocker", "no_effect", "inconclusive")
COLUMNS = list(CRITICAL_PATH.schema.names)
THRESHOLD_TIMES = (1, 2, 3, 5)
# Segment populations get a smaller regression sample: many of them, each a side view.
SEGMENT_REGRESSION_USERS = 5_000
# Beyond this |log odds ratio| a p-value and interval come from the likelihood-ratio test,
# not the Wald test (see `_fit`).
LRT_MIN_EFFECT = 2.0
# Firth fits converge when the largest gradient of the penalized log-likelihood is below this.
# The library's 1e-4 is out of reach in a wide, ill-conditioned design (hundreds of events
# beside engagement counts): step-halving can then no longer improve, and a fit already at
# its optimum (a near-total blocker beside 300 events) was reported as not converged.
FIT_GTOL = 1e-3
# Newly tracked only if no doer before the first sighting is this improbable (Poisson P(0)).
NEWLY_TRACKED_P = 0.001
# A lossy copy of an event keeps at least this share of the original's doers (see
# `find_aliases`): a rare event logged alongside a common one is not its copy.
COPY_MIN_SHARE = 0.5
# A prerequisite enables its later step: that step is at least this many times as common
# among users who did the prerequisite as among those who did not.
ENABLING_RATIO = 2.0


@dataclass
class LaterSteps:
    """What the population had done by a later fixed age than its landmark."""

    hours: float
    did: np.ndarray  # users x events
    timing: np.ndarray  # per event: median first hour of its doers (inf: nobody)
    # Per event: activators who did it by `hours` mostly did it before activating (a step
    # mostly done after activating is a consequence of activation, never a mediator).
    before_activation: np.ndarray


@dataclass
class Population:
    """One landmark population: who, their behaviour before the landmark, their outcome."""

    landmark_hours: int
    segment_type: str
    segment: str
    users: pd.DataFrame  # outcome rows (segments, signup_at, label)
    behaviour: pd.DataFrame  # Buckets.at(...) rows aligned with `users`
    positions: np.ndarray  # user positions in the Buckets
    # Engagement leaving each event out (`engagement_without`), and log(1 + activity outside
    # the chosen events) per user.
    engagement: dict[str, np.ndarray]
    outside: np.ndarray
    daily: DailyCounts | None = None  # counts by the end of each day (lazy)
    # The steps read at a later fixed age (`_later_steps`), overall populations only.
    later: LaterSteps | None = None
    # Per pair of events, the share of one's user-hours shared with the other (lazy).
    together: np.ndarray | None = None
    # Segment attributes (built once): values (users x covariates) and their names.
    covariates: tuple[np.ndarray, list[str]] | None = None
    # A segment: the population it is part of, and its users' rows there.
    part_of: tuple[Population, np.ndarray] | None = None

    def daily_counts(self, buckets: Buckets) -> DailyCounts:
        if self.daily is None:
            if self.part_of is not None:  # the whole population's counts, cut down
                whole, rows = self.part_of
                self.daily = whole.daily_counts(buckets).subset(rows)
            else:
                self.daily = buckets.daily_counts(self.positions, self.landmark_hours // 24)
        return self.daily

    def counts_by_day(self, buckets: Buckets, event: int) -> np.ndarray:
        """(users x days): how often each user did event `event` (its position in
        `buckets.events`) by the end of each day of their life before the landmark."""
        return self.daily_counts(buckets).by_day(event)


# One BLAS thread: the regressions are small, and threads fighting over two cores made them
# many times slower.
@threadpool_limits.wrap(limits=1)
def critical_path(
    outcomes: pd.DataFrame,
    buckets: Buckets,
    first_seen: dict[str, pd.Timestamp],
    landmarks: list[int],
    main_landmark: int,
    rules: CriticalPathRules,
    seed: int = 0,
    screened: pd.DataFrame | None = None,
    *,
    window_hours: int | None = None,
) -> pd.DataFrame:
    """Judge every event of `buckets.events` at every landmark (segments at the main one).

    `screened` holds rows of events left out of the judgement (`screen_unjudged`): they join
    the false-discovery family, as rows judged naively.

    `outcomes` is one row per user aligned with `buckets.user_ids` (signup_at, activation_at,
    label, window_closed, segments). `first_seen[event]` is when the event was first logged
    by anyone: users who signed up before it are not judged only on later signups unless the
    evidence says it was not logged before (`_observable`).

    A step that may carry an event's effect is also read at a later fixed age: the next
    landmark of the ladder, or for the last one `window_hours` (the end of the activation
    window) when given; the buckets must reach that age.
    """
    outcomes = outcomes.reset_index(drop=True)
    frames = []
    ladder = sorted(landmarks)
    for landmark in landmarks:
        mask = landmark_population(outcomes, landmark)
        positions = np.flatnonzero(mask)
        if not len(positions) or not buckets.events:
            continue
        behaviour = buckets.at(positions, np.full(len(positions), float(landmark)))
        users = outcomes.iloc[positions].reset_index(drop=True)
        chosen = behaviour[[f"n_{e}" for e in buckets.events]].sum(axis=1).to_numpy()
        outside = np.log1p(np.clip(behaviour.events_so_far.to_numpy() - chosen, 0, None))
        overall = Population(
            landmark,
            "overall",
            "all",
            users,
            behaviour,
            positions,
            engagement_without(buckets, positions, float(landmark)),
            outside,
        )
        later_age = next((age for age in ladder if age > landmark), window_hours)
        if later_age is not None and later_age > landmark:
            overall.later = _later_steps(buckets, positions, users, float(later_age))
        frames.append(_judge(overall, buckets, first_seen, rules, rules.max_regression_users, seed))
        if landmark != main_landmark:
            continue
        for segment_type in SEGMENT_TYPES:
            if segment_type not in users.columns:
                continue
            for segment, members in users.groupby(segment_type, dropna=True):
                if len(members) < 10 * rules.min_users:
                    continue
                index = members.index.to_numpy()
                part = Population(
                    landmark,
                    segment_type,
                    str(segment),
                    members.reset_index(drop=True),
                    behaviour.iloc[index].reset_index(drop=True),
                    positions[index],
                    {name: values[index] for name, values in overall.engagement.items()},
                    outside[index],
                    part_of=(overall, index),
                )
                frames.append(
                    _judge(part, buckets, first_seen, rules, SEGMENT_REGRESSION_USERS, seed)
                )
    if screened is not None and len(screened):
        frames.append(screened)
    if not frames:
        return empty_table()
    table = pd.concat(frames, ignore_index=True)
    # One family for the false-discovery rate: every row judged, all populations together.
    table["q_value"] = _bh(table.p_value.to_numpy())
    table["total_q_value"] = _bh(table.total_p_value.to_numpy())
    table["direct_q_value"] = _bh(table.direct_p_value.to_numpy())
    judged = [judgement(row, rules) for row in table.itertuples()]
    table["classification"] = [kind for kind, _ in judged]
    table["note"] = [
        "; ".join(part for part in (note, why) if part)
        for note, (_, why) in zip(table.note, judged, strict=True)
    ]
    table["e_value"] = np.where(table.classification == "driver", table.e_value, np.nan)
    table["e_value_ci"] = np.where(table.classification == "driver", table.e_value_ci, np.nan)
    table.loc[table.classification != "prerequisite", "works_through"] = None
    return table[COLUMNS]


BEYOND_MAX_EVENTS = "beyond critical_path.max_events"


def screen_unjudged(
    outcomes: pd.DataFrame,
    first_hours: pd.DataFrame,
    landmarks: list[int],
    rules: CriticalPathRules,
) -> pd.DataFrame:
    """Naive rows for events left out of the model and the regressions (beyond `max_events`,
    which keeps the most widespread), so that a rare event with a strong association, such as
    a near-total blocker done by a few percent of users, is still seen and counted in the
    false-discovery family. `first_hours`: `position` (row of `outcomes`), `event_name`,
    `first_hour` (hours from signup). Only events with `min_users` users with and without
    them in a population get a row; no adjusted effect, class `inconclusive`."""
    outcomes = outcomes.reset_index(drop=True)
    rows = []
    note = (
        f"{BEYOND_MAX_EVENTS} ({rules.max_events}): naive association only, not adjusted; "
        "raise max_events to judge it"
    )
    for landmark in landmarks:
        members = landmark_population(outcomes, landmark)
        if members.sum() < 2 * rules.min_users:
            continue
        activated = outcomes.label.to_numpy() == 1
        early = first_hours[first_hours.first_hour < landmark]
        for event, part in early.groupby("event_name", sort=True):
            did = np.zeros(len(outcomes), dtype=bool)
            did[part.position.to_numpy(dtype=np.int64)] = True
            did = did[members]
            if min(did.sum(), (~did).sum()) < rules.min_users:
                continue
            row = naive_association(did, activated[members], rules)
            row.update(
                landmark_hours=landmark,
                segment_type="overall",
                segment="all",
                event_name=str(event),
                population_users=int(members.sum()),
                not_judged=True,
                note=note,
            )
            rows.append(row)
    table = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in table.columns:
            table[column] = np.nan if _dtype(column) is float else None
    return table


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=_dtype(name)) for name in COLUMNS})


def _dtype(name: str) -> Any:
    kind = CRITICAL_PATH.schema[name]
    if kind.is_string():
        return object
    if kind.is_boolean():
        return bool
    if kind.is_integer():
        return np.int64
    return float


def _judge(
    population: Population,
    buckets: Buckets,
    first_seen: dict[str, pd.Timestamp],
    rules: CriticalPathRules,
    max_users: int,
    seed: int,
) -> pd.DataFrame:
    users, behaviour = population.users, population.behaviour
    activated = users.label.to_numpy() == 1
    events = buckets.events
    did = np.column_stack([behaviour[f"n_{e}"].to_numpy() > 0 for e in events])
    observable = {
        e: _observable(users.signup_at, first_seen.get(e), population, did[:, i])
        for i, e in enumerate(events)
    }
    first_hours = np.column_stack([behaviour[f"first_hour_{e}"].to_numpy() for e in events])
    # Which events are logged in the same hours is a property of the instrumentation, not of
    # a segment: a segment reuses its population's.
    whole = population.part_of[0] if population.part_of is not None else population
    if whole.together is None:
        whole.together = co_occurrence(buckets, whole.positions, whole.landmark_hours)
    together = whole.together
    aliases = find_aliases(did, events, rules.alias_jaccard, together)
    timing = {
        e: float(np.nanmedian(first_hours[:, i])) if did[:, i].any() else np.inf
        for i, e in enumerate(events)
    }
    too_few = {e: _too_few(did[observable[e], i], rules) for i, e in enumerate(events)}
    judged = [e for e in events if e not in aliases and not too_few[e]]
    sample = _sample(len(users), max_users, activated, seed)
    direct = _direct_effects(population, did, events, judged, observable, sample, activated)

    rows = []
    for position, event in enumerate(events):
        keep = observable[event]
        row: dict[str, Any] = {
            "landmark_hours": population.landmark_hours,
            "segment_type": population.segment_type,
            "segment": population.segment,
            "event_name": event,
            "population_users": int(keep.sum()),
            "not_judged": False,
        }
        notes = []
        if not keep.all():
            row["tracked_since"] = f"{first_seen[event]:%Y-%m-%d}"
            notes.append(
                f"tracked since {first_seen[event]:%Y-%m-%d}: judged on the "
                f"{int(keep.sum())} users who signed up after"
            )
        row.update(naive_association(did[keep, position], activated[keep], rules))
        if too_few[event]:
            notes.append(too_few[event])
            row["not_judged"] = True
        elif event in aliases:
            row["aliased_with"] = aliases[event]
            notes.append(
                f"done by the same users as {aliases[event]} (one action logged twice): "
                f"judged once, as {aliases[event]}"
            )
            row["not_judged"] = True
        else:
            earlier = [e for e in judged if e != event and timing[e] < timing[event]]
            if population.segment_type == "overall":
                total = _fit_effect(
                    population, did, events, event, earlier, keep & sample, activated
                )
            else:
                # A segment is a side view: judged on its one direct-effect model (a model per
                # event and segment would cost more than the whole rest of the table).
                total = {
                    k.removeprefix("direct_"): v
                    for k, v in direct.get(event, {}).items()
                    if k != "direct_note"
                }
            row.update({f"total_{k}": v for k, v in total.items() if k != "note"})
            if total.get("note"):
                notes.append(f"total effect: {total['note']}")
            row.update(direct.get(event, {}))
            if direct.get(event, {}).get("direct_note"):
                notes.append(f"direct effect: {direct[event]['direct_note']}")
            row["works_through"], row["enables_later_step"], why = (
                (None, False, "")
                if population.segment_type != "overall"
                else _mediator(
                    population,
                    did,
                    events,
                    event,
                    earlier,
                    judged,
                    timing,
                    direct,
                    total,
                    keep & sample,
                    activated,
                    aliases,
                )
            )
            if why:
                notes.append(why)
            e_value, e_value_ci = e_values(row, activated[keep].mean())
            row["e_value"], row["e_value_ci"] = e_value, e_value_ci
            row.update(_threshold(population, buckets, position, activated, keep, row, rules))
        hours = behaviour.loc[did[:, position] & activated, f"first_hour_{event}"]
        row["median_hours_to_event_activators"] = float(hours.median()) if len(hours) else np.nan
        row["note"] = "; ".join(notes)
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in table.columns:
            table[column] = np.nan if _dtype(column) is float else None
    return table


def _later_steps(
    buckets: Buckets, positions: np.ndarray, users: pd.DataFrame, hours: float
) -> LaterSteps:
    """Behaviour of the population by `hours`: a fixed age, the same for every user, so its
    length does not depend on the outcome."""
    behaviour = buckets.at(positions, np.full(len(positions), hours))
    first = np.column_stack([behaviour[f"first_hour_{e}"].to_numpy() for e in buckets.events])
    did = ~np.isnan(first)
    activation = (users.activation_at - users.signup_at).dt.total_seconds().to_numpy() / 3600
    activators = users.label.to_numpy() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an event nobody did has no median
        timing = np.nan_to_num(np.nanmedian(first, axis=0), nan=np.inf)
    before = np.zeros(len(buckets.events), dtype=bool)
    for i in range(len(buckets.events)):
        done = activators & did[:, i]
        # The step's whole hour bucket ended before the activation moment.
        before[i] = done.any() and float(np.mean(first[done, i] + 1 <= activation[done])) > 0.5
    return LaterSteps(hours, did, timing, before)


def _observable(
    signup: pd.Series,
    first_seen: pd.Timestamp | None,
    population: Population,
    did: np.ndarray,
) -> np.ndarray:
    """Users for whom the event could have been logged over their whole landmark span.

    Newly tracked is decided by evidence, not by a late first sighting (a rare event is first
    seen late by chance): the users whose whole span ended before `first_seen`, times the
    share of later signups who did it, is how many doers were to be expected among them.
    Only when seeing none of them is implausible (Poisson P(0) < `NEWLY_TRACKED_P`) was the
    event not logged before, and it is judged on the users who signed up after.
    """
    everyone = np.ones(len(signup), dtype=bool)
    if first_seen is None or not len(signup):
        return everyone
    after = (signup >= first_seen).to_numpy()
    span = pd.Timedelta(hours=population.landmark_hours)
    before = int(((signup + span) <= first_seen).sum())
    if not after.any() or not before:
        return everyone
    expected = before * float(did[after].mean())
    return after if math.exp(-expected) < NEWLY_TRACKED_P else everyone


def _too_few(did: np.ndarray, rules: CriticalPathRules) -> str:
    """Why an event is not judged on these users (too few with or without it), or ""."""
    need = rules.min_users
    if len(did) < 2 * need:
        return (
            f"too few users: the population has {len(did)}, judging needs at least {2 * need} "
            f"(`critical_path.min_users` = {need} with and {need} without the event)"
        )
    done = int(did.sum())
    if min(done, len(did) - done) < need:
        return (
            f"too few users: {done} of {len(did)} did it, judging needs at least {need} with "
            f"and {need} without it (`critical_path.min_users`)"
        )
    return ""


def naive_association(
    did: np.ndarray, activated: np.ndarray, rules: CriticalPathRules
) -> dict[str, Any]:
    """Rates with and without the event, lift, Haldane odds ratio with interval, p-value."""
    a = int((did & activated).sum())
    b = int((did & ~activated).sum())
    c = int((~did & activated).sum())
    d = int((~did & ~activated).sum())
    with_event, without_event = a + b, c + d
    rate_with = a / with_event if with_event else np.nan
    rate_without = c / without_event if without_event else np.nan
    if not with_event or not without_event:
        # Done by everyone (or no one): nothing to compare, so no ratio and no interval.
        return {
            "users_with_event": with_event,
            "users_without_event": without_event,
            "activation_rate_with": rate_with,
            "activation_rate_without": rate_without,
            "lift": np.nan,
            "odds_ratio": np.nan,
            "ci_low": np.nan,
            "ci_high": np.nan,
            "p_value": np.nan,
        }
    # Haldane-Anscombe: 0.5 in every cell, so empty cells give a finite, shown estimate.
    log_or = math.log((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
    se = math.sqrt(1 / (a + 0.5) + 1 / (b + 0.5) + 1 / (c + 0.5) + 1 / (d + 0.5))
    z = norm.ppf(1 - rules.alpha / 2)
    return {
        "users_with_event": with_event,
        "users_without_event": without_event,
        "activation_rate_with": rate_with,
        "activation_rate_without": rate_without,
        "lift": rate_with / rate_without if rate_without else np.nan,
        "odds_ratio": math.exp(log_or),
        "ci_low": math.exp(log_or - z * se),
        "ci_high": math.exp(log_or + z * se),
        "p_value": _p_value(a, b, c, d),
    }


def _p_value(a: int, b: int, c: int, d: int) -> float:
    """Fisher's exact test when an expected count is small, else Pearson's chi-square."""
    observed = np.array([[a, b], [c, d]])
    total = observed.sum()
    if total == 0 or observed.sum(axis=0).min() == 0 or observed.sum(axis=1).min() == 0:
        return float("nan")
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total
    if expected.min() < 5:
        return float(fisher_exact(observed)[1])
    return float(chi2_contingency(observed, correction=False)[1])


def find_aliases(
    did: np.ndarray,
    events: list[str],
    min_jaccard: float,
    together: np.ndarray | None = None,
) -> dict[str, str]:
    """event -> the event it duplicates; the more widespread name of each group is kept.

    A duplicate is done by the same users (Jaccard >= `min_jaccard`) and, given `together`,
    logged in the same hours (a later step that nearly every user of an earlier one goes on to
    do, by a late landmark, is done by the same users too, but hours later); or, given `together`
    (`co_occurrence`), is a lossy copy: nearly all its doers did the other (share >=
    `min_jaccard`), it keeps at least `COPY_MIN_SHARE` of them, and nearly every time it was
    logged (share >= `min_jaccard` of its user-hours) the other was logged in the same hour.
    Timing is what tells a copy from a later step that only users of an earlier one do (a
    prerequisite chain): that step comes in a later hour for some of its users at least, and
    funnel steps done in one session still spill over hours (60-80 % of their user-hours
    shared on the sample, 100 % for its copy). A step done in the very hour of another by
    nearly every one of its doers cannot be told from a copy at hour resolution."""
    counts = did.sum(axis=0)
    as_float = did.astype(np.float32)  # a BLAS product (exact: counts stay far below 2**24)
    both = np.rint(as_float.T @ as_float).astype(np.int64)
    either = counts[:, None] + counts[None, :] - both
    with np.errstate(invalid="ignore", divide="ignore"):
        jaccard = np.where(either > 0, both / either, 0.0)
    order = sorted(range(len(events)), key=lambda i: (-counts[i], events[i]))
    aliases: dict[str, str] = {}
    # An event everyone (or no one) did does not vary: it is no one's alias.
    varies = (counts > 0) & (counts < did.shape[0])

    def same_hours(i: int, j: int) -> bool:
        return together is None or together[i, j] >= min_jaccard

    def copy_of(i: int, j: int) -> bool:
        return (
            together is not None
            and both[i, j] >= min_jaccard * counts[j]
            and counts[j] >= COPY_MIN_SHARE * counts[i]
            and together[i, j] >= min_jaccard
        )

    for rank, i in enumerate(order):
        if events[i] in aliases or not varies[i]:
            continue
        for j in order[rank + 1 :]:
            if events[j] in aliases or not varies[j]:
                continue
            if (jaccard[i, j] >= min_jaccard and same_hours(i, j)) or copy_of(i, j):
                aliases[events[j]] = events[i]
    return aliases


def co_occurrence(buckets: Buckets, positions: np.ndarray, age_hours: float) -> np.ndarray:
    """(events x events): the share of event j's user-hours before `age_hours` (users at
    `positions`) in which event i was logged too."""
    positions = np.asarray(positions, dtype=np.int64)
    width = len(buckets.events)
    row_of_user = np.full(len(buckets.user_ids), -1, dtype=np.int64)
    row_of_user[positions] = np.arange(len(positions))
    target = row_of_user[buckets.user]
    keep = (target >= 0) & (buckets.event >= 0) & (buckets.n > 0)
    keep[keep] = buckets.hour[keep] < age_hours
    cell = target[keep] * (int(age_hours) + 1) + buckets.hour[keep]
    cells, index = np.unique(cell, return_inverse=True)
    # A cells x events incidence matrix; its Gram matrix counts the shared user-hours.
    incidence = sparse.csr_matrix(
        (np.ones(len(index)), (index, buckets.event[keep])), shape=(len(cells), width)
    )
    incidence.data[:] = 1.0  # a (user, event, hour) listed twice is still one user-hour
    shared = (incidence.T @ incidence).toarray()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.diag(shared)[None, :] > 0, shared / np.diag(shared)[None, :], 0.0)


def _sample(n: int, limit: int, activated: np.ndarray, seed: int) -> np.ndarray:
    """All users, or a sample stratified by outcome when there are more than `limit`."""
    keep = np.ones(n, dtype=bool)
    if n <= limit:
        return keep
    rng = np.random.default_rng(seed)
    keep[:] = False
    for outcome in (True, False):
        members = np.flatnonzero(activated == outcome)
        take = round(limit * len(members) / n)
        keep[rng.choice(members, min(take, len(members)), replace=False)] = True
    return keep


def _design(
    population: Population,
    rows: np.ndarray,
    did: np.ndarray,
    events: list[str],
    names: list[str],
    without: str | None = None,
    extra: tuple[np.ndarray, list[str]] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """(values, column names) of a regression of `rows`: segment attributes, engagement so far
    and a `did::<event>` column per name (then `extra`'s columns, values for every user of
    the population). Plain arrays: a data frame copied per event and fit cost more than the
    fits at 200k users.

    Engagement leaves the event's own activity out, else doing the event would count as being
    engaged and its effect would be pushed below 0: for a total effect (`without` the event)
    the other events' count, how many distinct other events, the days and hours active with
    other events; for the direct effect (every event in the model) the activity outside the
    chosen events, the model's event columns being the rest of it.
    """
    if population.covariates is None:
        frame = _segment_covariates(population)
        population.covariates = (frame.to_numpy(dtype=float), list(frame.columns))
    covariates, covariate_names = population.covariates
    if without is not None:
        at = events.index(without)
        columns = [population.engagement[name][rows, at] for name in ENGAGEMENT]
        column_names = list(ENGAGEMENT)
    else:
        columns = [population.outside[rows]]
        column_names = ["log_activity_outside_events"]
    picked = np.array([events.index(name) for name in names], dtype=np.int64)
    flags = did[np.ix_(rows, picked)].astype(float)
    parts = [covariates[rows], np.column_stack(columns), flags]
    all_names = [*covariate_names, *column_names, *(f"did::{name}" for name in names)]
    if extra is not None:
        parts.append(extra[0][rows])
        all_names.extend(extra[1])
    return np.column_stack(parts), all_names


def _segment_covariates(population: Population) -> pd.DataFrame:
    """Dummies of the segment attributes (all but the population's own segment type)."""
    users = population.users
    design = pd.DataFrame(index=users.index)
    for segment in ADJUST_FOR:
        if segment != population.segment_type and segment in users.columns:
            dummies = pd.get_dummies(
                users[segment].astype("string"), prefix=segment, drop_first=True, dtype=float
            )
            design = design.join(dummies)
    return design


def engagement_without(
    buckets: Buckets, positions: np.ndarray, age_hours: float
) -> dict[str, np.ndarray]:
    """Per user (at `positions`) and event (`buckets.events`): engagement before `age_hours`
    leaving that event out, (users x events) per name of `ENGAGEMENT`.

    One sort of the buckets for all events: an hour (day) is active without event e unless e
    is the only event in it, so the counts are the active hours (days) minus those where e
    was alone.
    """
    positions = np.asarray(positions, dtype=np.int64)
    rows, width = len(positions), len(buckets.events)
    row_of_user = np.full(len(buckets.user_ids), -1, dtype=np.int64)
    row_of_user[positions] = np.arange(rows)
    target = row_of_user[buckets.user]
    keep = (target >= 0) & (buckets.n > 0)
    keep[keep] = buckets.hour[keep] < age_hours
    target, event, hour, n = target[keep], buckets.event[keep], buckets.hour[keep], buckets.n[keep]
    chosen = event >= 0
    count = np.bincount(
        target[chosen] * width + event[chosen], weights=n[chosen], minlength=rows * width
    ).reshape(rows, width)
    total = np.bincount(target, weights=n, minlength=rows)
    did = count > 0
    # Sorted by user and hour, the buckets are sorted by user and day too.
    span = int(hour.max()) + 1 if len(hour) else 1
    order = np.argsort(target * span + hour, kind="stable")
    target, event, hour = target[order], event[order], hour[order]
    return {
        "log_other_events": np.log1p(np.clip(total[:, None] - count, 0, None)),
        "other_events_distinct": (did.sum(axis=1)[:, None] - did).astype(float),
        "other_active_days": _active_without(target, event, hour // 24, rows, width),
        "log_other_active_hours": np.log1p(_active_without(target, event, hour, rows, width)),
    }


def _active_without(
    target: np.ndarray, event: np.ndarray, unit: np.ndarray, rows: int, width: int
) -> np.ndarray:
    """(rows x events): units (hours or days) with activity other than each event, from
    buckets sorted by (target, unit); an event outside the chosen ones has code -1."""
    if not len(target):
        return np.zeros((rows, width))
    cell = target * (int(unit.max()) + 1) + unit
    starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
    # One event alone in a unit: its lowest and highest code are the same chosen event.
    low = np.minimum.reduceat(event, starts)
    high = np.maximum.reduceat(event, starts)
    owner = target[starts]
    active = np.bincount(owner, minlength=rows).astype(float)
    alone = (low == high) & (low >= 0)
    lone = np.bincount(owner[alone] * width + low[alone], minlength=rows * width)
    return active[:, None] - lone.reshape(rows, width)


def _fit(
    design: tuple[np.ndarray, list[str]], y: np.ndarray, names: list[str]
) -> dict[str, dict[str, Any]]:
    """Firth logistic regression on `design` (values, column names); per name in `names`:
    effect, interval, p (or a note)."""
    values, all_columns = design
    # Column-major, as a data frame's values were; columns without variance are left out,
    # by the sample variance to the last bit as pandas' `std() > 0` computed it.
    values = np.asfortranarray(values)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        varies = np.var(values, axis=0, ddof=1) > 0
    varies &= _independent(values, varies, [all_columns.index(n) for n in names])
    columns = [name for name, kept in zip(all_columns, varies, strict=True) if kept]
    present = [n for n in names if n in columns]
    if len(set(y)) < 2:
        return {n: {"note": "everyone in the population has the same outcome"} for n in names}
    if not present:
        return {n: {"note": "the event does not vary in this population"} for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            matrix = np.asfortranarray(values[:, varies])
            fit = FirthLogisticRegression(max_iter=50, gtol=FIT_GTOL).fit(matrix, y)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError) as error:
            return {n: {"note": f"the fit failed ({type(error).__name__}: {error})"} for n in names}
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in present:
            out[name] = {"note": "the event does not vary in this population"}
            continue
        i = columns.index(name)
        effect, se = float(fit.coef_[i]), float(fit.bse_[i])
        if not fit.converged_ or not np.isfinite(se):
            out[name] = {"note": f"the fit did not converge in {fit.n_iter_} iterations"}
            continue
        p_value = float(fit.pvalues_[i])
        if abs(effect) > LRT_MIN_EFFECT:
            # A large effect (a step after which almost nobody activates) inflates the Wald
            # standard error (Hauck-Donner): 0 of 100 activating against 40 % gets Wald
            # p ~ 4e-4, which the false-discovery correction over hundreds of rows then
            # drops. The penalized likelihood-ratio test is the honest one there; its
            # back-corrected standard error gives the matching interval.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    fit.lrt(i)
                    lrt_p, lrt_se = float(fit.lrt_pvalues_[i]), float(fit.lrt_bse_[i])
                except (np.linalg.LinAlgError, ValueError, FloatingPointError):
                    lrt_p = lrt_se = np.nan
            if np.isfinite(lrt_p) and np.isfinite(lrt_se) and lrt_se > 0:
                p_value, se = lrt_p, lrt_se
        out[name] = {
            "effect": effect,
            "ci_low": effect - 1.959964 * se,
            "ci_high": effect + 1.959964 * se,
            "p_value": p_value,
        }
    return out


def _independent(values: np.ndarray, keep: np.ndarray, first: list[int]) -> np.ndarray:
    """`keep` without the columns that are linear combinations of the intercept and the
    columns before them, the columns `first` taken first (so they are kept when they can be):
    e.g. the number of distinct other events when every other event is a column of its own,
    which would make the fit singular."""
    order = [i for i in first if keep[i]]
    order += [int(i) for i in np.flatnonzero(keep) if i not in order]
    matrix = np.column_stack([np.ones(len(values)), values[:, order]])
    r = np.abs(np.diag(np.linalg.qr(matrix, mode="r")))
    norms = np.linalg.norm(matrix, axis=0)
    out = keep.copy()
    # A column (nearly) in the span of the earlier ones has a (nearly) zero diagonal in R.
    out[np.array(order, dtype=np.int64)[r[1:] <= 1e-8 * np.maximum(norms[1:], 1.0)]] = False
    return out


def _fit_effect(
    population: Population,
    did: np.ndarray,
    events: list[str],
    event: str,
    adjust: list[str],
    rows: np.ndarray,
    activated: np.ndarray,
    extra: tuple[np.ndarray, list[str]] | None = None,
) -> dict[str, Any]:
    index = np.flatnonzero(rows)
    design = _design(population, index, did, events, [event, *adjust], event, extra)
    return _fit(design, activated[index].astype(int), [f"did::{event}"])[f"did::{event}"]


def _direct_effects(
    population: Population,
    did: np.ndarray,
    events: list[str],
    judged: list[str],
    observable: dict[str, np.ndarray],
    sample: np.ndarray,
    activated: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """One model per set of observable users, holding every other event fixed."""
    out: dict[str, dict[str, Any]] = {}
    groups: dict[bytes, list[str]] = {}
    for event in judged:
        groups.setdefault(np.packbits(observable[event]).tobytes(), []).append(event)
    for members in groups.values():
        rows = observable[members[0]] & sample
        index = np.flatnonzero(rows)
        # Every event observable for all of these users joins the model.
        others = [e for e in judged if observable[e][index].all()]
        design = _design(population, index, did, events, others)
        fitted = _fit(design, activated[index].astype(int), [f"did::{e}" for e in members])
        for event in members:
            result = fitted[f"did::{event}"]
            out[event] = {f"direct_{k}": v for k, v in result.items()}
    return out


def _mediator(
    population: Population,
    did: np.ndarray,
    events: list[str],
    event: str,
    earlier: list[str],
    judged: list[str],
    timing: dict[str, float],
    direct: dict[str, dict[str, Any]],
    total: dict[str, Any],
    rows: np.ndarray,
    activated: np.ndarray,
    aliases: dict[str, str],
) -> tuple[str | None, bool, str]:
    """The later step(s) that `event` matters through, if they explain its total effect,
    whether it enables any later step before the landmark that matters (a candidate), and a
    note when the step was read after the landmark.

    Only for a positive total effect. Candidates are later steps (first done at the same hour
    or after it) that `event` enables (`ENABLING_RATIO`), the three most tied to it:
    - when the direct effect is indistinguishable from 0, steps before the landmark with a
      positive direct effect;
    - else, or when none of those carries it, the steps as done by the population's later
      fixed age (`LaterSteps`; a step after the landmark cannot be held fixed in the direct
      model), only those that activators who did them mostly did before activating.
    Each is added to the total-effect model on its own; it is the mediator when `event`'s
    effect is then no longer significantly positive and at most half its size. When no
    single step does it, the candidates together may (a step that opens several later ones):
    they are then named together. A step that merely rides along with engaged users (vanity)
    loses its effect to the other behaviour as a whole, not to the steps it enables.
    """
    effect = total.get("effect", np.nan)
    low = total.get("ci_low", np.nan)
    details = direct.get(event, {})
    direct_low = details.get("direct_ci_low", np.nan)
    direct_high = details.get("direct_ci_high", np.nan)
    if not (np.isfinite(effect) and low > 0):
        return None, False, ""
    i = events.index(event)
    doers = did[:, i]
    if doers.all() or not doers.any():
        return None, False, ""

    def remaining(
        steps: list[str],
        extra: tuple[np.ndarray, list[str]] | None = None,
        *,
        rows: np.ndarray = rows,
        effect: float = effect,
    ) -> float:
        """|effect| left with `steps` (or `extra`) held fixed; inf unless it is no longer
        significantly positive and at most half of `effect`."""
        fitted = _fit_effect(
            population, did, events, event, [*earlier, *steps], rows, activated, extra
        )
        if "effect" not in fitted or fitted["ci_low"] > 0 or fitted["effect"] > effect / 2:
            return np.inf
        return abs(fitted["effect"])

    def carrier(
        chosen: list[str], fit: Any
    ) -> str | None:  # the step (or steps together) that carries the effect
        single = {other: fit([other]) for other in chosen}
        best = min(single, key=lambda other: single[other], default=None)
        if best is not None and np.isfinite(single[best]):
            return best
        if len(chosen) > 1 and np.isfinite(fit(chosen)):
            return ", ".join(chosen)
        return None

    chosen: list[str] = []
    if np.isfinite(direct_low) and direct_low <= 0 <= direct_high:
        candidates = []
        for other in judged:
            if other == event or timing[other] < timing[event]:
                continue
            if not direct.get(other, {}).get("direct_ci_low", -np.inf) > 0:
                continue
            j = events.index(other)
            with_step, without_step = did[doers, j].mean(), did[~doers, j].mean()
            # An enabling step: the later one is at least twice as common after it.
            if with_step >= ENABLING_RATIO * without_step:
                candidates.append((with_step - without_step, other))
        chosen = [other for _, other in sorted(candidates, reverse=True)[:3]]
        found = carrier(chosen, remaining)
        if found is not None:
            return found, True, ""
    later = population.later
    if later is None:
        return None, bool(chosen), ""
    # Users who first did `event` itself between the landmark and the later age are left out:
    # their later steps could follow that late doing, and a later step would then carry the
    # effect of the event done late, not this one's. The effect to explain is refitted on
    # the users left.
    kept = rows & ~(later.did[:, i] & ~doers)
    base = _fit_effect(population, did, events, event, earlier, kept, activated)
    if not ("effect" in base and base["ci_low"] > 0):
        return None, bool(chosen), ""
    candidates = []
    for j, other in enumerate(events):
        if other == event or other in aliases or not later.before_activation[j]:
            continue
        if later.timing[j] < timing[event]:
            continue
        step = later.did[kept, j]
        if step.all() or not step.any():
            continue
        with_step, without_step = step[doers[kept]].mean(), step[~doers[kept]].mean()
        if with_step >= ENABLING_RATIO * without_step:
            candidates.append((with_step - without_step, other))
    steps = [other for _, other in sorted(candidates, reverse=True)[:3]]

    def remaining_later(names: list[str]) -> float:
        columns = later.did[:, [events.index(name) for name in names]].astype(float)
        extra = (columns, [f"later::{name}" for name in names])
        return remaining([], extra, rows=kept, effect=base["effect"])

    found = carrier(steps, remaining_later)
    if found is None:
        return None, bool(chosen), ""
    return (
        found,
        True,
        f"works through {found} as done by {later.hours:g} h (after the landmark; mostly "
        f"before activating)",
    )


def e_values(row: dict[str, Any], base_rate: float) -> tuple[float, float]:
    """E-value of the total effect and of its interval's bound nearest to 1 (VanderWeele &
    Ding 2017), with the odds ratio taken to the risk-ratio scale by the square root when the
    outcome is common (> 15 %)."""
    effect = row.get("total_effect")
    if effect is None or not np.isfinite(effect) or effect <= 0:
        return np.nan, np.nan

    def to_rr(log_or: float) -> float:
        odds_ratio = math.exp(log_or)
        return math.sqrt(odds_ratio) if base_rate > 0.15 else odds_ratio

    def e(rr: float) -> float:
        return rr + math.sqrt(rr * (rr - 1)) if rr > 1 else 1.0

    return e(to_rr(effect)), e(to_rr(row.get("total_ci_low", 0.0)))


def _threshold(
    population: Population,
    buckets: Buckets,
    position: int,
    activated: np.ndarray,
    keep: np.ndarray,
    row: dict[str, Any],
    rules: CriticalPathRules,
) -> dict[str, Any]:
    """The "at least n times within d days" rule with the best phi, for events positively
    associated with activation; precision, recall and lift (rule vs not) with intervals."""
    days = population.landmark_hours // 24
    if days < 1 or not row["ci_low"] > 1:
        return {}
    y = activated[keep]
    best: tuple[float, int, int] | None = None
    best_phi = 0.0
    by_day = population.counts_by_day(buckets, position)[keep]
    # Users per day and count (capped at the largest threshold), activated or not: every
    # rule's 2x2 table is a tail sum of these, one pass over the users for all rules.
    cap = max(THRESHOLD_TIMES)
    cells = np.minimum(by_day, cap) + np.arange(days) * (cap + 1)
    hits = np.bincount(cells[y].ravel(), minlength=days * (cap + 1)).reshape(days, cap + 1)
    misses = np.bincount(cells[~y].ravel(), minlength=days * (cap + 1)).reshape(days, cap + 1)
    for day in range(1, days + 1):
        for times in THRESHOLD_TIMES:
            a, b = int(hits[day - 1, times:].sum()), int(misses[day - 1, times:].sum())
            c, d = int(hits[day - 1, :times].sum()), int(misses[day - 1, :times].sum())
            if a + b < rules.min_users or c + d < rules.min_users:
                continue
            phi = _phi(a, b, c, d)
            if phi > best_phi:
                best_phi = phi
                best = (phi, times, day)
    if best is None:
        return {}
    phi, times, day = best
    return _rule_stats(by_day[:, day - 1] >= times, y, times, day, phi)


def _phi(a: float, b: float, c: float, d: float) -> float:
    """Phi of the 2x2 table (rule and activated, rule and not, no rule and activated, ...)."""
    a, b, c, d = float(a), float(b), float(c), float(d)
    denominator = math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    return (a * d - b * c) / denominator if denominator else 0.0


def _rule_stats(
    chosen: np.ndarray, y: np.ndarray, times: int, day: int, phi: float
) -> dict[str, Any]:
    hits = int((chosen & y).sum())
    precision_low, precision_high = proportion_confint(hits, int(chosen.sum()), method="wilson")
    recall_low, recall_high = proportion_confint(hits, int(y.sum()), method="wilson")
    rest_hits = int((~chosen & y).sum())
    rest = int((~chosen).sum())
    # Risk ratio rule vs not, Katz log interval (0.5 added when a cell is empty).
    a, n1 = hits + 0.5 * (hits == 0), chosen.sum()
    c, n0 = rest_hits + 0.5 * (rest_hits == 0), rest
    log_rr = math.log((a / n1) / (c / n0))
    se = math.sqrt(1 / a - 1 / n1 + 1 / c - 1 / n0)
    return {
        "best_threshold_n": float(times),
        "best_threshold_days": float(day),
        "threshold_phi": phi,
        "threshold_precision": hits / chosen.sum(),
        "threshold_precision_ci_low": float(precision_low),
        "threshold_precision_ci_high": float(precision_high),
        "threshold_recall": hits / y.sum(),
        "threshold_recall_ci_low": float(recall_low),
        "threshold_recall_ci_high": float(recall_high),
        "threshold_lift": math.exp(log_rr),
        "threshold_lift_ci_low": math.exp(log_rr - 1.959964 * se),
        "threshold_lift_ci_high": math.exp(log_rr + 1.959964 * se),
    }


def _bh(p_values: np.ndarray) -> np.ndarray:
    p_values = np.asarray(p_values, dtype=float)
    q = np.full(len(p_values), np.nan)
    mask = np.isfinite(p_values)
    if mask.any():
        q[mask] = multipletests(p_values[mask], method="fdr_bh")[1]
    return q


def classify(row: Any, rules: CriticalPathRules) -> str:
    """The class of one row (see the module docstring)."""
    return judgement(row, rules)[0]


def _flag(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_)) and bool(value)


def judgement(row: Any, rules: CriticalPathRules) -> tuple[str, str]:
    """(class, why) of one row; `why` is empty when the class says it all.

    A driver, prerequisite or blocker must be significant (q < alpha) *and* clear the
    equivalence margin: its interval lies wholly beyond +-log(`equivalence_odds_ratio`). With
    many users, residual confounding by engagement that no covariate captures makes small
    associations significant; the margin is the size below which a step is not worth acting
    on, and the same margin defines `no_effect`.
    """
    if row.not_judged:
        return "inconclusive", ""
    total, low, high, q = row.total_effect, row.total_ci_low, row.total_ci_high, row.total_q_value
    if not all(np.isfinite(v) for v in (total, low, high, q)):
        return "inconclusive", ""
    margin = math.log(rules.equivalence_odds_ratio)
    naive = math.log(row.odds_ratio) if row.odds_ratio > 0 else np.nan
    naive_significant = np.isfinite(row.q_value) and row.q_value < rules.alpha
    naive_positive = naive_significant and naive > 0 and row.lift >= rules.vanity_min_lift
    direct_low, direct_high = row.direct_ci_low, row.direct_ci_high
    direct_known = np.isfinite(direct_low) and np.isfinite(direct_high)
    direct_null = direct_known and direct_low <= 0 <= direct_high
    significant = q < rules.alpha
    # Explained away by the rest of the behaviour (nothing left with the other steps held
    # fixed, the naive effect outside that interval), and it opens no later step that matters.
    # "Explained away" must be shown, not merely not refuted: the adjusted interval must
    # rule out any effect beyond the margin, else a wide interval (too few users, or a step
    # adjusted for its own cause) would call a real cause vanity on absence of evidence.
    rides_along = (
        naive_positive
        and direct_null
        and direct_high < min(naive, margin)
        and not _flag(getattr(row, "enables_later_step", False))
    )
    if significant and total > 0 and low > margin:
        # A later step carries it: held fixed at the landmark (direct effect 0) or, for a
        # step after the landmark, read at a later fixed age (see `_mediator`).
        if isinstance(row.works_through, str):
            return "prerequisite", ""
        if direct_null:
            if rides_along:
                return "vanity", ""
            return "inconclusive", (
                "associated, but nothing is left once the other steps are held fixed, and the "
                "later steps it opens do not carry it"
            )
        if not direct_known or direct_low > margin:
            return "driver", ""
        return "inconclusive", (
            "associated in total, but with the other steps held fixed its own effect does not "
            f"clear the equivalence margin (odds ratio {rules.equivalence_odds_ratio:g})"
        )
    if significant and total < 0 and high < -margin:
        return "blocker", ""
    # Vanity as defined: the adjusted interval holds 0 (one wholly below 0 is a negative
    # association, judged below, not an association explained away).
    if naive_positive and high < min(naive, margin) and low <= 0 <= high:
        return "vanity", ""
    if naive_positive and high < naive and low <= 0:
        return "inconclusive", (
            "the association may be explained away by earlier behaviour, but the adjusted "
            f"interval still allows an effect beyond the equivalence margin (odds ratio "
            f"{rules.equivalence_odds_ratio:g}): vanity is not shown"
        )
    if significant and total > 0 and rides_along:
        return "vanity", ""
    if -margin < low and high < margin:
        return "no_effect", ""
    if significant:
        return "inconclusive", (
            f"associated, but the interval does not clear the equivalence margin "
            f"(odds ratio {rules.equivalence_odds_ratio:g}): possibly a small effect, possibly "
            f"confounding by engagement"
        )
    if low > 0 or high < 0:
        return "inconclusive", (
            f"the interval excludes 0, but not after the false-discovery correction over every "
            f"row judged (q = {q:.3g})"
        )
    return "inconclusive", "the interval is too wide to tell an effect from none"


def landmark_summary(
    outcomes: pd.DataFrame, buckets: Buckets, landmarks: list[int], top: int = 5
) -> pd.DataFrame:
    """Per landmark: closed-window users, who activated before it (how many, how fast, which
    early events they share), and the population left with its activation rate."""
    outcomes = outcomes.reset_index(drop=True)
    closed = outcomes.window_closed.to_numpy(dtype=bool) & outcomes.label.notna().to_numpy()
    hours = (outcomes.activation_at - outcomes.signup_at).dt.total_seconds().to_numpy() / 3600
    rows = []
    for landmark in landmarks:
        early = closed & activated_by(outcomes, landmark)
        population = landmark_population(outcomes, landmark)
        later = int((outcomes.label.to_numpy()[population] == 1).sum())
        low, high = (
            proportion_confint(later, int(population.sum()), method="wilson")
            if population.any()
            else (np.nan, np.nan)
        )
        shared = ""
        if early.any() and buckets.events:
            positions = np.flatnonzero(early)
            before = buckets.did_before(positions, np.clip(hours[positions], 0, None))
            rest = buckets.did_before(
                np.flatnonzero(population), np.full(int(population.sum()), float(landmark))
            )
            shares = []
            for i, event in enumerate(buckets.events):
                share = float(before[:, i].mean())
                other = float(rest[:, i].mean()) if len(rest) else np.nan
                shares.append((share, event, other))
            shares.sort(reverse=True)
            shared = "; ".join(
                f"{event} {share:.0%} (vs {other:.0%} of the population)"
                for share, event, other in shares[:top]
            )
        rows.append(
            {
                "landmark_hours": landmark,
                "closed_window_users": int(closed.sum()),
                "activated_before_landmark": int(early.sum()),
                "share_activated_before": float(early.sum() / closed.sum())
                if closed.any()
                else np.nan,
                "median_hours_to_activation_early": float(np.median(hours[early]))
                if early.any()
                else np.nan,
                "shared_events_early_activators": shared,
                "population_users": int(population.sum()),
                "activated_after_landmark": later,
                "activation_rate": later / population.sum() if population.any() else np.nan,
                "activation_rate_ci_low": float(low),
                "activation_rate_ci_high": float(high),
            }
        )
    return pd.DataFrame(rows, columns=list(LANDMARK_POPULATIONS.schema.names))

"""A product world whose users respond to delivered nudges, with a planted effect.

Each user has an unobserved engagement trait and, drawn once, every random number their life
will use (common random numbers). A user's life is a pure function of those numbers and the
days on which nudges reached them, so the world can replay any user without the nudges
(the counterfactual) and the planted truth is exact for the users of this run, not only in
expectation.

The causal chain is planted in one place: a nudge raises the daily chance of doing the
nudged milestone for `nudge_days` days (`step_boost`); doing the data step raises the daily
hazard of the aha moment by `step_hazard`. Nothing else reacts to a nudge, so the nudge acts
on activation only through the step (the instrumental-variable exclusion holds by design).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd

START = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday, well before any clock this runs on
WINDOW_DAYS = 14
SIGNUP, WORKSPACE, DATA_STARTED, DATA_STEP, AHA, VIEW, LEFT = (
    "signed_up",
    "workspace_created",
    "data_source_setup_started",  # the data step begun: unfinished a day later, a stall
    "data_source_connected",
    "dashboard_shared",
    "page_viewed",
    "account_deleted",
)
# Milestone label (the queue's next action) -> the event that completes it.
STEP_OF_ACTION = {"Create your workspace": WORKSPACE, "Connect a data source": DATA_STEP}


@dataclass(frozen=True)
class WorldSpec:
    """The world's size and its planted effects (`step_boost` 1 = nudges do nothing)."""

    users: int = 1000
    days: int = 60
    signup_days: int = 40
    seed: int = 0
    step_boost: float = 5.0  # nudged: daily chance of doing the step x this
    nudge_days: int = 3  # ... for this many days after the delivery
    step_hazard: float = 0.12  # daily aha hazard added once the data step is done
    base_start: float = 0.6  # daily chance of beginning the data step once the workspace is up
    base_step: float = 0.06  # daily chance of finishing the data step once begun, un-nudged
    base_hazard: float = 0.01  # daily aha hazard before the step
    leave_rate: float = 0.004  # daily chance of deleting the account


@dataclass
class Person:
    user_id: str
    signup_at: datetime
    trait: float
    # Per day of life (0 = signup day): uniforms for each decision, and the page views.
    workspace: np.ndarray
    start: np.ndarray
    step: np.ndarray
    aha: np.ndarray
    leave: np.ndarray
    hour: np.ndarray  # the time of day each decision's event happens at (fraction)
    views: np.ndarray


@dataclass
class Life:
    """What a user did (event rows) and when the milestones happened (None: not yet)."""

    events: list[tuple[str, datetime]] = field(default_factory=list)
    data_started_at: datetime | None = None
    data_step_at: datetime | None = None
    activated_at: datetime | None = None
    left_at: datetime | None = None


def people(spec: WorldSpec) -> list[Person]:
    rng = np.random.default_rng(spec.seed)
    lives = spec.days + WINDOW_DAYS
    found = []
    for index in range(spec.users):
        day = int(rng.integers(0, spec.signup_days))
        signup = START + timedelta(days=day, seconds=float(rng.uniform(0, 86_000)))
        trait = float(rng.normal())
        found.append(
            Person(
                user_id=f"sim{index:05d}",
                signup_at=signup,
                trait=trait,
                workspace=rng.uniform(size=lives),
                start=rng.uniform(size=lives),
                step=rng.uniform(size=lives),
                aha=rng.uniform(size=lives),
                leave=rng.uniform(size=lives),
                hour=rng.uniform(size=lives),
                views=rng.poisson(1.0 + np.exp(0.4 * trait), size=lives),
            )
        )
    return found


def life(
    person: Person, spec: WorldSpec, nudges: dict[date, str], until: date | None = None
) -> Life:
    """The user's events up to the end of day `until` (default: to the end of their window),
    given the nudges (day delivered -> next action) that reached them."""
    lived = Life()
    first = person.signup_at.date()
    last = until or first + timedelta(days=WINDOW_DAYS + spec.days)
    lived.events.append((SIGNUP, person.signup_at))
    engaged = float(np.exp(0.5 * person.trait))
    done: set[str] = set()
    for age in range(len(person.step)):
        today = first + timedelta(days=age)
        if today > last:
            break
        start = max(person.signup_at, datetime.combine(today, datetime.min.time(), UTC))
        room = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC) - start
        at = start + room * (0.05 + 0.9 * float(person.hour[age]))
        if person.leave[age] < spec.leave_rate:
            lived.events.append((LEFT, at))
            lived.left_at = at
            break
        for _ in range(int(person.views[age])):
            lived.events.append((VIEW, at))
        pushed = {
            STEP_OF_ACTION.get(action)
            for day, action in nudges.items()
            if 0 < (today - day).days <= spec.nudge_days
        }
        if WORKSPACE not in done:
            chance = (0.7 if age == 0 else 0.15) * min(engaged, 1.5)
            chance *= spec.step_boost if WORKSPACE in pushed else 1.0
            if person.workspace[age] < min(chance, 0.95):
                done.add(WORKSPACE)
                lived.events.append((WORKSPACE, at))
        elif DATA_STARTED not in done:
            if person.start[age] < spec.base_start:
                done.add(DATA_STARTED)
                lived.data_started_at = at
                lived.events.append((DATA_STARTED, at))
        elif DATA_STEP not in done:
            chance = spec.base_step * engaged
            chance *= spec.step_boost if DATA_STEP in pushed else 1.0
            if person.step[age] < min(chance, 0.95):
                done.add(DATA_STEP)
                lived.data_step_at = at
                lived.events.append((DATA_STEP, at))
        if lived.activated_at is None:
            hazard = spec.base_hazard * engaged
            if DATA_STEP in done and lived.data_step_at is not None and lived.data_step_at < at:
                hazard += spec.step_hazard
            if person.aha[age] < min(hazard, 0.95):
                lived.activated_at = at + timedelta(minutes=5)
                lived.events.append((AHA, lived.activated_at))
    return lived


def happened_by(moment: datetime | None, end: datetime) -> float:
    """1 if `moment` came at or before `end`, else 0 (never came: 0)."""
    return 1.0 if moment is not None and moment <= end else 0.0


def users_frame(persons: list[Person], through: date) -> pd.DataFrame:
    """The users file as of the end of day `through`: those who have signed up."""
    rows = [(p.user_id, p.signup_at) for p in persons if p.signup_at.date() <= through]
    return pd.DataFrame(rows, columns=["user_id", "signup_at"])


def events_frame(lives: dict[str, Life], day: date) -> pd.DataFrame:
    """Event rows of day `day`, with ids that are stable across replays."""
    rows = []
    for user, lived in lives.items():
        for index, (name, at) in enumerate(lived.events):
            if at.date() == day:
                rows.append((f"{user}-{index}-{name}", user, name, at))
    return pd.DataFrame(rows, columns=["event_id", "user_id", "event_name", "timestamp"])

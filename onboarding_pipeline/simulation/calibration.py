"""The same world over many seeds, without Dagster: a stand-in queue (a user is assigned when
stalled: the data step begun and not finished a day later) and the pipeline's
own holdout draw and estimators (`final_outcomes`, `compare_arms`, `step_experiments`).

A closed loop through the daily job costs seconds per simulated day; this costs milliseconds,
so the error rate of the read-outs can be measured over repeated seeds (a world with no
effect must show one no more often than `alpha`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd

from onboarding_pipeline.engagement.effectiveness import compare_arms, final_outcomes
from onboarding_pipeline.engagement.queue import in_holdout
from onboarding_pipeline.engagement.step_effects import step_experiments
from onboarding_pipeline.simulation.world import (
    START,
    WINDOW_DAYS,
    Life,
    WorldSpec,
    happened_by,
    life,
    people,
)

EXPERIMENT = "simulation"
STALL_HOURS = 24  # interventions.stall.step_timeout_hours
ACTION = "Connect a data source"


@dataclass(frozen=True)
class Readout:
    """One seed's read-outs next to its planted truth."""

    effectiveness: pd.DataFrame  # compare_arms' table
    steps: pd.DataFrame  # step_experiments' table
    true_lift: float
    true_step_effect: float | None


def run_world(
    spec: WorldSpec, holdout_fraction: float = 0.5, follow_up_days: float = 14
) -> Readout:
    persons = people(spec)
    end = START + timedelta(days=spec.days)
    rows, lift, moved, treated_final = [], 0.0, 0.0, 0
    held = in_holdout([p.user_id for p in persons], EXPERIMENT, holdout_fraction)
    for person, holdout in zip(persons, held, strict=True):
        quiet = life(person, spec, {})
        if quiet.data_started_at is None:
            continue
        # The daily run at the end of the day the step has been unfinished for a day.
        stalled = quiet.data_started_at + timedelta(hours=STALL_HOURS)
        assigned_at = datetime.combine(stalled.date() + timedelta(days=1), datetime.min.time(), UTC)
        if assigned_at > end or _done_by(quiet, assigned_at):
            continue
        nudged_on: dict[date, str] = {} if holdout else {assigned_at.date(): ACTION}
        real = life(person, spec, nudged_on)
        follow_up_end = min(
            assigned_at + timedelta(days=follow_up_days),
            person.signup_at + timedelta(days=WINDOW_DAYS),
        )
        did = real.data_step_at is not None and real.data_step_at <= follow_up_end
        rows.append(
            {
                "user_id": person.user_id,
                "holdout": bool(holdout),
                "queued_at": pd.Timestamp(assigned_at),
                "signup_at": pd.Timestamp(person.signup_at),
                "activation_at": pd.Timestamp(real.activated_at) if real.activated_at else pd.NaT,
                # The covariate CUPAC adjusts for: known at assignment, blind to the arm.
                "activation_probability": float(1 / (1 + np.exp(-person.trait))),
                "intervention_type": "nudge",
                "failure_label": None,
                "target_step": "data_connected",
                "did_step": float(did),
            }
        )
        if not holdout and follow_up_end <= end:
            treated_final += 1
            lift += happened_by(real.activated_at, follow_up_end) - happened_by(
                quiet.activated_at, follow_up_end
            )
            moved += happened_by(real.data_step_at, follow_up_end) - happened_by(
                quiet.data_step_at, follow_up_end
            )
    assignments = pd.DataFrame(rows)
    users = assignments[["user_id", "signup_at", "activation_at"]]
    outcomes = final_outcomes(
        assignments.drop(columns=["signup_at", "activation_at"]),
        users,
        pd.Timestamp(end),
        follow_up_days,
        WINDOW_DAYS,
    )
    return Readout(
        effectiveness=compare_arms(outcomes),
        steps=step_experiments(outcomes, {"data_connected": ["data_source_connected"]}),
        true_lift=lift / treated_final if treated_final else float("nan"),
        true_step_effect=lift / moved if moved else None,
    )


def _done_by(lived: Life, moment: datetime) -> bool:
    """Activated, left or did the step before being stalled: never assigned."""
    for at in (lived.activated_at, lived.left_at, lived.data_step_at):
        if at is not None and at <= moment:
            return True
    return False

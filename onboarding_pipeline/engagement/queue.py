"""The intervention queue: one named next action per user who needs one now.

Who: users still onboarding who are stalled, at a queued risk level, or at a planned
touchpoint day of their path. What: the fix for
their failure label when one is configured, else the next missing milestone of their path.
How urgently: `urgent` (low activation probability, several days in; without an accepted
model: high risk by the health score, several days in), `guide` (first days), else `nudge`.
Where: the escalation ladder (in-app, email, human) one step per send, email from
`email_from_day`, and a human straight away when the evidence shows an access problem.
Never twice: users in cooldown, or already handed to a human for the same action, are left
out; the ledger of earlier days is the memory. A deterministic hash of experiment and user id
puts `holdout_fraction` of them in the control group: recorded, never messaged, no channel
and no owner (`none`), so no person acts on them either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from onboarding_pipeline.config.engagement import InterventionRules, OnboardingPath
from onboarding_pipeline.engagement.nudge_writer import NudgeRequest, template_message

# The channel and owner of a held-out row: it is recorded (queue and ledger), never acted on.
NO_CHANNEL = "none"

QUEUE_COLUMNS = [
    "user_id",
    "path",
    "next_action",
    "target_step",
    "intervention_type",
    "channel",
    "owner",
    "escalation_step",
    "reason",
    "message",
    "holdout",
    "priority",
    "failure_label",
    "risk_level",
    "health_score",
    "activation_probability",
    "experiment",
    "queued_on",
    "queued_at",
]


def text_or_none(value: object) -> str | None:
    """A text field of a pandas row: missing values (None, NaN) become None."""
    return value if isinstance(value, str) else None


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain dicts (typed loosely: each column has its own type)."""
    return frame.to_dict("records")  # type: ignore[return-value]


def holdout_draw(user_ids: Iterable[str], experiment: str) -> np.ndarray:
    """A uniform number in [0, 1) per user, fixed by (experiment, user id) alone."""
    draws = []
    for user_id in user_ids:
        digest = hashlib.sha256(f"{experiment}\x1f{user_id}".encode()).digest()
        draws.append(int.from_bytes(digest[:8], "big") / 2**64)
    return np.array(draws, dtype=float)


def in_holdout(user_ids: Iterable[str], experiment: str, fraction: float) -> np.ndarray:
    return holdout_draw(user_ids, experiment) < fraction


def intervention_type(
    probability: pd.Series,
    days: pd.Series,
    rules: InterventionRules,
    risk_level: pd.Series | None = None,
) -> np.ndarray:
    """urgent: activation probability below `urgent_below_probability` and at least
    `urgent_after_days` since signup; without a probability (no accepted model) the health
    score stands in: high risk and at least `urgent_after_days`. guide: fewer than
    `guide_until_days` since signup. nudge: everyone else."""
    days = days.astype(float)
    unlikely = (probability < rules.urgent_below_probability).to_numpy(dtype=bool)
    if risk_level is not None:
        by_health = (risk_level == "high").to_numpy(dtype=bool)
        unlikely = np.where(probability.isna().to_numpy(), by_health, unlikely)
    urgent = unlikely & (days >= rules.urgent_after_days).to_numpy(dtype=bool)
    guide = (days < rules.guide_until_days).to_numpy(dtype=bool)
    return np.select([urgent, guide], ["urgent", "guide"], "nudge")


def expected_activation(probability: pd.Series, health_score: pd.Series) -> pd.Series:
    """The model's activation probability; without one (no accepted model), the health score
    as a stand-in (health / 100): what priorities rank the room left to activate by."""
    return probability.astype(float).fillna(health_score.astype(float).clip(0, 100) / 100)


def owner_of(
    path: str, failure_label: str | None, rules: InterventionRules, paths: dict[str, OnboardingPath]
) -> str:
    owners = rules.owners
    if failure_label and failure_label in owners.by_failure_label:
        return owners.by_failure_label[failure_label]
    if path in owners.by_path:
        return owners.by_path[path]
    configured = paths[path].owner if path in paths else None
    return configured or owners.default


def ladder_position(
    wanted: pd.DataFrame, history: pd.DataFrame, rules: InterventionRules, today: date
) -> tuple[np.ndarray, np.ndarray]:
    """Per wanted user: the ladder step of this send (earlier sends of the same action + 1),
    and whether to send at all (not in cooldown, not already with a human for this action,
    ladder not exhausted). Only days before `today` count, so reruns of a day agree."""
    steps: np.ndarray = np.ones(len(wanted), dtype=np.int64)
    keep = np.ones(len(wanted), dtype=bool)
    if history.empty:
        return steps, keep
    queued_on = pd.to_datetime(history.queued_on).dt.date
    earlier = history[queued_on < today].assign(day=queued_on[queued_on < today])
    if earlier.empty:
        return steps, keep
    last_day = earlier.groupby("user_id").day.max()
    days_since = wanted.user_id.map(last_day).map(
        lambda day: (today - day).days if isinstance(day, date) else None
    )
    in_cooldown = days_since.notna() & (days_since.astype(float) < rules.cooldown_days)
    same = earlier.merge(wanted[["user_id", "next_action"]], on=["user_id", "next_action"])
    sends = wanted.user_id.map(same.groupby("user_id").size()).fillna(0).astype(int)
    with_human = set(same.user_id[same.channel == "human"])
    steps = (sends + 1).to_numpy(dtype=np.int64)
    keep = (
        ~in_cooldown.to_numpy(dtype=bool)
        & ~wanted.user_id.isin(with_human).to_numpy(dtype=bool)
        & (steps <= len(rules.ladder))
    )
    return steps, keep


def touchpoint_today(users: pd.DataFrame, paths: dict[str, OnboardingPath]) -> pd.Series:
    """Whether today is one of the planned touchpoint days of the user's path (day 0 = the
    first 24 hours after signup)."""
    day = np.floor(users.days_since_signup.to_numpy(dtype=float)).astype(int)
    planned = [
        d in paths[path].touchpoint_days if path in paths else False
        for path, d in zip(users.path, day, strict=True)
    ]
    return pd.Series(planned, index=users.index, dtype=bool)


def build_queue(
    users: pd.DataFrame,
    history: pd.DataFrame,
    rules: InterventionRules,
    paths: dict[str, OnboardingPath],
    now: datetime,
    uplift_by_type: dict[str, float],
    final_action: str,
    language: str,
) -> pd.DataFrame:
    """The queue for `now`'s day.

    `users`: one row per user still onboarding with path, health_score, risk_level,
    activation_probability, days_since_signup, stalled, failure_label, evidence,
    current_step_label, first_name, role, company. `history`: ledger rows of earlier days in
    this experiment (today's rows are ignored, so a rerun of the day gives the same queue).
    """
    today = pd.Timestamp(now).date()
    touchpoint = touchpoint_today(users, paths)
    at_risk = users.risk_level.isin(rules.queue_risk_levels)
    wanted = users[users.stalled.fillna(False).astype(bool) | at_risk | touchpoint]
    if wanted.empty:
        return pd.DataFrame(columns=QUEUE_COLUMNS)
    wanted = wanted.copy()
    fixes = wanted.failure_label.map(lambda label: rules.fix_for(label) if label else None)
    wanted["next_action"] = fixes.fillna(wanted.current_step_label).fillna(final_action)
    # The milestone the action pushes toward (a fix unblocks it too): what the experiment can
    # prove a step's effect on (`step_experiments`).
    wanted["target_step"] = wanted.current_step if "current_step" in wanted else None

    escalation_step, keep = ladder_position(wanted, history, rules, today)
    wanted["escalation_step"] = escalation_step
    wanted = wanted[keep]
    if wanted.empty:
        return pd.DataFrame(columns=QUEUE_COLUMNS)

    days = wanted.days_since_signup
    probability = wanted.activation_probability
    wanted["intervention_type"] = intervention_type(probability, days, rules, wanted.risk_level)
    ladder = rules.ladder
    channels = []
    for row in records(wanted):
        channel = ladder[row["escalation_step"] - 1]
        if row["failure_label"] == "access_block" and "human" in ladder:
            channel = "human"  # a person must unblock access; a nudge cannot
        elif (
            channel == "in_app"
            and row["days_since_signup"] >= rules.email_from_day
            and "email" in ladder
        ):
            channel = "email"  # not in the product any more: in-app would not reach them
        channels.append(channel)
    wanted["channel"] = channels
    wanted["owner"] = [
        owner_of(p, label, rules, paths)
        for p, label in zip(wanted.path, wanted.failure_label, strict=True)
    ]
    wanted["reason"] = wanted.evidence.where(
        wanted.evidence.notna(),
        [
            ("planned touchpoint; " if t else "")
            + f"health {h:.0f}/100 ({r} risk)"
            + (f"; activation probability {p:.0%}" if p == p else "")
            + f"; next step: {a}; day {d:.0f} since signup"
            for t, h, r, p, a, d in zip(
                touchpoint[wanted.index],
                wanted.health_score,
                wanted.risk_level,
                probability,
                wanted.next_action,
                days,
                strict=True,
            )
        ],
    )
    wanted["holdout"] = in_holdout(wanted.user_id, rules.experiment, rules.holdout_fraction)
    # Control means control: a held-out user reaches no channel, not even a person, and is
    # in nobody's workload (an owner who knew would treat them, and the lift would shrink).
    wanted.loc[wanted.holdout, "channel"] = NO_CHANNEL
    wanted.loc[wanted.holdout, "owner"] = NO_CHANNEL
    uplift = wanted.intervention_type.map(lambda t: uplift_by_type.get(t, rules.assumed_uplift))
    # Expected gain in activation: the uplift of this kind of intervention times the room the
    # user has left to activate (from the health score when there is no probability).
    likely = expected_activation(probability, wanted.health_score)
    wanted["priority"] = (uplift * (1 - likely)).round(4)
    wanted["message"] = [
        None
        if row["holdout"]
        else template_message(
            NudgeRequest(
                user_id=row["user_id"],
                first_name=text_or_none(row["first_name"]),
                role=text_or_none(row["role"]),
                company=text_or_none(row["company"]),
                next_action=row["next_action"],
                intervention_type=row["intervention_type"],
                channel=row["channel"],
                language=language,
                failure_label=text_or_none(row["failure_label"]),
            )
        )
        for row in records(wanted)
    ]
    wanted["experiment"] = rules.experiment
    wanted["queued_on"] = today
    wanted["queued_at"] = pd.Timestamp(now)
    ordered = wanted.sort_values(["priority", "user_id"], ascending=[False, True], kind="stable")
    return ordered[QUEUE_COLUMNS].reset_index(drop=True)

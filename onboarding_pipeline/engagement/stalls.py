"""Stall detection with evidence and one failure label per stalled user.

A user still onboarding is stalled when they have done nothing for `stall.inactive_hours`, or
when they started the next milestone of their path (one of its `started_by` events) at least
`stall.step_timeout_hours` ago and have not completed it. The failure label is the first that
fits, in this order (the most actionable first):
- access_block: a permission error, or an invite accepted and no core action at all;
- invite_failure: invitations sent, none accepted;
- generic_tour_trap: the tour or checklist done, but no core action;
- no_show: a single session, no return;
- other.
Core actions are the milestone and adoption events, invitation acceptance and tours excluded.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from onboarding_pipeline.config.engagement import InterventionRules
from onboarding_pipeline.config.product import InviteEvents

STALL_COLUMNS = [
    "user_id",
    "path",
    "stalled",
    "stall_kind",
    "failure_label",
    "last_event_name",
    "last_event_at",
    "current_step",
    "current_step_label",
    "days_since_signup",
    "hours_inactive",
    "evidence",
]


def _count(by_event: pd.DataFrame, names: list[str], users: pd.Index) -> pd.Series:
    rows = by_event[by_event.event_name.isin(names)]
    return rows.groupby("user_id").n.sum().reindex(users).fillna(0).astype(int)


def detect_stalls(
    users: pd.DataFrame,
    by_event: pd.DataFrame,
    next_steps: pd.DataFrame,
    rules: InterventionRules,
    invites: InviteEvents,
    core_events: list[str],
    now: datetime,
) -> pd.DataFrame:
    """One row per user still onboarding (`users`: user_id, path, signup_at, sessions;
    `next_steps`: per user the next milestone, from `paths.next_milestones`)."""
    if users.empty:
        # Nobody onboarding: no rows, but typed columns (a boolean `stalled` filters).
        return pd.DataFrame(columns=STALL_COLUMNS).astype(
            {"stalled": bool, "days_since_signup": float, "hours_inactive": float}
        )
    stall = rules.stall
    now_ts = pd.Timestamp(now)
    ids = pd.Index(users.user_id)
    frame = users[["user_id", "path", "signup_at", "sessions"]].set_index("user_id")

    # Ties (date-only data) broken by name: the same input gives the same evidence every run.
    latest = by_event.sort_values(["last_at", "event_name"], kind="stable")
    latest = latest.groupby("user_id").tail(1).set_index("user_id")
    frame["last_event_name"] = latest.event_name.reindex(ids)
    frame["last_event_at"] = latest.last_at.reindex(ids).fillna(frame.signup_at)
    frame["hours_inactive"] = (now_ts - frame.last_event_at).dt.total_seconds() / 3600
    frame["days_since_signup"] = (now_ts - frame.signup_at).dt.total_seconds() / 86400

    steps = next_steps.set_index("user_id").reindex(ids)
    frame["current_step"] = steps.next_milestone
    frame["current_step_label"] = steps.next_milestone_label
    started_hours = (now_ts - steps.next_started_at).dt.total_seconds() / 3600
    inactive = frame.hours_inactive >= stall.inactive_hours
    step_incomplete = started_hours.fillna(-1) >= stall.step_timeout_hours
    frame["stalled"] = inactive | step_incomplete
    frame["stall_kind"] = pd.Series(
        np.select([inactive, step_incomplete], ["inactive", "step_incomplete"], ""),
        index=frame.index,
    ).replace("", None)

    permission = _count(by_event, stall.permission_events, ids)
    sent = _count(by_event, invites.sent, ids)
    accepted = _count(by_event, invites.accepted, ids)
    tours = _count(by_event, stall.tour_events, ids)
    excluded = {*invites.accepted, *stall.tour_events}
    core = _count(by_event, [e for e in core_events if e not in excluded], ids)
    labels = np.select(
        [
            (permission > 0) | ((accepted > 0) & (core == 0)),
            (sent > 0) & (accepted == 0),
            (tours > 0) & (core == 0),
            frame.sessions <= 1,
        ],
        ["access_block", "invite_failure", "generic_tour_trap", "no_show"],
        default="other",
    )
    frame["failure_label"] = [
        str(label) if stalled else None
        for label, stalled in zip(labels, frame.stalled, strict=True)
    ]

    evidence: list[str | None] = []
    for key, row in frame.iterrows():
        user = str(key)
        if not row.stalled:
            evidence.append(None)
            continue
        parts = []
        last = row.last_event_name or "signed up"
        if row.stall_kind == "inactive":
            parts.append(
                f"no activity for {row.hours_inactive / 24:.1f} days since '{last}' "
                f"on {row.last_event_at:%Y-%m-%d}"
            )
        else:
            parts.append(
                f"started '{row.current_step_label}' {started_hours[user]:.0f} h ago "
                "and has not finished it"
            )
        label = row.failure_label
        if label == "access_block":
            parts.append(
                f"{permission[user]} permission error(s)"
                if permission[user]
                else "accepted an invite but took no first action"
            )
        elif label == "invite_failure":
            parts.append(f"{sent[user]} invitation(s) sent, none accepted")
        elif label == "generic_tour_trap":
            parts.append("finished the tour but took no core action")
        elif label == "no_show":
            parts.append("one session, never came back")
        step = row.current_step_label or "all milestones done"
        parts.append(f"next step: {step}; day {row.days_since_signup:.0f} since signup")
        evidence.append("; ".join(parts))
    frame["evidence"] = evidence
    return frame.reset_index()[STALL_COLUMNS]

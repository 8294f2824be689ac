"""Onboarding paths: which path each user follows and how far along it they are."""

from __future__ import annotations

import numpy as np
import pandas as pd

from onboarding_pipeline.config.engagement import OnboardingPath, SegmentRule

PROGRESS_COLUMNS = [
    "user_id",
    "path",
    "milestone",
    "milestone_label",
    "position",
    "weight",
    "due_day",
    "due_at",
    "started_at",
    "completed",
    "completed_at",
    "completed_on_time",
    "is_next",
]


def assign_paths(
    users: pd.DataFrame, segments: list[SegmentRule], paths: dict[str, OnboardingPath]
) -> pd.Series:
    """The path of each user: the first segment rule whose attributes all match.

    Users no rule matches follow the last path configured (with no rules: the only path).
    """
    fallback = list(paths)[-1]
    chosen = pd.Series(np.full(len(users), None, dtype=object), index=users.index)
    for rule in segments:
        match = chosen.isna()
        for attribute, values in rule.when.items():
            match &= users[attribute].isin(values)
        chosen[match] = rule.path
    return chosen.fillna(fallback).astype(str)


def milestone_plan(paths: dict[str, OnboardingPath]) -> pd.DataFrame:
    """One row per (path, milestone): position, weight, due day and words."""
    return pd.DataFrame(
        [
            {
                "path": name,
                "milestone": m.name,
                "milestone_label": m.title,
                "position": position,
                "weight": m.weight,
                "due_day": m.due_day,
            }
            for name, path in paths.items()
            for position, m in enumerate(path.milestones, start=1)
        ]
    )


def _first_of(
    by_event: pd.DataFrame, users: pd.DataFrame, paths: dict[str, OnboardingPath], kind: str
) -> pd.DataFrame:
    """(user_id, milestone) -> earliest of the milestone's `events` (kind="events") or
    `started_by` events (kind="started_by") on the user's own path."""
    links = pd.DataFrame(
        [
            {"path": name, "milestone": m.name, "event_name": event}
            for name, path in paths.items()
            for m in path.milestones
            for event in getattr(m, kind)
        ],
        columns=["path", "milestone", "event_name"],
    )
    rows = by_event[["user_id", "event_name", "first_at"]].merge(
        users[["user_id", "path"]], on="user_id"
    )
    rows = rows.merge(links, on=["path", "event_name"])
    return rows.groupby(["user_id", "milestone"], as_index=False).agg(first_at=("first_at", "min"))


def milestone_progress(
    users: pd.DataFrame, by_event: pd.DataFrame, paths: dict[str, OnboardingPath]
) -> pd.DataFrame:
    """Per user and milestone of their path: started, completed (when, on time) and whether it
    is the next one to do (the first not completed, in path order).

    `users` needs user_id, path, signup_at; `by_event` is what they did up to their cutoff.
    """
    if users.empty:
        return pd.DataFrame(columns=PROGRESS_COLUMNS)
    rows = users[["user_id", "path", "signup_at"]].merge(milestone_plan(paths), on="path")
    done = _first_of(by_event, users, paths, "events").rename(columns={"first_at": "completed_at"})
    started = _first_of(by_event, users, paths, "started_by").rename(
        columns={"first_at": "started_at"}
    )
    rows = rows.merge(done, on=["user_id", "milestone"], how="left")
    rows = rows.merge(started, on=["user_id", "milestone"], how="left")
    rows["due_at"] = rows.signup_at + pd.to_timedelta(rows.due_day, unit="D")
    rows["completed"] = rows.completed_at.notna()
    rows["completed_on_time"] = rows.completed & (rows.completed_at <= rows.due_at)
    rows = rows.sort_values(["user_id", "position"], kind="stable")
    first_open = rows[~rows.completed].groupby("user_id").position.min()
    rows["is_next"] = rows.position == rows.user_id.map(first_open)
    return rows[PROGRESS_COLUMNS].reset_index(drop=True)


def next_milestones(progress: pd.DataFrame) -> pd.DataFrame:
    """Per user: completed weight share and the next milestone (None when all are done)."""
    weights = progress.assign(done_weight=progress.weight * progress.completed)
    summary = weights.groupby("user_id").agg(
        path=("path", "first"),
        total_weight=("weight", "sum"),
        done_weight=("done_weight", "sum"),
        milestones_done=("completed", "sum"),
        milestones=("milestone", "count"),
    )
    summary["milestone_completion"] = summary.done_weight / summary.total_weight
    upcoming = progress[progress.is_next].set_index("user_id")
    for column in ("milestone", "milestone_label", "due_at", "started_at"):
        summary[f"next_{column}"] = upcoming[column].reindex(summary.index)
    return summary.reset_index()

"""Onboarding paths: which path each user follows and how far along it they are."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.config.engagement import OnboardingPath, SegmentRule, default_path

# A path derived from the data (no `paths`, no `funnel_steps`) has this many milestones
# before the aha event: the most common early events ...
DERIVED_MILESTONES = 5
# ... leaving out events nearly everyone does (a signup or page view separates nobody).
UBIQUITOUS_SHARE = 0.95

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


@dataclass(frozen=True)
class PathChoice:
    """The paths engagement follows and where they came from."""

    paths: dict[str, OnboardingPath]
    source: str  # configured | funnel_steps | data | aha_only
    note: str | None = None  # what was derived, in words (None when configured)


def needs_derived_paths(config: ProductConfig) -> bool:
    """No `paths` and no funnel step besides the aha events: the default path would be the
    aha event alone, which no user still onboarding has done (health 0 for everyone)."""
    return not config.paths and not [s for s in config.funnel_steps if s not in config.aha_events]


def choose_paths(config: ProductConfig, reach: pd.DataFrame | None, users: int) -> PathChoice:
    """`paths` when configured; else one `standard` path from `funnel_steps` and the aha
    event; else one derived from the data: the `DERIVED_MILESTONES` events most users do in
    their first `observation_hours` (aha events and events done by `UBIQUITOUS_SHARE` or more
    of users left out), ordered by when they are done on average, then the aha event.

    `reach`: event_name, users, mean_hours (`activity.early_event_reach`); `users`: how many
    users it was measured on."""
    if config.paths:
        return PathChoice(dict(config.paths), "configured")
    if not needs_derived_paths(config):
        return PathChoice(
            config.onboarding_paths(),
            "funnel_steps",
            "no `paths` in onboarding.yaml: one `standard` path of the `funnel_steps`, then "
            "the aha event",
        )
    candidates = (
        reach[~reach.event_name.isin(config.aha_events)]
        if reach is not None and users
        else pd.DataFrame(columns=["event_name", "users", "mean_hours"])
    )
    share = candidates.users / max(users, 1)
    informative = candidates[share < UBIQUITOUS_SHARE]
    picked = (informative if len(informative) else candidates).sort_values(
        ["users", "event_name"], ascending=[False, True], kind="stable"
    )
    picked = picked.head(DERIVED_MILESTONES).sort_values(
        ["mean_hours", "event_name"], kind="stable"
    )
    aha = config.aha_events[0]
    if picked.empty:
        return PathChoice(
            config.onboarding_paths(),
            "aha_only",
            f"no `paths` or `funnel_steps` in onboarding.yaml and no early events to derive "
            f"milestones from yet: the only milestone is the aha event {aha!r}",
        )
    steps = [str(name) for name in picked.event_name]
    path = default_path(steps, list(config.aha_events), config.activation_window_days)
    path = path.model_copy(
        update={"description": "Derived from the data: the most common early events, then aha"}
    )
    left_out = sorted(candidates.event_name[share >= UBIQUITOUS_SHARE]) if len(informative) else []
    described = ", ".join(
        f"{name} ({count / users:.0%})"
        for name, count in zip(picked.event_name, picked.users, strict=True)
    )
    note = (
        f"no `paths` or `funnel_steps` in onboarding.yaml: the `standard` path was derived from "
        f"the data: the {len(steps)} events most users do in their first "
        f"{config.observation_hours} h ({described}), then the aha event {aha!r}"
        + (f"; left out as done by nearly everyone: {', '.join(left_out)}" if left_out else "")
        + ". Set `paths` (or `funnel_steps`) in onboarding.yaml to choose the milestones."
    )
    return PathChoice({"standard": path}, "data", note)

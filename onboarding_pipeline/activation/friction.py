"""Friction archetypes: dropped-off users clustered by what they did in their first hours.

Dropped users (label == 0: window closed, not activated) are described by `log1p` of their
early event counts (constant columns dropped), standardised, and clustered with KMeans
(n_init=10). The number of clusters k in 2..`max_clusters` maximises the silhouette score on a
seeded sample of at most 5,000 users (KMeans fitted on that sample); the best sample model's
centres are then refined on every dropped user, so 300k users stay fast.

Each cluster is described by its distinguishing events (prevalence = share of users with the
event at least once; an event distinguishes a cluster when its prevalence there is at least
`MIN_LIFT` times and `MIN_DIFFERENCE` above the prevalence among all dropped users), by the
funnel step where it stalls, and by a recommended fix. Clusters that tell the same story (same
distinguishing events, same stall step) are merged: silhouette likes to split low integer
counts into their levels, which are not different archetypes. Cluster ids are numbered by size
(0 = largest); everything is deterministic for a seed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances, silhouette_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from onboarding_pipeline.activation.funnel import step_reach

MIN_DROPPED_USERS = 20
SILHOUETTE_SAMPLE = 5_000
MAX_DISTINGUISHING = 3
# "Clear difference": prevalence in the cluster >= 1.5x overall and >= 10 points above it.
MIN_LIFT = 1.5
MIN_DIFFERENCE = 0.10
CLUSTER_COLUMNS = [
    "cluster_id",
    "users",
    "share",
    "description",
    "distinguishing_events",
    "stalls_at",
    "recommended_fix",
]
DEFAULT_FIXES = {
    "permission_error": (
        "Fix permissions: have an admin grant access, or send the invitee a role-request link"
    ),
    "integration_failed": (
        "Offer integration help: docs for the failing connector and a support hand-off"
    ),
}
INVITE_FIX = "Nudge an invite: prompt the user to invite a teammate with a pre-filled invite link"
DATA_CONNECTION_FIX = "Guide the first data connection with a sample dataset"
FUNNEL_COMPLETE_FIX = "Show the path from the finished setup to the first aha moment"
# Event names that read as something going wrong ("hit X") rather than something done ("did X").
_BLOCKER = re.compile(r"error|fail|denied|timeout|invalid|reject|crash|limit")
_DATA_CONNECTION = re.compile(r"data_?source|(connect|import|upload).*data|data.*(connect|import)")


class DistinguishingEvent(TypedDict):
    event: str
    prevalence_in_cluster: float
    prevalence_overall: float


def default_fix(name: str, *, is_step: bool = False) -> str | None:
    """The built-in fix for a well-known event or funnel-step name, if there is one.

    The data-connection guide applies to steps only: a cluster distinguished by having
    connected data does not need a guide to connecting it.
    """
    if name in DEFAULT_FIXES:
        return DEFAULT_FIXES[name]
    if "invite" in name:
        return INVITE_FIX
    if is_step and _DATA_CONNECTION.search(name):
        return DATA_CONNECTION_FIX
    return None


def friction_clusters(
    users: pd.DataFrame,
    early: pd.DataFrame,
    first_events: pd.DataFrame,
    steps: list[str],
    *,
    max_clusters: int,
    fixes: dict[str, str],
    seed: int = 0,
    window_days: int | None = None,
) -> tuple[pd.DataFrame, pd.Series]:
    """Cluster dropped users (label == 0) into friction archetypes.

    `early` is indexed by `user_id` with `n_<event>` count columns; dropped users missing from
    it count as having done nothing. `window_days`, when given, limits funnel progress to the
    activation window (as in `build_funnel`); without it steps only need to be in order.

    Returns (clusters, assignment): one row per cluster with the columns in `CLUSTER_COLUMNS`
    (`distinguishing_events` is a JSON list of {event, prevalence_in_cluster,
    prevalence_overall}), and a Series user_id -> cluster_id over the dropped users. Fewer than
    `MIN_DROPPED_USERS` dropped users give two empty results.
    """
    # Sorted ids make the sample, and so the result, independent of input row order.
    dropped_ids = pd.Index(
        np.sort(users.loc[users["label"] == 0, "user_id"].astype(str).unique()), name="user_id"
    )
    if len(dropped_ids) < MIN_DROPPED_USERS:
        return _empty()

    count_columns = [str(c) for c in early.columns if str(c).startswith("n_")]
    early = early.copy()
    early.index = early.index.astype(str)
    counts = early.reindex(dropped_ids)[count_columns].fillna(0).clip(lower=0).to_numpy(dtype=float)
    events = [c.removeprefix("n_") for c in count_columns]

    dropped = users.assign(user_id=users["user_id"].astype(str)).drop_duplicates("user_id")
    dropped = dropped.set_index("user_id").loc[dropped_ids].reset_index()
    reached, _ = step_reach(dropped, first_events, steps, window_days)
    behaviour = _Behaviour(
        present=counts > 0,
        events=events,
        furthest=reached.to_numpy(dtype=bool).sum(axis=1),
        steps=steps,
    )

    labels = _cluster(np.log1p(counts), max_clusters, seed)
    labels, profiles = _merge_alike(labels, behaviour)
    clusters = pd.DataFrame(
        [_row(profile, len(labels), steps, fixes) for profile in profiles],
        columns=CLUSTER_COLUMNS,
    )
    assignment = pd.Series(labels, index=dropped_ids, name="cluster_id", dtype=np.int64)
    return clusters, assignment


def _cluster(features: np.ndarray, max_clusters: int, seed: int) -> np.ndarray:
    """KMeans labels, k chosen by silhouette on a sample."""
    n_users = features.shape[0]
    varying = features.std(axis=0) > 0
    if not varying.any():
        return np.zeros(n_users, dtype=np.int64)  # everyone behaved alike: one archetype
    scaled = StandardScaler().fit_transform(features[:, varying])

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n_users, size=min(n_users, SILHOUETTE_SAMPLE), replace=False))
    sampled = scaled[sample]
    # KMeans cannot make more clusters than there are distinct points.
    distinct = len(np.unique(sampled, axis=0))
    # One thread: on a few thousand rows OpenMP threads only contend (35x slower on a busy
    # 2-core runner that also executes other Dagster steps).
    with threadpool_limits(limits=1):
        best: tuple[float, KMeans] | None = None
        # The sample's distances once, not once per k (the bulk of the silhouette's time).
        distances = pairwise_distances(sampled)
        for k in range(2, min(max_clusters, distinct, len(sample) - 1) + 1):
            model = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(sampled)
            if len(np.unique(model.labels_)) < 2:
                continue
            score = float(silhouette_score(distances, model.labels_, metric="precomputed"))
            if best is None or score > best[0]:  # strict: ties keep the smaller k
                best = (score, model)
        if best is None:
            return np.zeros(n_users, dtype=np.int64)
        model = best[1]
        if len(sample) < n_users:
            # Refine the sample's best centres on everyone: one warm-started Lloyd run instead
            # of ten random restarts on hundreds of thousands of rows.
            model = KMeans(n_clusters=model.n_clusters, init=model.cluster_centers_, n_init=1).fit(
                scaled
            )
    return np.asarray(model.labels_, dtype=np.int64)


@dataclass(frozen=True)
class _Behaviour:
    """What the dropped users did: aligned rows, one per dropped user."""

    present: np.ndarray  # users x events, n > 0
    events: list[str]
    furthest: np.ndarray  # number of ordered funnel steps reached
    steps: list[str]


@dataclass(frozen=True)
class _Profile:
    cluster_id: int
    users: int
    distinguishing: list[DistinguishingEvent]
    quiet: bool  # fewer distinct early events than the average dropped user
    stall_index: int  # most common number of funnel steps reached

    def key(self) -> tuple[object, ...]:
        """What a reader sees: clusters with the same key tell the same story."""
        names = tuple(sorted(item["event"] for item in self.distinguishing))
        return (names, self.quiet if not names else None, self.stall_index)


def _merge_alike(labels: np.ndarray, behaviour: _Behaviour) -> tuple[np.ndarray, list[_Profile]]:
    """Merge clusters with the same story, then number them by size (0 = largest).

    Silhouette favours splitting low integer counts into their levels (users with 2, 3, 4
    permission errors as separate "archetypes"); such clusters share their distinguishing
    events and stall step, so they are one archetype for the reader.
    """
    while True:
        labels = _by_size(labels)
        profiles = _profiles(labels, behaviour)
        first_of_key: dict[tuple[object, ...], int] = {}
        target = np.arange(len(profiles))
        for profile in profiles:
            target[profile.cluster_id] = first_of_key.setdefault(profile.key(), profile.cluster_id)
        if (target == np.arange(len(profiles))).all():
            return labels, profiles
        labels = target[labels]  # a merged cluster's events can change: describe it again


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..k-1 by size, largest first; equal sizes keep their order."""
    unique, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(-sizes, kind="stable")
    renumber = np.empty(len(unique), dtype=np.int64)
    renumber[order] = np.arange(len(unique))
    return renumber[inverse.reshape(-1)]


def _profiles(labels: np.ndarray, behaviour: _Behaviour) -> list[_Profile]:
    present, events = behaviour.present, behaviour.events
    overall = present.mean(axis=0) if events else np.zeros(0)
    breadth = present.sum(axis=1)  # distinct early events per user
    profiles = []
    for cluster_id in range(int(labels.max()) + 1):  # a handful of clusters, not users
        members = labels == cluster_id
        prevalence = present[members].mean(axis=0) if events else np.zeros(0)
        reached = np.bincount(behaviour.furthest[members], minlength=len(behaviour.steps) + 1)
        profiles.append(
            _Profile(
                cluster_id=cluster_id,
                users=int(members.sum()),
                distinguishing=_distinguishing(events, prevalence, overall),
                quiet=bool(breadth[members].mean() <= breadth.mean()),
                # argmax takes the first maximum: ties go to the earlier step.
                stall_index=int(np.argmax(reached)),
            )
        )
    return profiles


def _row(
    profile: _Profile, n_users: int, steps: list[str], fixes: dict[str, str]
) -> dict[str, object]:
    """One output row: size, words, distinguishing events, stall step and fix."""
    stall_index = profile.stall_index
    if not steps:
        stalls_at, next_step = None, None
    elif stall_index == 0:
        stalls_at, next_step = f"before {steps[0]}", steps[0]
    else:
        stalls_at = steps[stall_index - 1]
        next_step = steps[stall_index] if stall_index < len(steps) else None

    distinguishing = profile.distinguishing
    if distinguishing:
        behaviour = ", ".join(
            f"{'hit' if _BLOCKER.search(item['event']) else 'did'} {item['event']} "
            f"({item['prevalence_in_cluster']:.0%} vs {item['prevalence_overall']:.0%})"
            for item in distinguishing
        )
        joiner = " and "
    else:
        behaviour = (
            "did little: no distinguishing early events"
            if profile.quiet
            else "typical early activity: no distinguishing early events"
        )
        joiner = "; "
    if next_step is not None:
        stall_text = f"stalled before {next_step}"
    elif steps:
        stall_text = "completed every funnel step"
    else:
        stall_text = ""

    return {
        "cluster_id": profile.cluster_id,
        "users": profile.users,
        "share": profile.users / n_users,
        "description": behaviour + (joiner + stall_text if stall_text else ""),
        "distinguishing_events": json.dumps(distinguishing),
        "stalls_at": stalls_at,
        "recommended_fix": _fix([item["event"] for item in distinguishing], next_step, fixes),
    }


def _distinguishing(
    events: list[str], prevalence: np.ndarray, overall: np.ndarray
) -> list[DistinguishingEvent]:
    """Up to three events much more common in the cluster than among all dropped users."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(overall > 0, prevalence / overall, 0.0)
    clear = (lift >= MIN_LIFT) & (prevalence - overall >= MIN_DIFFERENCE)
    candidates = np.flatnonzero(clear)
    # Highest lift first, then higher prevalence, then name (stable output).
    ranked = sorted(candidates, key=lambda i: (-lift[i], -prevalence[i], events[i]))
    return [
        DistinguishingEvent(
            event=events[i],
            prevalence_in_cluster=round(float(prevalence[i]), 4),
            prevalence_overall=round(float(overall[i]), 4),
        )
        for i in ranked[:MAX_DISTINGUISHING]
    ]


def _fix(events: list[str], next_step: str | None, fixes: dict[str, str]) -> str:
    """Configured fix of the distinguishing events (best first), then of the stall step, then
    the built-in defaults in the same order. Events without a fix (e.g. help_article_viewed,
    often the highest lift beside a blocker) are skipped rather than ending the search."""
    for name in [*events, next_step]:
        if name is not None and name in fixes:
            return fixes[name]
    named = [(event, False) for event in events] + [(next_step, True)]
    for name, is_step in named:
        if name is not None and (fix := default_fix(name, is_step=is_step)) is not None:
            return fix
    if next_step is not None:
        return f"Send the next-step guide for {next_step}"
    return FUNNEL_COMPLETE_FIX


def _empty() -> tuple[pd.DataFrame, pd.Series]:
    dtypes = {
        "cluster_id": np.int64,
        "users": np.int64,
        "share": float,
        "description": object,
        "distinguishing_events": object,
        "stalls_at": object,
        "recommended_fix": object,
    }
    clusters = pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in dtypes.items()})
    assignment = pd.Series(
        dtype=np.int64, name="cluster_id", index=pd.Index([], dtype=object, name="user_id")
    )
    return clusters, assignment

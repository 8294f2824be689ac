"""Funnel, KPIs and friction clusters on small hand-made frames whose answers are counted by hand."""

from __future__ import annotations

import json

import ibis
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score
from statsmodels.stats.proportion import proportion_confint

from onboarding_pipeline.activation.friction import (
    CLUSTER_COLUMNS,
    DEFAULT_FIXES,
    friction_clusters,
)
from onboarding_pipeline.activation.funnel import FUNNEL_COLUMNS, build_funnel, step_times
from onboarding_pipeline.activation.kpis import KPI_COLUMNS, onboarding_kpis, retention_activity
from onboarding_pipeline.config.product import KpiTargets

WATERMARK = pd.Timestamp("2026-03-01T00:00:00Z")
WINDOW_DAYS = 14  # windows close for signups up to 2026-02-15
STEPS = ["A", "B", "C"]


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def users_frame(rows: list[tuple[str, str, str | None, str | None]]) -> pd.DataFrame:
    """(user_id, signup_at, role, plan) rows; the other columns are derived or constant."""
    frame = pd.DataFrame(rows, columns=["user_id", "signup_at", "role", "plan"])
    frame["signup_at"] = pd.to_datetime(frame["signup_at"], utc=True)
    frame["company_size"] = "11-50"
    return frame


def events_frame(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    """(user_id, event_name, signup_at, hours after signup) -> first_events rows."""
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "event_name": [r[1] for r in rows],
            "first_at": [ts(r[2]) + pd.Timedelta(hours=r[3]) for r in rows],
        }
    )


# Funnel A -> B -> C; hours are after signup. Weeks: 2026-01-05 (u1-u4), 2026-01-12 (u5-u7),
# 2026-02-23 (u8-u10, windows still open at the watermark).
FUNNEL_USERS = users_frame(
    [
        ("u1", "2026-01-05T10:00Z", "analyst", "free"),  # A1 B3 C7: reaches C
        ("u2", "2026-01-05T12:00Z", "analyst", "pro"),  # A2 B4, no C: drops at C
        ("u3", "2026-01-06T00:00Z", "engineer", "free"),  # A1 C2 B5: C before B, drops at C
        ("u4", "2026-01-07T00:00Z", "engineer", "pro"),  # B1 A2: B before A, drops at B
        ("u5", "2026-01-12T00:00Z", None, "free"),  # A1, B after the window: drops at B
        ("u6", "2026-01-12T00:00Z", "analyst", None),  # nothing: drops at A
        ("u7", "2026-01-13T00:00Z", "manager", "pro"),  # A10 B20 C30: reaches C
        ("u8", "2026-02-25T00:00Z", "analyst", "free"),  # open window, A3 only: never dropped
        ("u9", "2026-02-26T00:00Z", "manager", None),  # open window, A1 B2 C3: known converter
        ("u10", "2026-02-27T00:00Z", "engineer", "free"),  # open window, nothing: excluded
    ]
)
FUNNEL_EVENTS = events_frame(
    [
        ("u1", "A", "2026-01-05T10:00Z", 1),
        ("u1", "B", "2026-01-05T10:00Z", 3),
        ("u1", "C", "2026-01-05T10:00Z", 7),
        ("u2", "A", "2026-01-05T12:00Z", 2),
        ("u2", "B", "2026-01-05T12:00Z", 4),
        ("u3", "A", "2026-01-06T00:00Z", 1),
        ("u3", "C", "2026-01-06T00:00Z", 2),
        ("u3", "B", "2026-01-06T00:00Z", 5),
        ("u4", "B", "2026-01-07T00:00Z", 1),
        ("u4", "A", "2026-01-07T00:00Z", 2),
        ("u5", "A", "2026-01-12T00:00Z", 1),
        ("u5", "B", "2026-01-12T00:00Z", 15 * 24),
        ("u7", "A", "2026-01-13T00:00Z", 10),
        ("u7", "B", "2026-01-13T00:00Z", 20),
        ("u7", "C", "2026-01-13T00:00Z", 30),
        ("u7", "other_event", "2026-01-13T00:00Z", 1),
        ("u8", "A", "2026-02-25T00:00Z", 3),
        ("u9", "A", "2026-02-26T00:00Z", 1),
        ("u9", "B", "2026-02-26T00:00Z", 2),
        ("u9", "C", "2026-02-26T00:00Z", 3),
    ]
)


@pytest.fixture(scope="module")
def funnel() -> pd.DataFrame:
    return build_funnel(FUNNEL_USERS, FUNNEL_EVENTS, STEPS, WINDOW_DAYS, WATERMARK)


def test_funnel_overall_matches_hand_count(funnel: pd.DataFrame) -> None:
    overall = funnel[funnel["segment_type"] == "overall"].set_index("step")
    assert list(funnel.columns) == FUNNEL_COLUMNS
    assert list(overall.index) == STEPS and list(overall["step_index"]) == [1, 2, 3]
    assert set(overall["segment"]) == {"all"}
    # Closed windows only: u1-u7 (u8-u10 may still reach anything, so they are in no count).
    # A: reached u1 u2 u3 u4 u5 u7; dropped u6.
    # B: reached u1 u2 u3 u7 (u4 out of order, u5 late); at previous = reached A; dropped u4 u5.
    # C: reached u1 u7 (u3 did C before B); at previous = u1 u2 u3 u7; dropped u2 u3.
    expected = {
        "A": (7, 6, 7, 1),
        "B": (7, 4, 6, 2),
        "C": (7, 2, 4, 2),
    }
    for step, (entered, reached, at_previous, dropped) in expected.items():
        row = overall.loc[step]
        assert (
            row["users_entered"],
            row["users_reached"],
            row["users_at_previous"],
            row["dropped"],
        ) == (entered, reached, at_previous, dropped), step
        assert row["conversion_from_start"] == pytest.approx(reached / entered)
        assert row["conversion_from_previous"] == pytest.approx(reached / at_previous)
        assert row["drop_off_rate"] == pytest.approx(dropped / at_previous)
    # Hours from the previous step (signup for A) among those who reached the step:
    # A: 1 2 1 2 1 10 -> 1.5; B: 2 2 4 10 -> 3; C: 4 10 -> 7.
    assert list(overall["median_hours_from_previous"]) == pytest.approx([1.5, 3.0, 7.0])


def test_funnel_week_rows_match_hand_count(funnel: pd.DataFrame) -> None:
    weeks = funnel[funnel["segment_type"] == "signup_week"]
    # The week of 2026-02-23 has open windows only: not in the funnel yet.
    assert sorted(set(weeks["segment"])) == ["2026-01-05", "2026-01-12"]
    first_week = weeks[weeks["segment"] == "2026-01-05"].set_index("step")
    # u1-u4, all closed: C reached by u1, dropped by u2 and u3.
    c_row = first_week.loc["C"]
    assert (c_row["users_entered"], c_row["users_reached"], c_row["dropped"]) == (4, 1, 2)


def test_funnel_last_aha_step_is_the_activation_kpi() -> None:
    """With the aha event as the last step, the funnel ends on the activation KPI of the same
    closed windows: every activated user counts, whatever path led there."""
    users = FUNNEL_USERS.assign(
        activated=[True, False, True, False, False, False, True, False, True, False],
        first_aha_at=pd.NaT,
    )
    table = build_funnel(users, FUNNEL_EVENTS, STEPS, WINDOW_DAYS, WATERMARK, ["C"])
    last = table[table.segment_type == "overall"].set_index("step").loc["C"]
    kpi = onboarding_kpis(
        users,
        FUNNEL_EVENTS,
        pd.DataFrame({"user_id": [], "day": pd.to_datetime([], utc=True)}),
        window_days=WINDOW_DAYS,
        tiers_days=[7],
        retention_days=30,
        onboarding_steps=[],
        targets=KpiTargets(),
        watermark=WATERMARK,
    ).set_index(["signup_week", "kpi"])
    rate = kpi.loc[("all", "activation_rate")]
    assert (last.users_reached, last.users_entered) == (rate.numerator, rate.denominator) == (3, 7)
    assert last.conversion_from_start == pytest.approx(rate.value)
    # Of the 4 users who reached B (u1 u2 u3 u7), u1 u3 u7 activated (u3 did C before B).
    assert (last.users_at_previous, last.dropped) == (4, 1)
    assert last.conversion_from_previous == pytest.approx(3 / 4)


def test_funnel_segments_sum_to_overall(funnel: pd.DataFrame) -> None:
    counts = ["users_entered", "users_reached", "users_at_previous", "dropped"]
    overall = funnel[funnel["segment_type"] == "overall"].set_index("step")[counts]
    assert set(funnel["segment_type"]) == {"overall", "role", "company_size", "plan", "signup_week"}
    for segment_type in ("role", "company_size", "plan", "signup_week"):
        rows = funnel[funnel["segment_type"] == segment_type]
        summed = rows.groupby("step")[counts].sum().loc[STEPS]
        pd.testing.assert_frame_equal(summed, overall, check_names=False)
    # A missing role or plan is its own "unknown" segment rather than lost.
    assert "unknown" in set(funnel.loc[funnel["segment_type"] == "role", "segment"])
    assert "unknown" in set(funnel.loc[funnel["segment_type"] == "plan", "segment"])


def test_funnel_without_steps_is_empty_with_columns() -> None:
    empty = build_funnel(FUNNEL_USERS, FUNNEL_EVENTS, [], WINDOW_DAYS, WATERMARK)
    assert empty.empty and list(empty.columns) == FUNNEL_COLUMNS


# KPIs: watermark 2026-03-01, window 14 d, tiers 7 and 30 d, retention week = days 30..36.
KPI_USERS = pd.DataFrame(
    {
        "user_id": ["k1", "k2", "k3", "k4", "k5", "k6"],
        "signup_at": pd.to_datetime(
            [
                "2026-01-01T10:00Z",  # aha +48 h; active on day 31 -> retained
                "2026-01-01T12:00Z",  # aha +240 h (not within 7 d); active day 19 only
                "2026-01-02T00:00Z",  # aha +20 d: not activated, within 30 d; active day 37
                "2026-01-02T00:00Z",  # no aha; active on day 30 -> retained
                "2026-02-10T00:00Z",  # aha +24 h; too recent for 30 d and for retention
                "2026-02-25T00:00Z",  # aha +24 h but window open: eligible for nothing
            ],
            utc=True,
        ),
    }
)
KPI_USERS["first_aha_at"] = KPI_USERS["signup_at"] + pd.to_timedelta(
    [48, 240, 480, np.nan, 24, 24], unit="h"
)
KPI_USERS["activated"] = [True, True, False, False, True, True]
KPI_ACTIVITY = pd.DataFrame(
    {
        "user_id": ["k1", "k2", "k3", "k4", "k5"],
        "day": pd.to_datetime(
            ["2026-02-01", "2026-01-20", "2026-02-08", "2026-02-01", "2026-02-20"], utc=True
        ),
    }
)
# Onboarding steps A and B (any order) within the window: k1 yes, k2 A only, k3 B too late,
# k4 nothing, k5 B before A (yes), k6 yes but its window is open.
KPI_EVENTS = events_frame(
    [
        ("k1", "A", "2026-01-01T10:00Z", 1),
        ("k1", "B", "2026-01-01T10:00Z", 2),
        ("k2", "A", "2026-01-01T12:00Z", 1),
        ("k3", "A", "2026-01-02T00:00Z", 1),
        ("k3", "B", "2026-01-02T00:00Z", 20 * 24),
        ("k5", "B", "2026-02-10T00:00Z", 1),
        ("k5", "A", "2026-02-10T00:00Z", 2),
        ("k6", "A", "2026-02-25T00:00Z", 1),
        ("k6", "B", "2026-02-25T00:00Z", 2),
    ]
)


def kpis(targets: KpiTargets) -> pd.DataFrame:
    return onboarding_kpis(
        KPI_USERS,
        KPI_EVENTS,
        KPI_ACTIVITY,
        window_days=WINDOW_DAYS,
        tiers_days=[30, 7],
        retention_days=30,
        onboarding_steps=["A", "B"],
        targets=targets,
        watermark=WATERMARK,
    )


def test_kpis_eligibility_matches_hand_count() -> None:
    table = kpis(KpiTargets())
    assert list(table.columns) == KPI_COLUMNS
    overall = table[table["signup_week"] == "all"].set_index("kpi")
    expected = {
        "activation_rate": (3, 5),  # closed k1-k5; k1 k2 k5 activated
        "activation_within_7d": (2, 5),  # k1-k5 eligible; k1 k5 within 7 d
        "activation_within_30d": (3, 4),  # k1-k4 eligible; k1 k2 k3
        "retention_rate": (2, 4),  # k1-k4 eligible; k1 (day 31) k4 (day 30); k3 day 37 is out
        "onboarding_completion_rate": (2, 5),  # k1 k5
    }
    for kpi, (numerator, denominator) in expected.items():
        row = overall.loc[kpi]
        assert (row["numerator"], row["denominator"]) == (numerator, denominator), kpi
        assert row["eligible_users"] == denominator
        assert row["value"] == pytest.approx(numerator / denominator)
    # Time to value over closed-window activated users: 48, 240, 24 h (k6 is open).
    assert overall.loc["median_hours_to_value", "value"] == pytest.approx(48)
    assert overall.loc["p75_hours_to_value", "value"] == pytest.approx(144)
    assert overall.loc["median_hours_to_value", "eligible_users"] == 3
    assert overall["ci_low"].isna()["median_hours_to_value"]
    # Per week: k1-k4 signed up in the week of 2025-12-29, k5 in 2026-02-09, k6 in 2026-02-23.
    weeks = table["signup_week"].drop_duplicates().tolist()
    assert weeks == ["2025-12-29", "2026-02-09", "2026-02-23", "all"]
    recent = table[table["signup_week"] == "2026-02-09"].set_index("kpi")
    assert recent.loc["activation_within_7d", "denominator"] == 1
    assert recent.loc["activation_within_30d", "denominator"] == 0
    assert recent["value"].isna()["activation_within_30d"]
    newest = table[table["signup_week"] == "2026-02-23"].set_index("kpi")
    assert (newest.loc[newest["denominator"].notna(), "denominator"] == 0).all()


def test_kpi_wilson_interval_contains_value() -> None:
    table = kpis(KpiTargets())
    rates = table[table["denominator"] > 0]
    assert len(rates) >= 10
    assert (rates["ci_low"] <= rates["value"]).all()
    assert (rates["value"] <= rates["ci_high"]).all()
    row = table[(table["signup_week"] == "all") & (table["kpi"] == "activation_rate")].iloc[0]
    low, high = proportion_confint(3, 5, alpha=0.05, method="wilson")
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
    assert row["ci_low"] > 0.2 and row["ci_high"] < 0.95  # an interval, not [0, 1]


def test_kpi_targets_use_the_right_direction() -> None:
    def verdicts(targets: KpiTargets) -> dict[str, object]:
        overall = kpis(targets).query("signup_week == 'all'").set_index("kpi")
        return {str(kpi): verdict for kpi, verdict in overall["meets_target"].items()}

    # Values: activation 0.6, median 48 h, retention 0.5.
    met = verdicts(KpiTargets(activation_rate=0.5, median_hours_to_value=72, retention_rate=0.6))
    assert met["activation_rate"] is True  # 0.6 >= 0.5
    assert met["median_hours_to_value"] is True  # 48 h <= 72 h: lower is better
    assert met["retention_rate"] is False  # 0.5 < 0.6
    assert met["onboarding_completion_rate"] is None  # no target
    assert met["p75_hours_to_value"] is None
    missed = verdicts(KpiTargets(activation_rate=0.7, median_hours_to_value=40))
    assert missed["activation_rate"] is False
    assert missed["median_hours_to_value"] is False  # 48 h > 40 h
    target = kpis(KpiTargets(activation_rate=0.5)).set_index(["signup_week", "kpi"])["target"]
    assert target[("all", "activation_rate")] == 0.5
    assert np.isnan(target[("all", "retention_rate")])


# Friction: two archetypes planted among dropped users.
FRICTION_STEPS = [
    "onboarding_started",
    "profile_completed",
    "workspace_created",
    "data_source_connected",
]


def friction_fixture(
    n_blocked: int = 80, n_quiet: int = 120, seed: int = 7, shared_noise: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Blocked users hit permission errors, read help and stall after workspace_created; quiet
    users do nothing else and stall after onboarding_started. With `shared_noise`, everyone
    views pages (overdispersed counts, same for both groups). Activated users must be ignored."""
    rng = np.random.default_rng(seed)
    n_dropped, n_active = n_blocked + n_quiet, 30
    ids = [f"d{i:03d}" for i in range(n_dropped)] + [f"a{i:03d}" for i in range(n_active)]
    planted = np.array([1] * n_blocked + [0] * n_quiet)
    blocked = np.r_[planted, np.zeros(n_active, dtype=int)] == 1
    signup = pd.Timestamp("2026-01-05T00:00Z")
    users = pd.DataFrame(
        {"user_id": ids, "signup_at": signup, "label": [0.0] * n_dropped + [1.0] * n_active}
    )
    early = pd.DataFrame(
        {
            "n_permission_error": np.where(blocked, rng.integers(2, 7, len(ids)), 0),
            "n_settings_viewed": 0,  # constant: dropped from the features
            "n_dashboard_created": np.r_[np.zeros(n_dropped, int), np.ones(n_active, int)],
        },
        index=pd.Index(ids, name="user_id"),
    )
    if shared_noise:
        early["n_help_article_viewed"] = np.where(blocked, rng.poisson(1.5, len(ids)), 0)
        early["n_page_viewed"] = rng.negative_binomial(2, 0.2, len(ids))  # mean 8
    rows = []
    for user, is_blocked in zip(ids, blocked, strict=True):
        done = FRICTION_STEPS[:3] if is_blocked else FRICTION_STEPS[:1]
        rows += [(user, step, hour + 1) for hour, step in enumerate(done)]
    first_events = pd.DataFrame(rows, columns=["user_id", "event_name", "hours"])
    first_events["first_at"] = signup + pd.to_timedelta(first_events.pop("hours"), unit="h")
    # Shuffled rows: the result must not depend on input order.
    users = users.sample(frac=1, random_state=1).reset_index(drop=True)
    return users, early.sample(frac=1, random_state=2), first_events, planted


def dropped_ids(planted: np.ndarray) -> list[str]:
    return [f"d{i:03d}" for i in range(len(planted))]


def test_friction_separates_planted_archetypes() -> None:
    users, early, first_events, planted = friction_fixture()
    clusters, assignment = friction_clusters(
        users, early, first_events, FRICTION_STEPS, max_clusters=6, fixes={}, seed=0
    )
    ids = dropped_ids(planted)
    assert list(clusters.columns) == CLUSTER_COLUMNS
    assert sorted(assignment.index) == ids  # activated users are not clustered
    assert adjusted_rand_score(planted, assignment.loc[ids].to_numpy()) > 0.8
    assert clusters["users"].sum() == len(planted)
    assert clusters["share"].sum() == pytest.approx(1.0)

    by_id = clusters.set_index("cluster_id")
    blocked = by_id.loc[assignment.loc[ids[0]]]
    assert "hit permission_error (" in blocked["description"]
    assert blocked["description"].endswith("stalled before data_source_connected")
    assert blocked["stalls_at"] == "workspace_created"
    # help_article_viewed may rank first (higher lift) but has no fix; the blocker's fix wins.
    assert blocked["recommended_fix"] == DEFAULT_FIXES["permission_error"]
    events = {e["event"]: e for e in json.loads(blocked["distinguishing_events"])}
    assert events["permission_error"]["prevalence_in_cluster"] > 0.9
    assert events["permission_error"]["prevalence_overall"] < 0.5
    assert "page_viewed" not in events  # shared by both groups: not distinguishing

    quiet = by_id.loc[assignment.loc[ids[-1]]]
    assert quiet["description"] == (
        "did little: no distinguishing early events; stalled before profile_completed"
    )
    assert quiet["stalls_at"] == "onboarding_started"
    assert quiet["recommended_fix"] == "Send the next-step guide for profile_completed"


def test_friction_count_levels_are_one_archetype() -> None:
    # Only permission errors (2..6) vs nothing: silhouette alone would split every count level
    # into its own cluster; clusters with the same story are merged back into one.
    users, early, first_events, planted = friction_fixture(shared_noise=False)
    clusters, assignment = friction_clusters(
        users, early, first_events, FRICTION_STEPS, max_clusters=6, fixes={}, seed=0
    )
    assert len(clusters) == 2
    assert adjusted_rand_score(planted, assignment.loc[dropped_ids(planted)]) == 1.0
    assert list(clusters["users"]) == [120, 80]  # numbered by size


def test_friction_is_deterministic_and_uses_configured_fixes() -> None:
    users, early, first_events, _ = friction_fixture()
    fixes = {"permission_error": "Ask the workspace admin", "profile_completed": "Profile tips"}

    def run() -> tuple[pd.DataFrame, pd.Series]:
        return friction_clusters(
            users, early, first_events, FRICTION_STEPS, max_clusters=4, fixes=fixes, seed=3
        )

    (clusters, assignment), (again, assignment_again) = run(), run()
    pd.testing.assert_frame_equal(clusters, again)
    pd.testing.assert_series_equal(assignment, assignment_again)
    assert set(clusters["recommended_fix"]) == {"Ask the workspace admin", "Profile tips"}


def test_friction_with_few_dropped_users_is_empty() -> None:
    users, early, first_events, _ = friction_fixture(n_blocked=10, n_quiet=9)
    clusters, assignment = friction_clusters(
        users, early, first_events, FRICTION_STEPS, max_clusters=6, fixes={}
    )
    assert clusters.empty and list(clusters.columns) == CLUSTER_COLUMNS
    assert assignment.empty


def test_step_times_are_the_earliest_time_of_each_step() -> None:
    users = pd.DataFrame({"user_id": ["a", "b", "c", "d"]}, index=[10, 11, 12, 13])
    first = events_frame(
        [
            ("a", "A", "2026-01-01T00:00Z", 5),
            ("a", "A", "2026-01-01T00:00Z", 2),  # a duplicate row: the earlier one counts
            ("a", "B", "2026-01-01T00:00Z", 7),
            ("c", "B", "2026-01-01T00:00Z", 1),
            ("z", "A", "2026-01-01T00:00Z", 1),  # not one of the users
            ("b", "other", "2026-01-01T00:00Z", 1),  # not a step
        ]
    )
    times = step_times(users, first, STEPS)
    assert list(times.columns) == STEPS and times.index.tolist() == [10, 11, 12, 13]
    assert times.loc[10, "A"] == ts("2026-01-01T02:00Z") and times.loc[10, "B"] == ts(
        "2026-01-01T07:00Z"
    )
    assert times.loc[12, "B"] == ts("2026-01-01T01:00Z")
    assert times.loc[[11, 13]].isna().all().all() and times["C"].isna().all()  # C: nobody
    assert all(str(dtype) == "datetime64[us, UTC]" for dtype in times.dtypes)
    assert step_times(users, first.iloc[:0], STEPS).isna().all().all()


def test_retention_activity_holds_every_day_the_retention_week_counts() -> None:
    """The warehouse reads only events near each user's retention week: the retention KPI is
    the one every active day gives, at the edges of the week too."""
    moments = [  # (signup, event): calendar-day offset, retention week = offsets 30..36
        ("2026-01-10T23:30Z", "2026-02-08T00:06Z"),  # 29: out
        ("2026-01-10T23:59:59.999Z", "2026-02-09T00:00Z"),  # 30, 29 days + 1 ms later: in
        ("2026-01-10T00:00Z", "2026-02-15T23:59:59.999Z"),  # 36, almost 37 days later: in
        ("2026-01-10T00:00Z", "2026-02-16T00:00Z"),  # 37: out
        ("2026-01-10T12:00Z", "2026-01-10T14:00Z"),  # 0: out
        ("2026-01-10T12:00Z", "2026-04-10T12:00Z"),  # 90: out
        ("2026-01-10T12:00Z", "2026-02-09T12:00Z"),  # 30: in
        ("2026-01-10T23:30Z", "2026-01-09T10:00Z"),  # before signup: out
    ]
    ids = [f"r{i}" for i in range(len(moments))]
    users = pd.DataFrame({"user_id": ids, "signup_at": [ts(m[0]) for m in moments]})
    events = pd.DataFrame({"user_id": ids, "timestamp": [ts(m[1]) for m in moments]})
    con = ibis.duckdb.connect()
    event_table = con.create_table("events", events)
    every_day = event_table.select("user_id", day=event_table.timestamp.truncate("D")).distinct()
    near = retention_activity(event_table, con.create_table("users", users), retention_days=30)

    def retained(activity: pd.DataFrame) -> list[float]:
        table = onboarding_kpis(
            users.assign(first_aha_at=pd.NaT, activated=False),
            events_frame([]),
            activity,
            window_days=WINDOW_DAYS,
            tiers_days=[],
            retention_days=30,
            onboarding_steps=[],
            targets=KpiTargets(),
            watermark=ts("2026-06-01T00:00Z"),
        )
        row = table.query("kpi == 'retention_rate' and signup_week == 'all'").iloc[0]
        return [row["numerator"], row["denominator"]]

    everything, nearby = con.execute(every_day), con.execute(near)
    assert retained(nearby) == retained(everything) == [3.0, 8.0]  # r1, r2, r6
    assert len(nearby) < len(everything)

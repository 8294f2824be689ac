"""Terminal events (`terminal_events`: account deleted, unsubscribed, withdrew): the user leaves
the onboarding population at once, counts as not activated once the window closes, and an
aha event after leaving is not an activation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import ibis
import numpy as np
import pandas as pd
import pytest

from onboarding_pipeline.activation.features import early_events, user_outcomes
from onboarding_pipeline.activation.funnel import build_funnel
from onboarding_pipeline.activation.kpis import onboarding_kpis, retention_activity
from onboarding_pipeline.activation.landmarks import expand_rows, landmark_population
from onboarding_pipeline.activation.model import in_flight
from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.config.data_checks import config_event_warnings
from onboarding_pipeline.config.engagement import Milestone, OnboardingPath
from onboarding_pipeline.config.product import KpiTargets
from onboarding_pipeline.engagement.activity import BACKTEST, ONBOARDING, people
from onboarding_pipeline.engagement.timeline import user_timeline_rows
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.tables import RAW_EVENTS, RAW_USERS

NOW = datetime(2026, 11, 30, tzinfo=UTC)
OLD = NOW - timedelta(days=30)  # window (14 days) closed
NEW = NOW - timedelta(days=5)  # window open
CONFIG = ProductConfig(
    aha_events=["dashboard_shared"], terminal_events=["account_deleted"], observation_hours=72
)
USERS = {
    # user: (signup, [(hours after signup, event)])
    "kept": (OLD, [(10, "dashboard_shared"), (20, "account_deleted")]),  # activated, then left
    "left_then_aha": (OLD, [(5, "account_deleted"), (30, "dashboard_shared")]),
    "left_open": (NEW, [(1, "project_created"), (2, "account_deleted")]),
    "open": (NEW, [(1, "project_created")]),
    "closed_quiet": (OLD, [(1, "project_created")]),
}


def outcomes_frame(
    config: ProductConfig = CONFIG,
) -> tuple[pd.DataFrame, ibis.Table, ibis.Table, ibis.Table]:
    users = ibis.memtable(
        pd.DataFrame(
            {
                "user_id": list(USERS),
                "signup_at": [signup for signup, _ in USERS.values()],
                **{c: [None] * len(USERS) for c in ("role", "company_size", "plan", "use_case")},
                "tech_savvy": [None] * len(USERS),
                "job_title": [None] * len(USERS),
            }
        ).astype({c: "string" for c in ("role", "company_size", "plan", "use_case", "job_title")})
    )
    rows = [
        (user, name, signup + timedelta(hours=hours))
        for user, (signup, steps) in USERS.items()
        for hours, name in steps
    ]
    events = ibis.memtable(
        pd.DataFrame(rows, columns=["user_id", "event_name", "timestamp"]).astype(
            {"timestamp": "datetime64[us, UTC]"}
        )
    )
    users = users.mutate(
        signup_at=users.signup_at.cast("timestamp('UTC')"),
        tech_savvy=users.tech_savvy.cast("float64"),
    )
    outcomes = user_outcomes(users, events, config, NOW)
    frame = ibis.duckdb.connect().execute(outcomes).set_index("user_id").loc[list(USERS)]
    return frame, outcomes, events, users


def test_an_aha_event_after_leaving_is_not_an_activation() -> None:
    frame, _, _, _ = outcomes_frame()
    assert frame.loc["kept", "label"] == 1 and pd.isna(frame.loc["kept", "terminated_at"])
    assert frame.loc["left_then_aha", "label"] == 0
    assert not frame.loc["left_then_aha", "activated"]
    assert pd.isna(frame.loc["left_then_aha", "activation_at"])
    assert frame.loc["left_then_aha", "terminated_at"] == OLD + timedelta(hours=5)


def test_a_user_who_left_is_unlabelled_until_the_window_closes_like_everyone() -> None:
    frame, _, _, _ = outcomes_frame()
    assert pd.isna(frame.loc["left_open", "label"])  # open windows are neither
    assert frame.loc["left_open", "terminated_at"] == NEW + timedelta(hours=2)
    assert pd.isna(frame.loc["open", "terminated_at"])


def test_without_terminal_events_nobody_leaves() -> None:
    frame, _, _, _ = outcomes_frame(ProductConfig(aha_events=["dashboard_shared"]))
    assert frame.terminated_at.isna().all()
    assert frame.loc["left_then_aha", "label"] == 1  # the aha counts when nothing is terminal


def test_users_who_left_are_not_onboarding_and_not_scored() -> None:
    frame, outcomes, _, users = outcomes_frame()
    who = people(outcomes, users, NOW, 72)
    populations = ibis.duckdb.connect().execute(who).set_index("user_id").population
    assert populations["open"] == ONBOARDING
    assert "left_open" not in populations.index  # neither onboarding nor judged yet
    assert populations["left_then_aha"] == BACKTEST

    positions, _ = in_flight(frame.reset_index(), pd.Timestamp(NOW))
    assert frame.index[positions].tolist() == ["open"]


def test_the_risk_set_at_an_age_drops_users_who_had_left_by_then() -> None:
    frame, _, _, _ = outcomes_frame()
    frame = frame.reset_index()
    before, after = landmark_population(frame, 3), landmark_population(frame, 24)
    left = frame.user_id == "left_then_aha"
    assert before[left.to_numpy()].all() and not after[left.to_numpy()].any()
    rows, ages = expand_rows(frame, [1.0, 3.0, 6.0, 24.0], eligible=left.to_numpy())
    assert ages.tolist() == [1.0, 3.0]  # stacked rows stop when the user left (hour 5)
    assert set(rows) == {int(np.flatnonzero(left)[0])}


def test_terminal_events_are_not_early_behaviour() -> None:
    _, outcomes, events, _ = outcomes_frame()
    early = ibis.duckdb.connect().execute(early_events(events, outcomes, CONFIG))
    assert "account_deleted" not in set(early.event_name)
    assert "project_created" in set(early.event_name)


def test_an_event_cannot_be_both_aha_and_terminal() -> None:
    with pytest.raises(ValueError, match="cannot both activate a user and end"):
        ProductConfig(aha_events=["x"], terminal_events=["x"])


def test_a_terminal_event_nobody_logged_yet_is_a_warning_not_an_error() -> None:
    warnings = config_event_warnings(CONFIG, {"dashboard_shared": 3, "account_delete": 1})
    assert [w.key for w in warnings] == ["terminal_events[0]"]
    assert warnings[0].closest == ("account_delete",)


def test_the_timeline_shows_leaving_and_an_aha_after_it_as_not_counted(
    warehouse: WarehouseResource,
) -> None:
    _, _, events, users = outcomes_frame()
    warehouse.replace_table(RAW_USERS.name, users.select("user_id", "signup_at"))
    warehouse.replace_table(RAW_EVENTS.name, events)
    who = ibis.memtable({"user_id": ["left_then_aha", "kept"]})
    rows = user_timeline_rows(
        warehouse, who, {}, CONFIG.aha_events, "default", terminal_events=CONFIG.terminal_events
    )
    left = rows[rows.user_id == "left_then_aha"]
    assert left.kind.tolist() == ["signup", "left", "activated"]
    assert left.detail.iloc[-1].endswith("after leaving: not counted")
    kept = rows[rows.user_id == "kept"]
    assert kept.kind.tolist() == ["signup", "activated", "left"]
    assert kept.detail.iloc[1] == "aha moment (dashboard_shared)"


def test_the_timeline_reads_leaving_first_at_the_same_instant_and_marks_later_steps(
    warehouse: WarehouseResource,
) -> None:
    """An aha logged at the very second of leaving does not count (as in `user_features`), so
    the timeline reads `left` first; a milestone after leaving says it does not count."""
    at = OLD + timedelta(hours=5)
    events = pd.DataFrame(
        {
            "user_id": ["same_second", "same_second", "steps_after", "steps_after"],
            "event_name": ["account_deleted", "dashboard_shared"] * 1
            + ["account_deleted", "project_created"],
            "timestamp": [at, at, at, at + timedelta(hours=2)],
        }
    ).astype({"timestamp": "datetime64[us, UTC]"})
    users = pd.DataFrame({"user_id": ["same_second", "steps_after"], "signup_at": [OLD, OLD]})
    warehouse.replace_table(
        RAW_USERS.name, ibis.memtable(users.astype({"signup_at": "datetime64[us, UTC]"}))
    )
    warehouse.replace_table(RAW_EVENTS.name, ibis.memtable(events))
    who = ibis.memtable({"user_id": ["same_second", "steps_after"]})
    rows = user_timeline_rows(
        warehouse,
        who,
        {
            "default": OnboardingPath(
                milestones=[
                    Milestone(
                        name="project",
                        label="Project created",
                        events=["project_created"],
                        due_day=1,
                    )
                ]
            )
        },
        CONFIG.aha_events,
        "default",
        terminal_events=CONFIG.terminal_events,
    )
    same = rows[rows.user_id == "same_second"]
    assert same.kind.tolist() == ["signup", "left", "activated"]
    assert same.detail.iloc[-1].endswith("after leaving: not counted")
    after = rows[rows.user_id == "steps_after"]
    assert after.kind.tolist() == ["signup", "left", "milestone"]
    assert after.detail.iloc[-1] == "Project created (project_created), after leaving: not counted"


def kpi_counts(
    users: pd.DataFrame,
    first_events: pd.DataFrame,
    activity: pd.DataFrame | None = None,
    **options: object,
) -> dict[str, tuple[float, float]]:
    """(numerator, denominator) of each ratio KPI over all signups, at NOW."""
    table = onboarding_kpis(
        users,
        first_events,
        activity if activity is not None else pd.DataFrame({"user_id": [], "day": []}),
        window_days=14,
        tiers_days=[7, 30],
        retention_days=30,
        onboarding_steps=["project_created"],
        targets=KpiTargets(),
        watermark=pd.Timestamp(NOW),
        **options,  # type: ignore[arg-type]
    )
    overall = table[table.signup_week == "all"].set_index("kpi")
    return {
        kpi: (row.numerator, row.denominator)
        for kpi, row in overall.iterrows()
        if row.numerator == row.numerator
    }


def firsts(rows: list[tuple[str, str, datetime]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "event_name", "first_at"]).astype(
        {"first_at": "datetime64[us, UTC]"}
    )


def test_kpis_count_no_aha_after_leaving() -> None:
    """`user_features` as the pipeline builds it: `left_then_aha` (left at hour 5, aha at
    hour 30) is no activation in any tier, though its raw first aha is within 7 days."""
    frame, _, _, _ = outcomes_frame()
    counts = kpi_counts(frame.reset_index(), firsts([]))
    # Eligible for 7 days and for the window: kept, left_then_aha, closed_quiet.
    assert counts["activation_rate"] == (1, 3)
    assert counts["activation_within_7d"] == (1, 3)  # kept only; the old code said 2


def test_kpis_read_leaving_after_the_window_from_terminal_events() -> None:
    """`terminated_at` stops at the window; a user who left on day 20 and did the aha event
    on day 25 is no activation within 30 days either, when the terminal events are given."""
    signup = NOW - timedelta(days=60)
    users = pd.DataFrame(
        {
            "user_id": ["late_leaver"],
            "signup_at": [signup],
            "first_aha_at": [signup + timedelta(days=25)],
            "activated": [False],
            "terminated_at": [pd.NaT],
        }
    )
    events = firsts([("late_leaver", "account_deleted", signup + timedelta(days=20))])
    assert kpi_counts(users, events)["activation_within_30d"] == (1, 1)  # leaving unknown
    with_leaving = kpi_counts(users, events, terminal_events=CONFIG.terminal_events)
    assert with_leaving["activation_within_30d"] == (0, 1)  # still in the denominator


def test_onboarding_steps_after_leaving_do_not_complete_onboarding() -> None:
    signup = NOW - timedelta(days=30)
    users = pd.DataFrame(
        {
            "user_id": ["done", "left_first"],
            "signup_at": [signup, signup],
            "first_aha_at": [pd.NaT, pd.NaT],
            "activated": [False, False],
            "terminated_at": [pd.NaT, signup + timedelta(hours=1)],
        }
    )
    steps = firsts(
        [
            ("done", "project_created", signup + timedelta(hours=2)),
            ("left_first", "project_created", signup + timedelta(hours=2)),
        ]
    )
    assert kpi_counts(users, steps)["onboarding_completion_rate"] == (1, 2)


def test_terminal_events_are_no_activity_for_retention() -> None:
    """Retention week = calendar days 30..36 after signup."""
    signup = datetime(2026, 9, 1, 12, tzinfo=UTC)
    day = timedelta(days=1)
    rows = [
        ("deleted_only", "account_deleted", signup + 31 * day),  # its only event that week
        ("active_then_left", "project_created", signup + 31 * day),
        ("active_then_left", "account_deleted", signup + 32 * day),
        ("left_then_active", "account_deleted", signup + 29 * day),
        ("left_then_active", "project_created", signup + 31 * day),
        ("stayed", "project_created", signup + 33 * day),
    ]
    ids = ["deleted_only", "active_then_left", "left_then_active", "stayed"]
    con = ibis.duckdb.connect()
    events = con.create_table(
        "events",
        pd.DataFrame(rows, columns=["user_id", "event_name", "timestamp"]).astype(
            {"timestamp": "datetime64[us, UTC]"}
        ),
    )
    people = pd.DataFrame({"user_id": ids, "signup_at": [signup] * 4}).astype(
        {"signup_at": "datetime64[us, UTC]"}
    )
    users = con.create_table("users", people)
    old_style = con.execute(retention_activity(events, users, 30))
    assert set(old_style.user_id) == set(ids)  # without terminal events everyone is active
    activity = con.execute(retention_activity(events, users, 30, CONFIG.terminal_events))
    assert sorted(activity.user_id) == ["active_then_left", "stayed"]
    outcomes = people.assign(first_aha_at=pd.NaT, activated=False)
    counts = kpi_counts(outcomes, firsts([]), activity, terminal_events=CONFIG.terminal_events)
    assert counts["retention_rate"] == (2, 4)


def test_funnel_steps_after_leaving_are_not_reached() -> None:
    signup = NOW - timedelta(days=30)
    users = pd.DataFrame(
        {
            "user_id": ["stayed", "left_between", "left_late"],
            "signup_at": [signup] * 3,
            "activated": [False] * 3,
            "terminated_at": pd.Series([pd.NaT] * 3, dtype="datetime64[us, UTC]"),
        }
    )
    hour = timedelta(hours=1)
    events = firsts(
        [
            *[(user, "project_created", signup + hour) for user in users.user_id],
            *[(user, "data_connected", signup + 3 * hour) for user in users.user_id],
            ("left_between", "account_deleted", signup + 2 * hour),
            ("left_late", "account_deleted", signup + 4 * hour),
        ]
    )
    steps = ["project_created", "data_connected"]

    def reached(**options: object) -> list[int]:
        table = build_funnel(users, events, steps, 14, pd.Timestamp(NOW), **options)  # type: ignore[arg-type]
        return table[table.segment_type == "overall"].users_reached.tolist()

    assert reached() == [3, 3]  # leaving unknown: the old count
    assert reached(terminal_events=CONFIG.terminal_events) == [3, 2]
    # `terminated_at` of user_features says the same without the terminal rows.
    users.loc[users.user_id == "left_between", "terminated_at"] = signup + 2 * hour
    assert reached() == [3, 2]

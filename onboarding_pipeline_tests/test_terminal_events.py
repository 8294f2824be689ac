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
from onboarding_pipeline.activation.landmarks import expand_rows, landmark_population
from onboarding_pipeline.activation.model import in_flight
from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.config.data_checks import config_event_warnings
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

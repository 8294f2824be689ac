"""Engagement: paths, health, stalls, the intervention queue with its ledger and holdout, and
measured effectiveness; on hand-made users and on the bundled sample with its planted truth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from onboarding_pipeline.config import ConfigError, ProductConfig, load_config
from onboarding_pipeline.config.engagement import (
    HealthRules,
    InterventionRules,
    Milestone,
    OnboardingPath,
    SegmentRule,
)
from onboarding_pipeline.config.product import InviteEvents
from onboarding_pipeline.engagement.health import (
    backtest,
    health_components,
    health_score,
    risk_level,
)
from onboarding_pipeline.engagement.paths import assign_paths, milestone_progress, next_milestones
from onboarding_pipeline.engagement.queue import build_queue, in_holdout
from onboarding_pipeline.engagement.stalls import detect_stalls
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline_tests.conftest import write

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)
ENGAGEMENT_ASSETS = {
    "milestone_progress",
    "health_scores",
    "stalled_users",
    "intervention_queue",
    "intervention_effectiveness",
    "nudges",
}
PATH = OnboardingPath(
    milestones=[
        Milestone(
            name="profile",
            events=["profile_completed"],
            started_by=["onboarding_started"],
            weight=1,
            due_day=1,
        ),
        Milestone(
            name="data",
            label="Connect a data source",
            events=["data_source_connected"],
            started_by=["integration_failed"],
            weight=2,
            due_day=3,
        ),
        Milestone(
            name="team", label="Invite your team", events=["teammate_invited"], weight=1, due_day=5
        ),
    ]
)
PATHS = {"standard": PATH}


def stamp(hours: float) -> pd.Timestamp:
    return pd.Timestamp(NOW) - pd.Timedelta(hours=hours)


def users_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["signup_at"] = pd.to_datetime(frame.signup_at, utc=True)
    frame["cutoff"] = pd.Timestamp(NOW)
    frame["path"] = "standard"
    return frame


def events_frame(rows: list[tuple[str, str, float, int]]) -> pd.DataFrame:
    """(user, event, hours ago of the first occurrence, count) -> per user and event."""
    frame = pd.DataFrame(rows, columns=["user_id", "event_name", "hours_ago", "n"])
    frame["first_at"] = [stamp(h) for h in frame.hours_ago]
    frame["last_at"] = frame.first_at
    return frame.drop(columns="hours_ago")


def test_paths_follow_the_first_matching_segment_rule() -> None:
    paths = {"admin": PATH, "engineer": PATH, "default": PATH}
    rules = [
        SegmentRule(path="admin", when={"role": ["admin"], "company_size": ["1000+"]}),
        SegmentRule(path="engineer", when={"role": ["engineer"]}),
        SegmentRule(path="default"),
    ]
    users = pd.DataFrame(
        {
            "role": ["admin", "admin", "engineer", None],
            "company_size": ["1000+", "1-10", "1000+", "11-50"],
        }
    )
    assert list(assign_paths(users, rules, paths)) == ["admin", "default", "engineer", "default"]


def test_milestone_progress_marks_done_on_time_and_next() -> None:
    users = users_frame(
        [{"user_id": "a", "signup_at": stamp(100)}, {"user_id": "b", "signup_at": stamp(10)}]
    )
    # a: profile at hour 2 (on time), data at day 4 (late, due day 3); b: nothing yet
    by_event = events_frame(
        [
            ("a", "profile_completed", 98, 1),
            ("a", "data_source_connected", 100 - 96, 1),
            ("b", "onboarding_started", 9, 1),
        ]
    )
    progress = milestone_progress(users, by_event, PATHS)
    a = progress[progress.user_id == "a"].set_index("milestone")
    assert list(a.completed) == [True, True, False]
    assert list(a.completed_on_time) == [True, False, False]
    assert list(a.is_next) == [False, False, True]
    b = progress[progress.user_id == "b"].set_index("milestone")
    assert b.loc["profile", "is_next"] and pd.notna(b.loc["profile", "started_at"])
    summary = next_milestones(progress).set_index("user_id")
    assert summary.loc["a", "milestone_completion"] == pytest.approx(3 / 4)
    assert summary.loc["b", "next_milestone"] == "profile"


def test_health_components_scores_and_risk_levels_on_hand_made_users() -> None:
    rules = HealthRules(
        adoption_events=[
            "profile_completed",
            "data_source_connected",
            "teammate_invited",
            "template_used",
        ],
        speed_half_life_hours=24,
    )
    users = users_frame(
        [
            {"user_id": "fast", "signup_at": stamp(48), "active_days": 2},
            {"user_id": "idle", "signup_at": stamp(48), "active_days": 1},
        ]
    )
    by_event = events_frame(
        [
            ("fast", "profile_completed", 48, 1),  # at signup: speed 1
            ("fast", "data_source_connected", 40, 1),
            ("fast", "teammate_invited", 30, 2),
            ("idle", "page_viewed", 47, 3),
        ]
    )
    progress = milestone_progress(users, by_event, PATHS)
    parts = health_components(users, by_event, progress, rules, PATHS).set_index("user_id")
    assert parts.loc["fast"].to_dict() == pytest.approx(
        {
            "activation_speed": 1.0,
            "feature_adoption": 0.75,
            "engagement_frequency": 1.0,
            "milestone_completion": 1.0,
        }
    )
    assert parts.loc["idle"].to_dict() == pytest.approx(
        {
            "activation_speed": 0.0,
            "feature_adoption": 0.0,
            "engagement_frequency": 0.5,
            "milestone_completion": 0.0,
        }
    )
    weights = rules.weights.model_dump()
    scores = health_score(parts, weights)
    # 100 * (0.25 * 1 + 0.30 * 0.75 + 0.20 * 1 + 0.25 * 1) and 100 * 0.20 * 0.5
    assert list(scores) == pytest.approx([92.5, 10.0])
    assert list(risk_level(np.array([10.0, 29.99, 30.0, 59.9, 60.0]), rules)) == [
        "high",
        "high",
        "medium",
        "medium",
        "low",
    ]
    custom = HealthRules(high_risk_below=20, medium_risk_below=50)
    assert list(risk_level(np.array([25.0, 55.0]), custom)) == ["medium", "low"]


def test_backtest_ranks_outcomes_and_reports_rates_by_risk() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    parts = pd.DataFrame(
        {
            c: rng.random(n)
            for c in (
                "activation_speed",
                "feature_adoption",
                "engagement_frequency",
                "milestone_completion",
            )
        }
    )
    # Outcome driven by adoption and completion only: fitted weights must find that.
    logit = -2 + 2.5 * parts.feature_adoption + 2.5 * parts.milestone_completion
    parts["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    parts["health_score"] = health_score(parts, HealthRules().weights.model_dump())
    parts["risk_level"] = risk_level(parts.health_score.to_numpy(), HealthRules())
    parts["activation_probability"] = np.where(
        np.arange(n) % 4 == 0, 1 / (1 + np.exp(-logit)), np.nan
    )
    parts["signup_at"] = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(
        np.arange(n), unit="h"
    )
    result = backtest(parts, HealthRules())
    assert 0.6 < result["health_auc_all_closed"]["auc"] < 0.8
    low, high = result["health_auc_all_closed"]["ci"]
    assert low < result["health_auc_all_closed"]["auc"] < high
    # The true probability ranks better than the configured weights on the same users.
    assert (
        result["model_auc_validation_users"]["auc"] > result["health_auc_validation_users"]["auc"]
    )
    assert result["model_auc_validation_users"]["users"] == n // 4 + (n % 4 > 0)
    rates = result["rates_by_risk"].set_index("risk_level")
    assert (
        rates.loc["high", "activation_rate"]
        < rates.loc["medium", "activation_rate"]
        < rates.loc["low", "activation_rate"]
    )
    fitted = result["fitted"]["weights"]
    assert fitted["feature_adoption"] + fitted["milestone_completion"] > 0.8
    assert (
        result["fitted"]["fitted_auc_test"]["auc"]
        >= result["fitted"]["configured_auc_test"]["auc"] - 0.01
    )


STALL_RULES = InterventionRules()
INVITES = InviteEvents()
CORE = ["profile_completed", "data_source_connected", "teammate_invited", "dashboard_created"]


def stall_case() -> tuple[pd.DataFrame, pd.DataFrame]:
    """One user per failure label, one active user and one stuck mid-step."""
    users = users_frame(
        [
            {"user_id": "blocked", "signup_at": stamp(200), "sessions": 3},
            {"user_id": "invites", "signup_at": stamp(200), "sessions": 3},
            {"user_id": "tour", "signup_at": stamp(200), "sessions": 2},
            {"user_id": "noshow", "signup_at": stamp(200), "sessions": 1},
            {"user_id": "other", "signup_at": stamp(200), "sessions": 4},
            {"user_id": "active", "signup_at": stamp(200), "sessions": 5},
            {"user_id": "midstep", "signup_at": stamp(60), "sessions": 2},
        ]
    )
    by_event = events_frame(
        [
            ("blocked", "profile_completed", 190, 1),
            ("blocked", "permission_error", 150, 2),
            ("invites", "profile_completed", 190, 1),
            ("invites", "teammate_invited", 150, 3),
            ("tour", "product_tour_completed", 150, 1),
            ("noshow", "page_viewed", 199, 2),
            ("other", "profile_completed", 190, 1),
            ("other", "dashboard_created", 100, 1),
            ("active", "profile_completed", 190, 1),
            ("active", "page_viewed", 5, 1),
            ("midstep", "profile_completed", 59, 1),
            ("midstep", "integration_failed", 30, 1),
            ("midstep", "page_viewed", 2, 4),
        ]
    )
    return users, by_event


def test_every_failure_label_is_reachable_with_evidence() -> None:
    users, by_event = stall_case()
    steps = next_milestones(milestone_progress(users, by_event, PATHS))
    stalls = detect_stalls(users, by_event, steps, STALL_RULES, INVITES, CORE, NOW).set_index(
        "user_id"
    )
    assert stalls.failure_label.fillna("not stalled").to_dict() == {
        "blocked": "access_block",
        "invites": "invite_failure",
        "tour": "generic_tour_trap",
        "noshow": "no_show",
        "other": "other",
        "active": "not stalled",
        "midstep": "other",
    }
    assert not stalls.loc["active", "stalled"]
    assert stalls.loc["midstep", "stall_kind"] == "step_incomplete"
    assert stalls.loc["blocked", "stall_kind"] == "inactive"
    assert "2 permission error(s)" in stalls.loc["blocked", "evidence"]
    assert "3 invitation(s) sent, none accepted" in stalls.loc["invites", "evidence"]
    assert "Connect a data source" in stalls.loc["midstep", "evidence"]
    assert stalls.loc["other", "last_event_name"] == "dashboard_created"
    assert stalls.loc["other", "current_step"] == "data"
    assert stalls.loc["blocked", "hours_inactive"] == pytest.approx(150)


def test_stall_evidence_does_not_depend_on_row_order_when_times_tie() -> None:
    """Date-only data ties last events: the same input in any order names the same one."""
    users, by_event = stall_case()
    tied = by_event.assign(last_at=by_event.groupby("user_id").last_at.transform("max"))
    steps = next_milestones(milestone_progress(users, by_event, PATHS))
    names = [
        detect_stalls(users, order, steps, STALL_RULES, INVITES, CORE, NOW)
        .set_index("user_id")
        .last_event_name
        for order in (tied, tied.iloc[::-1], tied.sample(frac=1, random_state=3))
    ]
    assert names[0].equals(names[1]) and names[0].equals(names[2])


def queue_inputs() -> pd.DataFrame:
    users, by_event = stall_case()
    steps = next_milestones(milestone_progress(users, by_event, PATHS))
    stalls = detect_stalls(users, by_event, steps, STALL_RULES, INVITES, CORE, NOW)
    frame = stalls.assign(
        health_score=[10.0, 20.0, 25.0, 5.0, 40.0, 80.0, 50.0],
        risk_level=["high", "high", "high", "high", "medium", "low", "medium"],
        activation_probability=[0.1, 0.3, 0.2, 0.05, 0.4, 0.8, np.nan],
        first_name="Ada",
        role="analyst",
        company="Acme",
    )
    return frame


def run_queue(
    history: pd.DataFrame, now: datetime, rules: InterventionRules = STALL_RULES
) -> pd.DataFrame:
    return build_queue(queue_inputs(), history, rules, PATHS, now, {}, "Share a dashboard", "en")


def as_ledger(queue: pd.DataFrame) -> pd.DataFrame:
    return queue.assign(outcome=None, outcome_at=pd.NaT)


def test_queue_names_one_next_action_channel_and_owner_per_user() -> None:
    # No holdout here: held-out rows have no channel (see the next test).
    queue = run_queue(pd.DataFrame(), NOW, InterventionRules(holdout_fraction=0.0))
    queue = queue.set_index("user_id")
    assert not queue.index.duplicated().any()
    assert "active" not in queue.index  # low risk, not stalled
    assert queue.loc["blocked", "channel"] == "human"  # access problems go to a person
    assert queue.loc["blocked", "owner"] == "support"
    assert queue.loc["blocked", "next_action"].startswith("Get the access you need")
    assert queue.loc["invites", "next_action"].startswith("Re-send your teammate invitations")
    assert queue.loc["other", "next_action"] == "Connect a data source"  # next milestone
    assert queue.loc["noshow", "intervention_type"] == "urgent"  # p 0.05 on day 8
    assert queue.loc["midstep", "intervention_type"] == "guide"  # day 2.5
    assert queue.loc["midstep", "channel"] == "in_app"  # early: in-app
    assert queue.loc["other", "channel"] == "email"  # day 8: email
    assert (queue.escalation_step == 1).all()
    assert "no activity for" in queue.loc["other", "reason"]
    assert queue.priority.is_monotonic_decreasing
    assert queue.loc["noshow", "priority"] == pytest.approx(0.05 * 0.95)
    treated = queue[~queue.holdout]
    assert treated.message.str.contains("Ada").all()


def test_held_out_users_reach_no_channel_and_no_owner() -> None:
    """Control means control: not even the access-blocked user goes to a person."""
    everyone_held = InterventionRules(holdout_fraction=0.999, cooldown_days=3)
    queue = run_queue(pd.DataFrame(), NOW, everyone_held).set_index("user_id")
    assert queue.holdout.all()
    assert (queue.channel == "none").all() and (queue.owner == "none").all()
    assert queue.message.isna().all()
    # The same users without a holdout: the blocked one goes to support.
    treated = run_queue(pd.DataFrame(), NOW, InterventionRules(holdout_fraction=0.0))
    assert treated.set_index("user_id").loc["blocked", "owner"] == "support"


def test_cooldown_and_escalation_across_runs() -> None:
    rules = InterventionRules(holdout_fraction=0.0, cooldown_days=3)
    first = run_queue(pd.DataFrame(), NOW, rules)
    history = as_ledger(first)
    # A rerun the same day ignores today's own entries: the same queue.
    pd.testing.assert_frame_equal(run_queue(history, NOW, rules), first)
    # Two days later: everyone is in cooldown.
    assert run_queue(history, NOW + timedelta(days=2), rules).empty
    # Four days later: the same action escalates one step up the ladder.
    later = run_queue(history, NOW + timedelta(days=4), rules).set_index("user_id")
    assert (later.escalation_step == 2).all()
    assert "blocked" not in later.index  # already handed to a human for this action
    assert later.loc["invites", "channel"] == "email"
    history = pd.concat([history, as_ledger(later.reset_index())])
    third = run_queue(history, NOW + timedelta(days=8), rules).set_index("user_id")
    assert (third.escalation_step == 3).all() and (third.channel == "human").all()
    history = pd.concat([history, as_ledger(third.reset_index())])
    # The ladder is exhausted: nobody is sent the same step again.
    assert run_queue(history, NOW + timedelta(days=12), rules).empty


def test_holdout_is_a_stable_share_of_eligible_users() -> None:
    ids = [f"u{i:06d}" for i in range(20000)]
    first = in_holdout(ids, "exp-a", 0.10)
    assert abs(first.mean() - 0.10) < 0.01
    assert (in_holdout(ids, "exp-a", 0.10) == first).all()  # stable across runs
    other = in_holdout(ids, "exp-b", 0.10)
    assert 0.005 < (first & other).mean() < 0.02  # independent across experiments
    assert not in_holdout(ids, "exp-a", 0.0).any()


def test_ledger_is_append_only_and_outcomes_are_filled_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'w.duckdb'}")
    queue = run_queue(pd.DataFrame(), NOW)
    rows = pa.Table.from_pandas(
        as_ledger(queue).astype({"outcome": "string"}), preserve_index=False
    )
    keys = ["queued_on", "user_id", "experiment"]
    assert warehouse.insert_missing("intervention_ledger", rows, keys) == len(queue)
    assert warehouse.insert_missing("intervention_ledger", rows, keys) == 0  # rerun adds nothing
    outcomes = pa.table(
        {
            "user_id": ["blocked"],
            "outcome": ["activated"],
            "outcome_at": pa.array([NOW], pa.timestamp("us", tz="UTC")),
        }
    )
    warehouse.update_where_null(
        "intervention_ledger", outcomes, "user_id", ["outcome", "outcome_at"]
    )
    again = pa.table(
        {"user_id": ["blocked"], "outcome": ["not_activated"], "outcome_at": outcomes["outcome_at"]}
    )
    warehouse.update_where_null("intervention_ledger", again, "user_id", ["outcome", "outcome_at"])
    ledger = warehouse.execute(warehouse.table("intervention_ledger")).set_index("user_id")
    assert len(ledger) == len(queue)
    assert ledger.loc["blocked", "outcome"] == "activated"  # set once, never overwritten
    assert ledger.outcome.notna().sum() == 1
    warehouse.close()


def test_engagement_config_errors_name_the_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write(
        tmp_path,
        "onboarding.yaml",
        """
        aha_events: [shared]
        segments:
          - path: missing_path
        paths:
          standard:
            milestones: [{name: a, events: [x]}]
        """,
    )
    with pytest.raises(ConfigError, match=r"segments\[0\] names path 'missing_path'"):
        load_config(path)
    path.write_text(
        "aha_events: [s]\nsegments: [{path: p, when: {shoe_size: [42]}}]\npaths: {p: {milestones: [{name: a, events: [x]}]}}\n"
    )
    with pytest.raises(ConfigError, match="shoe_size"):
        load_config(path)
    path.write_text(
        "aha_events: [s]\nhealth: {weights: {activation_speed: 0, feature_adoption: 0, engagement_frequency: 0, milestone_completion: 0}}\n"
    )
    with pytest.raises(ConfigError, match=r"health\.weights"):
        load_config(path)


def test_without_paths_the_funnel_is_the_default_path() -> None:
    config = ProductConfig(aha_events=["shared"], funnel_steps=["start", "connect", "shared"])
    paths = config.onboarding_paths()
    assert list(paths) == ["standard"]
    assert [m.name for m in paths["standard"].milestones] == ["start", "connect", "shared"]


@pytest.fixture(scope="module")
def sample_run(sample_pipeline_run, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A writable copy of the session's run of the whole pipeline on the bundled sample (as
    `onboarding-pipeline run` does it): these tests rerun assets on it, the shared run stays
    as it was."""
    import shutil

    from onboarding_pipeline_tests.test_definitions import sample_settings

    copy = tmp_path_factory.mktemp("engagement_run")
    shutil.copytree(sample_pipeline_run.settings.output_dir, copy, dirs_exist_ok=True)
    settings = sample_settings(copy)
    warehouse = WarehouseResource(url=settings.warehouse_url)
    yield settings, sample_pipeline_run.summary, warehouse
    warehouse.close()


def test_sample_queue_is_unique_labelled_and_its_high_risk_users_activate_far_less(
    sample_run,  # type: ignore[no-untyped-def]
) -> None:
    from onboarding_pipeline.settings import SAMPLE_DATA_DIR

    _, summary, warehouse = sample_run
    assert not set(summary.failures) & ENGAGEMENT_ASSETS, summary.failures
    health = warehouse.execute(warehouse.table("health_scores"))
    queue = warehouse.execute(warehouse.table("intervention_queue"))
    stalls = warehouse.execute(warehouse.table("stalled_users"))
    onboarding = health[health.population == "onboarding"]
    assert len(queue) > 50 and not queue.user_id.duplicated().any()
    assert set(queue.user_id) <= set(onboarding.user_id)
    assert set(stalls.failure_label.dropna()) >= {"access_block", "no_show", "other"}
    # Back-test on closed windows (outcomes observed): scored as of the early horizon.
    past = health[health.population == "backtest"]
    high = past.risk_level == "high"
    assert past.label[high].mean() < 0.5 * past.label[~high].mean()
    # Planted truth for users still onboarding: the eventual draw of the generator.
    truth = pd.read_csv(SAMPLE_DATA_DIR / "truth" / "users.csv").set_index("user_id")
    will_activate = truth.planted_activator & ~truth.late_activator
    outcome = onboarding.user_id.map(will_activate).astype(float)
    is_high = (onboarding.risk_level == "high").to_numpy()
    assert outcome[is_high].mean() < 0.6 * outcome[~is_high].mean()
    nudges = warehouse.execute(warehouse.table("nudges"))
    assert set(nudges.user_id) == set(queue.user_id[~queue.holdout])
    assert (nudges.message_source == "template").all()  # no ANTHROPIC_API_KEY in tests


def test_sample_rerun_of_the_day_adds_no_ledger_rows(sample_run) -> None:  # type: ignore[no-untyped-def]
    from dagster import AssetKey, DagsterInstance

    from onboarding_pipeline.code_location import build_definitions

    settings, _, warehouse = sample_run
    before = warehouse.execute(warehouse.table("intervention_ledger"))
    queue_before = warehouse.execute(warehouse.table("intervention_queue"))
    warehouse.close()
    defs = build_definitions(settings)
    job = defs.resolve_implicit_global_asset_job_def()
    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            instance=instance, asset_selection=[AssetKey("intervention_queue")]
        )
        assert result.success
        metadata = result.asset_materializations_for_node("intervention_queue")[0].metadata
        assert metadata["ledger_rows_added"].value == 0
    after = warehouse.execute(warehouse.table("intervention_ledger"))
    assert len(after) == len(before) == len(queue_before)
    queue_after = warehouse.execute(warehouse.table("intervention_queue"))
    assert sorted(queue_after.user_id) == sorted(queue_before.user_id)


def test_nudges_asset_uses_the_real_anthropic_client_then_its_cache(
    sample_run,  # type: ignore[no-untyped-def]
    httpserver,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dagster import AssetKey, DagsterInstance

    from onboarding_pipeline.code_location import build_definitions
    from onboarding_pipeline_tests.test_nudge_writer import message_json

    settings, _, warehouse = sample_run
    text = "Hi there, connect your data source today and your first dashboard fills itself in."
    httpserver.expect_request("/v1/messages", method="POST").respond_with_json(message_json(text))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-not-real")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", httpserver.url_for("/").rstrip("/"))
    queue = warehouse.execute(warehouse.table("intervention_queue"))
    treated = int((~queue.holdout).sum())
    warehouse.close()
    defs = build_definitions(settings)
    job = defs.resolve_implicit_global_asset_job_def()
    with DagsterInstance.ephemeral() as instance:
        assert job.execute_in_process(
            instance=instance, asset_selection=[AssetKey("nudges")]
        ).success
        nudges = warehouse.execute(warehouse.table("nudges"))
        budget = min(treated, 200)  # interventions.nudges.max_calls_per_run
        assert (nudges.message_source == "llm").sum() == budget
        assert (nudges.message[nudges.message_source == "llm"] == text).all()
        over = nudges[nudges.message_source == "template"]
        assert len(over) == treated - budget and over.note.str.contains("budget").all()
        assert len(httpserver.log) == budget
        bodies = [request.get_data(as_text=True) for request, _ in httpserver.log]
        assert not any("@" in body for body in bodies)  # no email address reaches the LLM
        assert all(
            r.headers["Authorization"] == "Bearer test-key-not-real" for r, _ in httpserver.log
        )
        # A rerun asks only for what the budget left out: the rest comes from the cache.
        assert job.execute_in_process(
            instance=instance, asset_selection=[AssetKey("nudges")]
        ).success
    assert len(httpserver.log) == treated
    again = warehouse.execute(warehouse.table("nudges"))
    assert (again.message_source == "cache").sum() == budget
    assert (again.message_source == "llm").sum() == treated - budget

"""Engagement and the weekly report on degenerate data: no accepted model (probabilities NULL),
only `aha_events` configured, nobody onboarding, zero rows everywhere."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ibis
import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.config.engagement import InterventionRules
from onboarding_pipeline.engagement.paths import UBIQUITOUS_SHARE, choose_paths
from onboarding_pipeline.engagement.queue import build_queue
from onboarding_pipeline.engagement.stalls import detect_stalls
from onboarding_pipeline.runner import RunSummary, run_pipeline
from onboarding_pipeline.settings import Settings, default_warehouse_url
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline_tests.conftest import write
from onboarding_pipeline_tests.test_engagement import (
    ENGAGEMENT_ASSETS,
    INVITES,
    NOW,
    PATHS,
    STALL_RULES,
    queue_inputs,
)

ENGAGEMENT_AND_REPORT = ENGAGEMENT_ASSETS | {"weekly_report", "report_deliveries"}
START = datetime(2026, 9, 1, tzinfo=UTC)


# ---------------------------------------------------------------- rules without a model


def test_without_probabilities_type_comes_from_health_and_days_priority_from_health() -> None:
    users = queue_inputs().assign(activation_probability=np.nan)
    queue = build_queue(
        users, pd.DataFrame(), STALL_RULES, PATHS, NOW, {}, "Share a dashboard", "en"
    ).set_index("user_id")
    rules = InterventionRules()
    # day 8, high risk -> urgent (no probability needed); day 8, medium -> nudge; day 2.5 -> guide
    assert queue.loc["noshow", "intervention_type"] == "urgent"
    assert queue.loc["blocked", "intervention_type"] == "urgent"
    assert queue.loc["other", "intervention_type"] == "nudge"
    assert queue.loc["midstep", "intervention_type"] == "guide"
    # priority = assumed uplift x (1 - health / 100): the lowest health comes first.
    expected = rules.assumed_uplift * (1 - queue.health_score / 100)
    assert queue.priority.to_numpy() == pytest.approx(expected.round(4).to_numpy())
    assert queue.index[0] == "noshow"  # health 5
    assert queue.activation_probability.isna().all()
    assert "activation probability" not in " ".join(queue.reason.fillna(""))


def test_stalls_with_nobody_onboarding_are_zero_typed_rows() -> None:
    users = pd.DataFrame(columns=["user_id", "path", "signup_at", "sessions"])
    by_event = pd.DataFrame(columns=["user_id", "event_name", "n", "first_at", "last_at"])
    steps = pd.DataFrame(
        columns=["user_id", "next_milestone", "next_milestone_label", "next_started_at"]
    )
    table = detect_stalls(users, by_event, steps, STALL_RULES, INVITES, [], NOW)
    assert table.empty and table.stalled.dtype == bool
    assert table[table.stalled].empty  # filtering by the flag works on zero rows


# ---------------------------------------------------------------- default paths


def reach(rows: list[tuple[str, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["event_name", "users", "mean_hours"])


def test_with_only_aha_events_the_path_is_derived_from_common_early_events() -> None:
    config = ProductConfig(aha_events=["dashboard_shared"])
    early = reach(
        [
            ("signed_up", 100, 0.0),  # everyone: separates nobody
            ("dashboard_shared", 40, 60.0),  # the aha event is the goal, not a step
            ("report_viewed", 50, 30.0),
            ("project_created", 80, 1.0),
            ("template_used", 30, 50.0),
            ("teammate_invited", 20, 20.0),
            ("exported", 10, 5.0),
            ("rare", 2, 3.0),
        ]
    )
    choice = choose_paths(config, early, users=100)
    assert choice.source == "data"
    names = [m.name for m in choice.paths["standard"].milestones]
    # The five events most users do, in the order they are done, then the aha event.
    assert names == [
        "project_created",
        "exported",
        "teammate_invited",
        "report_viewed",
        "template_used",
        "dashboard_shared",
    ]
    assert choice.note is not None
    assert "project_created (80%)" in choice.note and "signed_up" in choice.note
    assert "Set `paths`" in choice.note
    assert UBIQUITOUS_SHARE == 0.95


def test_configured_paths_and_funnel_steps_win_over_data() -> None:
    early = reach([("project_created", 80, 1.0)])
    funnel = ProductConfig(aha_events=["shared"], funnel_steps=["start", "shared"])
    choice = choose_paths(funnel, early, 100)
    assert choice.source == "funnel_steps"
    assert [m.name for m in choice.paths["standard"].milestones] == ["start", "shared"]
    assert choose_paths(funnel, None, 0).source == "funnel_steps"
    bare = ProductConfig(aha_events=["shared"])
    # No early events at all (an empty window): the aha event alone, said so.
    empty = choose_paths(bare, reach([]), 0)
    assert empty.source == "aha_only" and "no early events" in (empty.note or "")


# ---------------------------------------------------------------- real runs


def write_export(data_dir: Path, config: str) -> None:
    """40 users, one signup a day; everyone signs up, most create a project, some view a
    report, use a template or invite; every third of the first 30 shares a dashboard (aha);
    every fifth does nothing after signing up."""
    users = ["user_id,signup_at,role"]
    events = ["event_id,user_id,event_name,timestamp"]
    for i in range(40):
        signup = START + timedelta(days=i)
        users.append(f"u{i:02d},{signup.isoformat()},{'admin' if i % 2 else 'analyst'}")
        steps = [(0.1, "signed_up")]
        if i % 5:
            steps.append((1, "project_created"))
            steps += [(30, "report_viewed")] if i % 2 == 0 else []
            steps += [(50, "template_used")] if i % 3 == 0 else []
            steps += [(20, "teammate_invited")] if i % 7 == 0 else []
            steps += [(80, "dashboard_shared")] if i % 3 == 0 and i < 30 else []
        for hours, name in steps:
            at = signup + timedelta(hours=hours)
            events.append(f"e{len(events)},u{i:02d},{name},{at.isoformat()}")
    write(data_dir, "users.csv", "\n".join(users) + "\n")
    write(data_dir, "events.csv", "\n".join(events) + "\n")
    write(data_dir, "onboarding.yaml", config)


@dataclass
class Run:
    settings: Settings
    summary: RunSummary
    warehouse: WarehouseResource
    metadata: dict[str, dict[str, object]]


def run_export(root: Path, config: str) -> Iterator[Run]:
    data_dir, output = root / "data", root / "out"
    write_export(data_dir, config)
    settings = Settings(
        data_dir, data_dir / "onboarding.yaml", default_warehouse_url(output), output
    )
    with pytest.MonkeyPatch.context() as patch:
        for name in ("DAGSTER_HOME", "SLACK_BOT_TOKEN", "SMTP_HOST", "ANTHROPIC_API_KEY"):
            patch.delenv(name, raising=False)
        summary = run_pipeline(settings, echo=lambda line: None)
    metadata: dict[str, dict[str, object]] = {}
    with DagsterInstance.from_config(str(output / "dagster_home")) as instance:
        for name in ENGAGEMENT_AND_REPORT:
            event = instance.get_latest_materialization_event(AssetKey(name))
            if event is not None and event.asset_materialization is not None:
                metadata[name] = {
                    k: v.value for k, v in event.asset_materialization.metadata.items()
                }
    warehouse = WarehouseResource(url=settings.warehouse_url)
    yield Run(settings, summary, warehouse, metadata)
    warehouse.close()


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Only `aha_events` (and a misspelt invite event) configured; 40 users, far fewer closed
    windows than the model needs: the model is refused."""
    yield from run_export(
        tmp_path_factory.mktemp("refused"),
        """
        aha_events: [dashboard_shared]
        partitions_start_date: 2026-09-01
        invite_events:
          sent: [teammate_invite]
        """,
    )


def test_a_refused_model_silences_nothing(refused: Run) -> None:
    failed = set(refused.summary.failures)
    assert not failed & (ENGAGEMENT_AND_REPORT | {"activation_model", "activation_scores"})
    warehouse = refused.warehouse
    scores = warehouse.execute(warehouse.table("activation_scores"))
    onboarding = scores[scores.population == "onboarding"]
    assert len(onboarding) > 5
    assert onboarding.activation_probability.isna().all()
    health = warehouse.execute(warehouse.table("health_scores"))
    current = health[health.population == "onboarding"]
    assert set(current.user_id) == set(onboarding.user_id)
    queue = warehouse.execute(warehouse.table("intervention_queue")).set_index("user_id")
    assert len(queue) and queue.activation_probability.isna().all()
    # Rules: the idle users (health high risk, at least 5 days in) are urgent.
    idle = queue[queue.risk_level == "high"]
    days = current.set_index("user_id").days_since_signup
    assert len(idle) and (idle.intervention_type[days[idle.index] >= 5] == "urgent").all()
    assert queue.priority.to_numpy() == pytest.approx(
        (0.05 * (1 - queue.health_score / 100)).round(4).to_numpy()
    )
    nudges = warehouse.execute(warehouse.table("nudges"))
    assert set(nudges.user_id) == set(queue.index[~queue.holdout])
    for name in ("health_scores", "intervention_queue"):
        meta = refused.metadata[name]
        assert meta["scoring"] == "rules"
        assert "min_training_users" in str(meta["what_would_unlock_the_model"])
    assert "intervention_effectiveness" in refused.metadata


def test_with_only_aha_events_health_uses_paths_derived_from_the_data(refused: Run) -> None:
    health = refused.warehouse.execute(refused.warehouse.table("health_scores"))
    current = health[health.population == "onboarding"]
    # Before: every component 0 and every user "high risk". Now the active users score.
    assert current.feature_adoption.max() > 0 and current.milestone_completion.max() > 0
    assert set(current.risk_level) != {"high"}
    busy = current[current.feature_adoption > 0].health_score.mean()
    idle = current[current.feature_adoption == 0].health_score.mean()
    assert busy > idle
    meta = refused.metadata["health_scores"]
    assert meta["paths_source"] == "data"
    milestones = meta["default_path_milestones"]
    assert milestones[0] == "project_created" and milestones[-1] == "dashboard_shared"
    assert "signed_up" not in milestones  # done by everyone
    assert "derived from the data" in str(meta["paths_note"])
    assert refused.metadata["milestone_progress"]["paths_source"] == "data"


def test_misspelt_invite_event_is_a_warning_naming_the_closest_name(refused: Run) -> None:
    warnings = refused.metadata["stalled_users"]["config_warnings"]
    assert warnings == [
        "invite_events.sent[0]: 'teammate_invite' never occurs in raw_events; closest "
        "observed event names: 'teammate_invited'"
    ]
    notes = refused.metadata["stalled_users"]["default_events_not_in_data"]
    assert any("interventions.stall.permission_events[0]: 'permission_error'" in n for n in notes)


def test_report_and_summary_say_what_would_unlock_the_model(refused: Run) -> None:
    reports = refused.settings.output_dir / "reports"
    (week,) = [p.name for p in reports.iterdir()]
    markdown = (reports / week / "report.md").read_text()
    html = (reports / week / "report.html").read_text()
    unlock = "need 200 users with a closed activation window"
    for text in (markdown, html):
        assert "Not enough data yet: no activation model has been accepted yet: " in text
        assert unlock in text
        assert "come from the health score and days since signup" in text
    lines = "\n".join(refused.summary.lines())
    assert (
        f"model sections:     Not enough data yet: no activation model has been accepted yet: {unlock}"
        in lines
    )
    assert "lower `model.min_training_users` or wait for more signups" in lines
    assert "engagement judged:  rules: health score and days since signup" in lines


@pytest.fixture(scope="module")
def nobody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The same export read long after every window closed: nobody is onboarding."""
    yield from run_export(
        tmp_path_factory.mktemp("nobody"),
        """
        aha_events: [dashboard_shared]
        partitions_start_date: 2026-09-01
        as_of: 2026-12-31T00:00:00Z
        paths:
          standard:
            milestones:
              - {name: project, events: [project_creatd]}
              - {name: report, events: [report_viewed]}
        """,
    )


def test_nobody_onboarding_builds_every_engagement_asset_and_the_report(nobody: Run) -> None:
    assert not set(nobody.summary.failures) & ENGAGEMENT_AND_REPORT, nobody.summary.failures
    warehouse = nobody.warehouse
    for table in ("stalled_users", "intervention_queue", "milestone_progress", "nudges"):
        assert warehouse.execute(warehouse.table(table).count()) == 0, table
        assert nobody.metadata[table]["dagster/row_count"] == 0
    assert nobody.metadata["stalled_users"]["preview"] == "_nobody onboarding_"
    assert "intervention_effectiveness" in nobody.metadata
    health = warehouse.execute(warehouse.table("health_scores"))
    assert (health.population == "backtest").all() and len(health) == 40
    warnings = nobody.metadata["milestone_progress"]["config_warnings"]
    assert warnings == [
        "paths.standard.milestones[0].events[0]: 'project_creatd' never occurs in raw_events; "
        "closest observed event names: 'project_created'"
    ]
    reports = nobody.settings.output_dir / "reports"
    markdown = next(reports.glob("*/report.md")).read_text()
    assert "Not enough data yet: nobody is onboarding right now" in markdown


# ---------------------------------------------------------------- zero rows


def test_zero_rows_everywhere_engagement_and_report_succeed(tmp_path: Path) -> None:
    """Every input table exists and is empty (a fresh install after a quiet first day)."""
    from onboarding_pipeline.code_location import build_definitions

    data_dir = tmp_path / "data"
    write(data_dir, "onboarding.yaml", "aha_events: [shared]\npartitions_start_date: 2026-09-01\n")
    write(data_dir, "users.csv", "user_id,signup_at\n")
    write(data_dir, "events.csv", "user_id,event_name,timestamp\n")
    settings = Settings(
        data_dir, data_dir / "onboarding.yaml", default_warehouse_url(tmp_path), tmp_path
    )
    warehouse = WarehouseResource(url=settings.warehouse_url)
    features = ibis.schema(
        {
            "user_id": "string",
            "signup_at": "timestamp('UTC')",
            "label": "float64",
            "window_closed": "boolean",
            "activation_at": "timestamp('UTC')",
        }
    )
    warehouse.connect().create_table("user_features", schema=features, database="onboarding")
    warehouse.close()
    defs = build_definitions(settings)
    job = defs.resolve_implicit_global_asset_job_def()
    engagement = sorted(ENGAGEMENT_ASSETS)
    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            instance=instance, asset_selection=[AssetKey(n) for n in engagement]
        )
        assert result.success
        for name in engagement:
            (materialization,) = result.asset_materializations_for_node(name)
            assert materialization.metadata["dagster/row_count"].value == 0, name
        report = job.execute_in_process(
            instance=instance,
            asset_selection=[AssetKey("weekly_report")],
            partition_key="2026-10-26",
        )
        assert report.success
    markdown = (tmp_path / "reports" / "2026-10-26" / "report.md").read_text()
    assert markdown.count("Not enough data yet") >= 8


def _postgres_reachable() -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", 5432)) == 0


@pytest.mark.parametrize("engine", ["duckdb", "postgresql"])
def test_early_event_reach_runs_in_the_warehouse(engine: str, tmp_path: Path) -> None:
    """What default paths are derived from: users per event in their first hours, and when."""
    import pyarrow as pa

    from onboarding_pipeline.engagement.activity import early_event_reach

    if engine == "postgresql" and not _postgres_reachable():
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    con = (
        ibis.duckdb.connect(str(tmp_path / "w.duckdb"))
        if engine == "duckdb"
        else ibis.postgres.connect(host="127.0.0.1", port=5432, user="postgres", database="test")
    )
    ts = pa.timestamp("us", tz="UTC")
    features = pa.table(
        {"user_id": ["a", "b"], "signup_at": pa.array([START, START + timedelta(days=1)], ts)}
    )
    rows = [
        ("a", "created", START + timedelta(hours=1)),
        ("a", "created", START + timedelta(hours=2)),  # only the first counts
        ("b", "created", START + timedelta(days=1, hours=3)),
        ("b", "viewed", START + timedelta(days=1, hours=80)),  # after the horizon
        ("a", "viewed", START - timedelta(hours=1)),  # before signup
    ]
    events = pa.table(
        {
            "user_id": [r[0] for r in rows],
            "event_name": [r[1] for r in rows],
            "timestamp": pa.array([r[2] for r in rows], ts),
        }
    )
    f = con.create_table("reach_features", features, temp=True, overwrite=True)
    e = con.create_table("reach_events", events, temp=True, overwrite=True)
    result = con.to_pyarrow(early_event_reach(f, e, 72)).to_pandas().set_index("event_name")
    con.disconnect()
    assert list(result.index) == ["created"]
    assert result.loc["created", "users"] == 2
    assert result.loc["created", "mean_hours"] == pytest.approx(2.0)


def test_users_without_a_single_event_are_not_all_messaged(tmp_path: Path) -> None:
    """A header-only events export next to a real users file looks like a product nobody
    touched: nobody is queued (else every user would get a nudge) and the summary says why."""
    data_dir = tmp_path / "data"
    write(data_dir, "onboarding.yaml", "aha_events: [shared]\npartitions_start_date: 2026-10-01\n")
    signups = "".join(f"u{i},2026-10-{10 + i:02d}T09:00:00Z\n" for i in range(6))
    write(data_dir, "users.csv", "user_id,signup_at\n" + signups)
    write(data_dir, "events.csv", "user_id,event_name,timestamp\n")
    settings = Settings(
        data_dir, data_dir / "onboarding.yaml", default_warehouse_url(tmp_path), tmp_path
    )
    with pytest.MonkeyPatch.context() as patch:
        for name in ("DAGSTER_HOME", "SLACK_BOT_TOKEN", "SMTP_HOST", "ANTHROPIC_API_KEY"):
            patch.delenv(name, raising=False)
        summary = run_pipeline(settings, echo=lambda line: None)
    assert not summary.failures, summary.failures
    warehouse = WarehouseResource(url=settings.warehouse_url)
    try:
        assert int(warehouse.execute(warehouse.table("intervention_queue").count())) == 0
    finally:
        warehouse.close()
    lines = "\n".join(summary.lines())
    assert "warning: no events at all for 6 users still onboarding: nobody is queued" in lines

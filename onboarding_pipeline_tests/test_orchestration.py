"""Jobs, schedules and sensors evaluated against real definitions, data files and instances."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    Definitions,
    RunRequest,
    SkipReason,
    WeeklyPartitionsDefinition,
    asset,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
    define_asset_job,
    instance_for_test,
)
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from onboarding_pipeline.code_location import build_definitions
from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.ingestion.sources import FileSource
from onboarding_pipeline.orchestration import REFRESH_GROUPS, report_timezone
from onboarding_pipeline.orchestration.jobs import DAILY_REFRESH_JOB, REFRESH_TAG
from onboarding_pipeline.orchestration.schedules import (
    build_weekly_report_schedule,
    daily_partition_range,
)
from onboarding_pipeline.orchestration.sensors import RunFailure, failure_message
from onboarding_pipeline.partitions import event_partitions
from onboarding_pipeline.reporting.slack import SlackResource
from onboarding_pipeline.runner import RANGE_END_TAG, RANGE_START_TAG
from onboarding_pipeline.settings import SAMPLE_DATA_DIR, Settings
from onboarding_pipeline_tests.conftest import write
from onboarding_pipeline_tests.test_ingestion import EVENTS, USERS

LONG_AGO = time.time() - 3600


def settings_for(tmp_path: Path, data_dir: Path = SAMPLE_DATA_DIR) -> Settings:
    return Settings(
        data_dir=data_dir,
        config_path=data_dir / "onboarding.yaml",
        warehouse_url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        output_dir=tmp_path,
    )


def settled(path: Path, at: float = LONG_AGO) -> Path:
    """Back-date a file so the sensor treats it as completely copied."""
    os.utime(path, (at, at))
    return path


@pytest.fixture(scope="module")
def sample_defs(tmp_path_factory: pytest.TempPathFactory) -> Definitions:
    return build_definitions(settings_for(tmp_path_factory.mktemp("defs")))


# --- jobs --------------------------------------------------------------------------------------


def test_daily_job_selects_every_asset_of_the_refresh_groups(sample_defs: Definitions) -> None:
    graph = sample_defs.resolve_asset_graph()
    job = sample_defs.resolve_job_def(DAILY_REFRESH_JOB)
    selected = set(job.asset_layer.selected_asset_keys)
    expected = {k for k in graph.get_all_asset_keys() if graph.get(k).group_name in REFRESH_GROUPS}
    assert selected == expected
    assert {AssetKey("raw_events"), AssetKey("activation_scores")} <= selected
    assert job.run_tags[REFRESH_TAG] == "true"
    # Every asset is refreshed by some job: the daily one or the weekly report.
    assert {graph.get(k).group_name for k in graph.get_all_asset_keys() - selected} <= {"reporting"}


def test_every_asset_has_a_freshness_policy(sample_defs: Definitions) -> None:
    graph = sample_defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        policy = graph.get(key).freshness_policy
        assert policy is not None, key
        assert policy.fail_window.to_timedelta().total_seconds() > 24 * 3600


# --- schedules ---------------------------------------------------------------------------------


def test_daily_schedule_targets_the_last_three_days(sample_defs: Definitions) -> None:
    schedule = sample_defs.resolve_schedule_def("daily_refresh_schedule")
    assert schedule.cron_schedule == "30 1 * * *"
    assert schedule.job_name == DAILY_REFRESH_JOB
    tick = datetime(2026, 11, 25, 1, 30, tzinfo=UTC)
    with DagsterInstance.ephemeral() as instance:
        data = schedule.evaluate_tick(
            build_schedule_context(
                instance=instance,
                scheduled_execution_time=tick,
                repository_def=sample_defs.get_repository_def(),
            )
        )
    [request] = data.run_requests or []
    assert request.run_key == "daily-2026-11-25"
    assert request.tags[RANGE_START_TAG] == "2026-11-23"
    assert request.tags[RANGE_END_TAG] == "2026-11-25"


def test_daily_range_is_clipped_to_the_first_partition() -> None:
    config = ProductConfig(aha_events=["x"], partitions_start_date="2026-11-24")
    partitions = event_partitions(config)
    assert daily_partition_range(partitions, datetime(2026, 11, 25, 1, 30, tzinfo=UTC), 2) == (
        "2026-11-24",
        "2026-11-25",
    )
    assert daily_partition_range(partitions, datetime(2026, 11, 20, tzinfo=UTC), 2) is None


def test_daily_run_with_monthly_partitions_covers_the_months_of_the_last_days() -> None:
    """`partitions: monthly`: early in a month the nightly run still rebuilds the month before
    (late events, sessions crossing midnight); later on, the current month alone."""
    config = ProductConfig(
        aha_events=["x"], partitions_start_date="2014-11-17", partitions="monthly"
    )
    partitions = event_partitions(config)
    assert daily_partition_range(partitions, datetime(2026, 11, 1, 1, 30, tzinfo=UTC), 2) == (
        "2026-10-01",
        "2026-11-01",
    )
    assert daily_partition_range(partitions, datetime(2026, 11, 20, 1, 30, tzinfo=UTC), 2) == (
        "2026-11-01",
        "2026-11-01",
    )


def test_report_timezone_comes_from_the_report_config() -> None:
    assert report_timezone(ProductConfig(aha_events=["x"])) == "UTC"
    berlin = ProductConfig.model_validate(
        {"aha_events": ["x"], "report": {"timezone": "Europe/Berlin"}}
    )
    assert report_timezone(berlin) == "Europe/Berlin"


@asset(partitions_def=WeeklyPartitionsDefinition(start_date="2026-01-05", day_offset=1))
def weekly_probe() -> None:
    """A weekly asset (Monday to Monday) standing in for the report in schedule tests."""


def weekly_schedule(checks=()):  # type: ignore[no-untyped-def]
    """The weekly schedule over the probe asset, and the repository it resolves in."""
    job = define_asset_job("weekly_probe_job", selection=[weekly_probe])
    schedule = build_weekly_report_schedule(
        job, weekly_probe.partitions_def, "Europe/Berlin", list(checks)
    )
    repository = Definitions(assets=[weekly_probe], schedules=[schedule]).get_repository_def()
    return schedule, repository


def test_weekly_schedule_runs_monday_8_local_for_the_week_that_ended() -> None:
    schedule, repository = weekly_schedule()
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 8 * * 1", "Europe/Berlin")
    # Monday 2026-11-23 08:00 in Berlin is 07:00 UTC; the week of Monday 16th has just ended.
    from zoneinfo import ZoneInfo

    tick = datetime(2026, 11, 23, 8, tzinfo=ZoneInfo("Europe/Berlin"))
    with DagsterInstance.ephemeral() as instance:
        data = schedule.evaluate_tick(
            build_schedule_context(
                instance=instance, scheduled_execution_time=tick, repository_def=repository
            )
        )
    [request] = data.run_requests or []
    assert request.partition_key == "2026-11-16"
    assert request.run_key == "report-2026-11-16"


def test_weekly_report_schedule_of_the_code_location(sample_defs: Definitions) -> None:
    """The real report job and its weekly partitions, in the sample's `report.timezone`."""
    schedule = sample_defs.resolve_schedule_def("weekly_report_schedule")
    assert schedule.execution_timezone == "Europe/Berlin"
    job = sample_defs.resolve_job_def(schedule.job_name)
    graph = sample_defs.resolve_asset_graph()
    assert {graph.get(k).group_name for k in job.asset_layer.selected_asset_keys} == {"reporting"}
    with instance_for_test() as instance:
        data = schedule.evaluate_tick(
            build_schedule_context(
                instance=instance,
                scheduled_execution_time=datetime(2026, 11, 23, 7, tzinfo=UTC),
                repository_def=sample_defs.get_repository_def(),
            )
        )
    [request] = data.run_requests or []
    # The sample's weeks run Monday to Monday (UTC): the one that just ended.
    assert request.partition_key == "2026-11-16"


# --- a real failed refresh: the blocking check, the weekly gate and the Slack alert ------------


@dataclass
class FailedRefresh:
    defs: Definitions
    instance: DagsterInstance
    run: DagsterRun


@pytest.fixture(scope="module")
def failed_refresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FailedRefresh]:
    """The daily job on data with too many bad rows: raw_events' blocking check fails."""
    tmp_path = tmp_path_factory.mktemp("failed")
    data = tmp_path / "data"
    write(data, "users.csv", USERS)
    write(data, "events.csv", EVENTS)
    write(data, "onboarding.yaml", "aha_events: [search]\npartitions_start_date: 2026-01-01\n")
    defs = build_definitions(settings_for(tmp_path, data))
    # A SQLite instance in a temp folder: schedules reach it by reference, as in the daemon.
    with instance_for_test() as instance:
        result = defs.resolve_job_def(DAILY_REFRESH_JOB).execute_in_process(
            instance=instance,
            tags={RANGE_START_TAG: "2026-01-01", RANGE_END_TAG: "2026-01-03"},
            raise_on_error=False,
        )
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        assert run is not None
        yield FailedRefresh(defs, instance, run)


def test_failed_blocking_check_stops_everything_downstream(failed_refresh: FailedRefresh) -> None:
    graph = failed_refresh.defs.resolve_asset_graph()
    downstream = AssetSelection.assets("raw_events").downstream(include_self=False).resolve(graph)
    assert {"sessions", "activation_scores", "intervention_queue", "nudges"} <= {
        key.to_user_string() for key in downstream
    }
    materialized = {
        record.dagster_event.asset_key
        for record in failed_refresh.instance.all_logs(
            failed_refresh.run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
        )
        if record.dagster_event
    }
    assert AssetKey("raw_users") in materialized
    # Nothing built from the bad events: not the model, not the queue, not the report.
    assert not (materialized & downstream)


def test_weekly_report_is_skipped_while_a_blocking_check_fails(
    failed_refresh: FailedRefresh,
) -> None:
    checks = [
        key
        for key in failed_refresh.defs.resolve_asset_graph().asset_check_keys
        if key.asset_key in (AssetKey("raw_users"), AssetKey("raw_events"))
    ]
    schedule, repository = weekly_schedule(checks)
    data = schedule.evaluate_tick(
        build_schedule_context(
            instance=failed_refresh.instance,
            scheduled_execution_time=datetime(2026, 11, 23, 7, tzinfo=UTC),
            repository_def=repository,
        )
    )
    assert not data.run_requests
    assert "raw_events:quarantine_share_under_threshold" in (data.skip_message or "")


def failure_context(failed: FailedRefresh, slack: SlackResource):  # type: ignore[no-untyped-def]
    [failure] = [
        record.dagster_event
        for record in failed.instance.all_logs(
            failed.run.run_id, of_type=DagsterEventType.RUN_FAILURE
        )
        if record.dagster_event
    ]
    return build_run_status_sensor_context(
        sensor_name="run_failure_slack_sensor",
        dagster_event=failure,
        dagster_instance=failed.instance,
        dagster_run=failed.run,
        resources={"slack": slack},
    ).for_run_failure()


def test_run_failure_sensor_posts_the_run_job_and_failed_assets_to_slack(
    failed_refresh: FailedRefresh, httpserver: HTTPServer
) -> None:
    posted: list[dict] = []  # type: ignore[type-arg]

    def chat_post_message(request: Request) -> Response:
        assert request.headers["Authorization"] == "Bearer xoxb-test"
        posted.append(json.loads(request.get_data()))
        body = {"ok": True, "channel": "C1", "ts": "1700000000.000100"}
        return Response(json.dumps(body), content_type="application/json")

    httpserver.expect_request("/api/chat.postMessage", method="POST").respond_with_handler(
        chat_post_message
    )
    slack = SlackResource(
        token="xoxb-test", base_url=httpserver.url_for("/api/"), channel="#alerts"
    )
    sensor = failed_refresh.defs.resolve_sensor_def("run_failure_slack_sensor")
    sensor(failure_context(failed_refresh, slack))

    [message] = posted
    assert message["channel"] == "#alerts"
    run_id = failed_refresh.run.run_id
    assert run_id in message["text"] and DAILY_REFRESH_JOB in message["text"]
    blocks = "\n".join(block["text"]["text"] for block in message["blocks"])
    assert "*Failed assets:* `raw_events`" in blocks
    assert "quarantine_share_under_threshold" in blocks
    skipped = blocks.split("*Not refreshed (upstream failed):* ")[1].splitlines()[0]
    assert {"sessions", "user_features", "activation_scores"} <= set(skipped.split(", "))


def test_run_failure_sensor_without_a_token_posts_nothing(
    failed_refresh: FailedRefresh, httpserver: HTTPServer
) -> None:
    sensor = failed_refresh.defs.resolve_sensor_def("run_failure_slack_sensor")
    result = sensor(
        failure_context(failed_refresh, SlackResource(base_url=httpserver.url_for("/api/")))
    )
    assert isinstance(result, SkipReason)
    assert not httpserver.log


# --- the landing-directory sensor ----------------------------------------------------------------


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    data = tmp_path / "landing"
    settled(write(data, "users.csv", USERS))
    settled(write(data, "events.csv", EVENTS))
    return data


def tick(defs: Definitions, data: Path, cursor: str | None, instance: DagsterInstance):  # type: ignore[no-untyped-def]
    sensor = defs.resolve_sensor_def("landing_files_sensor")
    context = build_sensor_context(
        instance=instance, cursor=cursor, resources={"source": FileSource(data_dir=str(data))}
    )
    return sensor.evaluate_tick(context)


def test_landing_sensor_runs_new_and_changed_files_once(
    sample_defs: Definitions, landing: Path
) -> None:
    with DagsterInstance.ephemeral() as instance:
        first = tick(sample_defs, landing, None, instance)
        [request] = first.run_requests or []
        assert isinstance(request, RunRequest)
        assert request.tags[RANGE_START_TAG] == "2026-06-01"  # the sample's first partition
        assert request.tags[RANGE_END_TAG] >= datetime.now(UTC).strftime("%Y-%m-%d")
        assert set(json.loads(first.cursor or "{}")) == {"users.csv", "events.csv"}

        # Nothing changed: no run, the cursor stays.
        second = tick(sample_defs, landing, first.cursor, instance)
        assert not second.run_requests and second.cursor == first.cursor

        # A file added after the first tick: one run, keyed by that file alone.
        added = settled(write(landing, "events/2026-11-24.csv", EVENTS.replace("e1,", "e101,")))
        third = tick(sample_defs, landing, second.cursor, instance)
        [new_file] = third.run_requests or []
        assert new_file.run_key != request.run_key
        assert new_file.tags["onboarding/changed_files"] == "events/2026-11-24.csv"

        # A file still being copied waits for the next tick.
        fresh = write(landing, "events/2026-11-25.csv", EVENTS.replace("e1,", "e201,"))
        assert not tick(sample_defs, landing, third.cursor, instance).run_requests
        settled(fresh)
        fourth = tick(sample_defs, landing, third.cursor, instance)
        [copied] = fourth.run_requests or []
        assert copied.tags["onboarding/changed_files"] == "events/2026-11-25.csv"

        # The same file rewritten (size and mtime change) runs again, with a new key.
        added.write_text(added.read_text() + "e999,u1,search,2026-01-02T11:05:00Z,,\n")
        settled(added, LONG_AGO + 60)
        [changed] = tick(sample_defs, landing, fourth.cursor, instance).run_requests or []
        assert changed.tags["onboarding/changed_files"] == "events/2026-11-24.csv"
        assert changed.run_key not in {new_file.run_key, copied.run_key}


def test_landing_sensor_run_keys_survive_a_lost_cursor(
    sample_defs: Definitions, landing: Path
) -> None:
    with DagsterInstance.ephemeral() as instance:
        [once] = tick(sample_defs, landing, None, instance).run_requests or []
        [again] = tick(sample_defs, landing, None, instance).run_requests or []
    # Same file versions, same run key: Dagster launches a run key only once per sensor.
    assert once.run_key == again.run_key


def test_landing_sensor_skips_an_empty_directory(sample_defs: Definitions, tmp_path: Path) -> None:
    with DagsterInstance.ephemeral() as instance:
        data = tick(sample_defs, tmp_path, None, instance)
    assert not data.run_requests
    assert "no users file" in (data.skip_message or "")


def test_landing_sensor_requests_the_daily_job(sample_defs: Definitions) -> None:
    sensor = sample_defs.resolve_sensor_def("landing_files_sensor")
    assert sensor.job_name == DAILY_REFRESH_JOB


def test_failure_message_escapes_errors_and_links_the_run() -> None:
    failure = RunFailure(
        run_id="abc",
        job_name="daily_refresh",
        failed_steps={"raw_events": "bad <row> & more"},
        failed_assets=["raw_events"],
        skipped_assets=["sessions"],
    )
    text, blocks = failure_message(failure, ui_url="https://dagster.example.com/")
    assert text == "Dagster run abc of job daily_refresh failed"
    assert "<https://dagster.example.com/runs/abc|abc>" in blocks[0]["text"]["text"]
    assert "bad &lt;row&gt; &amp; more" in blocks[1]["text"]["text"]

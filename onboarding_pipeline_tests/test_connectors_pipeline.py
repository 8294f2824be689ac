"""A connector chosen in onboarding.yaml, through Dagster: stub PostHog -> landing -> sessions."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterInvalidConfigError, EnvVar
from pytest_httpserver import HTTPServer

from onboarding_pipeline.code_location import build_definitions
from onboarding_pipeline.config import ConfigError, load_config
from onboarding_pipeline.connectors.config import FilesSourceSettings, MixpanelSettings
from onboarding_pipeline.connectors.mixpanel import MixpanelSource
from onboarding_pipeline.connectors.posthog import ENV_API_KEY, PostHogSource
from onboarding_pipeline.connectors.resource import source_resource
from onboarding_pipeline.settings import Settings
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.tables import SESSIONS
from onboarding_pipeline_tests.test_connectors_posthog import KEY, PROJECT, StubPostHog, ph_event
from onboarding_pipeline_tests.test_definitions import materialize_all


def write_config(data: Path, server: HTTPServer) -> Path:
    data.mkdir(parents=True, exist_ok=True)
    path = data / "onboarding.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            aha_events: [search]
            partitions_start_date: 2026-01-01
            ingestion:
              max_quarantine_share: 0.9
            source:
              type: posthog
              project_id: {PROJECT}
              base_url: {server.url_for("/")}
              start_date: 2026-01-01
              end_date: 2026-01-03
              signup_event: user signed up
              page_size: 2
              backoff_seconds: 0
            """
        )
    )
    return path


def settings_for(tmp_path: Path, config: Path) -> Settings:
    return Settings(
        data_dir=config.parent,
        config_path=config,
        warehouse_url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        output_dir=tmp_path / "out",
    )


def sessions_per_user(tmp_path: Path) -> dict[str, int]:
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    try:
        sessions = warehouse.execute(warehouse.table(SESSIONS.name))
        return {str(k): int(v) for k, v in sessions.groupby("user_id").size().items()}
    finally:
        warehouse.close()


def metadata_of(instance: DagsterInstance, key: str) -> dict[str, object]:
    event = instance.get_latest_materialization_event(AssetKey(key))
    assert event is not None and event.asset_materialization is not None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_materialize_from_a_stub_posthog_through_sessions(
    tmp_path: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_API_KEY, KEY)
    stub = StubPostHog(httpserver)
    stub.events = [
        ph_event(
            "a1", "user signed up", "2026-01-01T09:00:00Z", user="u1", session="u1-2026-01-01"
        ),
        ph_event("a2", "search", "2026-01-01T09:10:00Z", user="u1", session="u1-2026-01-01"),
        ph_event("a3", "search", "2026-01-01T09:20:00Z", user="u1", session="u1-2026-01-01"),
        ph_event(
            "b1", "user signed up", "2026-01-02T14:00:00Z", user="u2", session="u2-2026-01-02"
        ),
        ph_event("b2", "report viewed", "2026-01-02T14:05:00Z", user="u2", session="u2-2026-01-02"),
        # Tracked before signups were: no signup event, so an unknown user.
        ph_event(
            "x1", "search", "2026-01-02T15:00:00Z", user="legacy", session="legacy-2026-01-02"
        ),
        ph_event("a4", "search", "2026-01-03T08:00:00Z", user="u1", session="u1-2026-01-03"),
    ]
    defs = build_definitions(settings_for(tmp_path, write_config(tmp_path / "data", httpserver)))
    assert isinstance((defs.resources or {})["source"], PostHogSource)

    with DagsterInstance.ephemeral() as instance:
        results = materialize_all(defs, "2026-01-01", "2026-01-03", instance)
        assert all(r.success for r in results)
        # The sync runs first: ingestion reads what it landed.
        assert results[0].dagster_run.asset_selection == {AssetKey("source_sync")}

        sync = metadata_of(instance, "source_sync")
        assert sync["source"] == "posthog"
        assert sync["rows_fetched"] == 7
        assert sync["cursor_before"] == "none (first sync)"
        assert sync["cursor_after"] == "2026-01-03"
        assert sync["users_landed"] == 2  # "legacy" never sent the signup event
        assert sync["pages"] == 5  # Jan 1 needs two pages of two, Jan 2 two, Jan 3 one
        events = metadata_of(instance, "raw_events")
        assert events["rows_read"] == 7 and events["rows_accepted"] == 6
        assert events["quarantined_by_reason"] == {"unknown_user": 1}
        assert metadata_of(instance, "raw_users")["rows_accepted"] == 2
        # u1 twice (09:00-09:20 and Jan 3), u2 once.
        assert sessions_per_user(tmp_path) == {"u1": 2, "u2": 1}
        # The personal API key appears in no event of any run (logs and metadata).
        assert not [e for r in results for e in r.all_events if KEY in str(e)]

        # Next day's sync: a late event of Jan 3 arrives; the overlap fetches it again.
        stub.events.append(
            ph_event("a5", "search", "2026-01-03T23:00:00Z", user="u1", session="late")
        )
        again = materialize_all(defs, "2026-01-01", "2026-01-03", instance)
        assert all(r.success for r in again)
        sync = metadata_of(instance, "source_sync")
        assert (sync["cursor_before"], sync["cursor_after"]) == ("2026-01-03", "2026-01-03")
        events = metadata_of(instance, "raw_events")
        assert (events["rows_read"], events["rows_accepted"], events["duplicates"]) == (8, 7, 0)
        assert sessions_per_user(tmp_path) == {"u1": 3, "u2": 1}


def test_a_missing_secret_fails_the_sync_naming_the_variable(
    tmp_path: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_API_KEY, raising=False)
    defs = build_definitions(settings_for(tmp_path, write_config(tmp_path / "data", httpserver)))
    job = defs.resolve_implicit_global_asset_job_def()
    with (
        DagsterInstance.ephemeral() as instance,
        pytest.raises(DagsterInvalidConfigError, match=ENV_API_KEY),
    ):
        job.execute_in_process(instance=instance, asset_selection=[AssetKey("source_sync")])


def test_files_stay_the_default_source(tmp_path: Path) -> None:
    config = tmp_path / "onboarding.yaml"
    config.write_text("aha_events: [search]\n")
    assert load_config(config).source == FilesSourceSettings()


def test_source_settings_are_strict(tmp_path: Path) -> None:
    config = tmp_path / "onboarding.yaml"
    config.write_text(
        "aha_events: [search]\nsource:\n  type: posthog\n  project_id: 1\n  colour: red\n"
    )
    with pytest.raises(ConfigError, match=r"source\.posthog\.colour: unknown key"):
        load_config(config)
    config.write_text("aha_events: [search]\nsource:\n  type: posthog\n")
    with pytest.raises(ConfigError, match=r"source\.posthog\.project_id"):
        load_config(config)
    config.write_text("aha_events: [search]\nsource:\n  type: mixpanel\n")
    with pytest.raises(ConfigError, match="project_id is required with auth: service_account"):
        load_config(config)
    config.write_text("aha_events: [search]\nsource:\n  type: segment\n")
    with pytest.raises(ConfigError, match=r"source"):
        load_config(config)


def test_secrets_are_env_vars_and_paths_follow_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "onboarding.yaml"
    config.parent.mkdir()
    config.write_text(
        "aha_events: [search]\npartitions_start_date: 2026-02-01\n"
        "source:\n  type: mixpanel\n  project_id: 9\n  region: eu\n  users_file: users.csv\n"
    )
    product = load_config(config)
    assert isinstance(product.source, MixpanelSettings)
    resource = source_resource(product, settings_for(tmp_path, config))
    assert isinstance(resource, MixpanelSource)
    assert resource.base_url == "https://data-eu.mixpanel.com"
    assert resource.start_date == "2026-02-01"
    assert resource.users_file == str(config.parent / "users.csv")
    assert resource.landing_dir == str(tmp_path / "out" / "landing" / "mixpanel")
    # The secret is a reference to the environment, resolved only when a run starts.
    assert (
        isinstance(resource.secret, EnvVar) and resource.secret == "MIXPANEL_SERVICE_ACCOUNT_SECRET"
    )
    assert isinstance(resource.username, EnvVar)


def test_onboarding_pipeline_run_drives_a_connector(
    tmp_path: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`onboarding-pipeline run` with a connector: no event files to size the partition
    range from, so it covers every configured day and the sync lands the events first."""
    from onboarding_pipeline.runner import data_partition_range, run_pipeline

    monkeypatch.setenv(ENV_API_KEY, KEY)
    stub = StubPostHog(httpserver)
    stub.events = [
        ph_event("a1", "user signed up", "2026-01-01T09:00:00Z", user="u1", session="s1"),
        ph_event("a2", "search", "2026-01-01T09:10:00Z", user="u1", session="s1"),
        ph_event("b1", "user signed up", "2026-01-02T14:00:00Z", user="u2", session="s2"),
    ]
    settings = settings_for(tmp_path, write_config(tmp_path / "data", httpserver))
    first, last = data_partition_range(settings, build_definitions(settings)) or ("", "")
    assert first == "2026-01-01" and last >= "2026-11-01"
    summary = run_pipeline(settings, echo=lambda _: None)
    assert (summary.users, summary.events) == (2, 3)
    assert not {"source_sync", "raw_users", "raw_events", "sessions"} & set(summary.failures)
    # Two users cannot train a model: it is refused (a warning), nothing fails for it.
    assert "activation_model" not in summary.failures
    assert summary.model.startswith("none accepted yet: ")

"""The code location: it loads, its graph is deliberate, and it materializes for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, Definitions

from onboarding_pipeline.code_location import build_definitions
from onboarding_pipeline.runner import RANGE_END_TAG, RANGE_START_TAG, failure_text
from onboarding_pipeline.settings import SAMPLE_DATA_DIR, Settings
from onboarding_pipeline_tests.conftest import write
from onboarding_pipeline_tests.test_ingestion import EVENTS, USERS

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def graph_snapshot(defs: Definitions) -> dict[str, object]:
    """Keys, groups, kinds, deps, partitions and checks of every asset, plus automation."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "partitioned": type(node.partitions_def).__name__ if node.partitions_def else None,
            "has_docstring": bool(node.description),
            "checks": sorted(
                f"{spec.name}{' (blocking)' if spec.blocking else ''}"
                for spec in defs.resolve_assets_def(key).check_specs
            ),
        }
    return {
        "assets": assets,
        "schedules": sorted(s.name for s in defs.schedules or []),
        "sensors": sorted(s.name for s in defs.sensors or []),
    }


def sample_settings(tmp_path: Path, data_dir: Path = SAMPLE_DATA_DIR) -> Settings:
    return Settings(
        data_dir=data_dir,
        config_path=data_dir / "onboarding.yaml",
        warehouse_url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        output_dir=tmp_path,
    )


def test_asset_graph_matches_snapshot(tmp_path: Path) -> None:
    """A change to the graph must be deliberate: UPDATE_SNAPSHOTS=1 pytest rewrites the file."""
    current = graph_snapshot(build_definitions(sample_settings(tmp_path)))
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text())


def test_definitions_validate_with_the_dagster_cli(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ONBOARDING_OUTPUT_DIR": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path),
    }
    result = subprocess.run(
        [
            Path(sys.executable).parent / "dagster",
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=Path(__file__).parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


@pytest.fixture
def small_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    write(data, "users.csv", USERS)
    write(data, "events.csv", EVENTS)
    write(
        data,
        "onboarding.yaml",
        """
        aha_events: [search]
        partitions_start_date: 2026-01-01
        ingestion:
          max_quarantine_share: 0.9
        """,
    )
    return data


def materialize_all(defs: Definitions, first: str, last: str, instance: DagsterInstance):  # type: ignore[no-untyped-def]
    """Ingestion and modeling, asset by asset (the hand-made data is too small to model)."""
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    results = []
    for key in graph.toposorted_asset_keys:
        if graph.get(key).group_name not in ("ingestion", "modeling"):
            continue
        partitioned = defs.resolve_assets_def(key).partitions_def is not None
        tags = {RANGE_START_TAG: first, RANGE_END_TAG: last} if partitioned else {}
        results.append(
            job.execute_in_process(
                instance=instance, asset_selection=[key], tags=tags, raise_on_error=False
            )
        )
    return results


def test_materialize_ingestion_and_modeling_on_a_real_duckdb_file(
    tmp_path: Path, small_data: Path
) -> None:
    settings = sample_settings(tmp_path, small_data)
    defs = build_definitions(settings)
    with DagsterInstance.ephemeral() as instance:
        results = materialize_all(defs, "2026-01-01", "2026-01-03", instance)
        assert all(r.success for r in results)
        events = instance.get_latest_materialization_event(AssetKey("raw_events"))
        assert events is not None
        metadata = {k: v.value for k, v in events.asset_materialization.metadata.items()}
        assert metadata["rows_read"] == 18
        assert metadata["rows_read"] == (
            metadata["rows_accepted"] + metadata["duplicates"] + metadata["rows_quarantined"]
        )
        assert metadata["quarantined_by_reason"]["unknown_user"] == 1
        checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [
                ck
                for ck in defs.resolve_asset_graph().asset_check_keys
                if ck.asset_key == AssetKey("raw_events")
            ]
        )
        assert {k.name: v.status.value for k, v in checks.items()} == {
            "event_keys_valid": "SUCCEEDED",
            "event_ids_unique": "SUCCEEDED",
            "timestamps_within_bounds": "SUCCEEDED",
            "quarantine_share_under_threshold": "SUCCEEDED",
            "anonymous_share_under_threshold": "SUCCEEDED",
        }
        sessions = instance.get_latest_materialization_event(AssetKey("sessions"))
        assert sessions is not None
        assert sessions.asset_materialization.metadata["dagster/row_count"].value == 3


def test_blocking_quarantine_check_stops_downstream(tmp_path: Path, small_data: Path) -> None:
    config = small_data / "onboarding.yaml"
    config.write_text(config.read_text().replace("0.9", "0.05"))
    defs = build_definitions(sample_settings(tmp_path, small_data))
    job = defs.resolve_implicit_global_asset_job_def()
    with DagsterInstance.ephemeral() as instance:
        assert job.execute_in_process(
            instance=instance, asset_selection=[AssetKey("raw_users")]
        ).success
        result = job.execute_in_process(
            instance=instance,
            asset_selection=[AssetKey("raw_events"), AssetKey("sessions")],
            tags={RANGE_START_TAG: "2026-01-01", RANGE_END_TAG: "2026-01-03"},
            raise_on_error=False,
        )
        assert not result.success
        failed = [
            e.event_specific_data.check_name
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed
        ]
        assert failed == ["quarantine_share_under_threshold"]
        # The run summary says it once, as the check's own words, not as Dagster's exception.
        text = failure_text(result)
        assert text.startswith("check quarantine_share_under_threshold failed:")
        assert (
            "DagsterAssetCheckFailedError" not in text
            and "`ingestion.max_quarantine_share`" in text
        )
        # Bad data must not flow on: sessions were not built from it.
        assert instance.get_latest_materialization_event(AssetKey("sessions")) is None

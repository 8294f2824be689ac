"""The landing sensor on removed files: a file gone from the data directory starts a refresh,
and that refresh (raw_users + raw_events over the requested range, on a real instance and
DuckDB file) deletes the file's rows, as the README's input contract says."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    RunRequest,
    SensorResult,
    build_sensor_context,
)

from onboarding_pipeline.code_location import build_definitions
from onboarding_pipeline.ingestion.sources import FileSource
from onboarding_pipeline.settings import Settings
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline_tests.conftest import write

LONG_AGO = time.time() - 3600

CONFIG = """\
aha_events: [shared]
partitions_start_date: 2026-01-01
partitions: monthly
"""
USERS = """\
user_id,signup_at
u1,2026-01-02T09:00:00Z
u2,2026-02-03T09:00:00Z
"""
JANUARY = """\
event_id,user_id,event_name,timestamp
j1,u1,opened,2026-01-02T10:00:00Z
j2,u1,shared,2026-01-03T10:00:00Z
"""
FEBRUARY = """\
event_id,user_id,event_name,timestamp
f1,u2,opened,2026-02-03T10:00:00Z
"""


def settled(path: Path, at: float = LONG_AGO) -> Path:
    """Back-date a file so the sensor treats it as completely copied."""
    os.utime(path, (at, at))
    return path


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    data = tmp_path / "landing"
    write(data, "onboarding.yaml", CONFIG)
    for name, text in (
        ("users.csv", USERS),
        ("events/2026-01.csv", JANUARY),
        ("events/2026-02.csv", FEBRUARY),
    ):
        settled(write(data, name, text))
    return data


@pytest.fixture
def defs(landing: Path, tmp_path: Path) -> Iterator[Definitions]:
    settings = Settings(
        data_dir=landing,
        config_path=landing / "onboarding.yaml",
        warehouse_url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        output_dir=tmp_path / "output",
    )
    yield build_definitions(settings)


def tick(defs: Definitions, data: Path, cursor: str | None) -> SensorResult:
    sensor = defs.resolve_sensor_def("landing_files_sensor")
    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(
            instance=instance, cursor=cursor, resources={"source": FileSource(data_dir=str(data))}
        )
        return sensor.evaluate_tick(context)  # type: ignore[return-value]


def only_request(result: SensorResult) -> RunRequest:
    [request] = result.run_requests or []
    assert isinstance(request, RunRequest)
    return request


def ingest(defs: Definitions, request: RunRequest, instance: DagsterInstance) -> None:
    """What the requested daily_refresh does first: raw_users, then raw_events over the range."""
    job = defs.resolve_implicit_global_asset_job_def()
    for key, tags in ((AssetKey("raw_users"), {}), (AssetKey("raw_events"), request.tags)):
        result = job.execute_in_process(
            instance=instance, asset_selection=[key], tags=tags, raise_on_error=True
        )
        assert result.success


def event_ids(tmp_path: Path) -> list[str]:
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    try:
        return sorted(warehouse.execute(warehouse.table("raw_events")).event_id)
    finally:
        warehouse.close()


def test_a_removed_file_starts_a_refresh_that_deletes_its_rows(
    defs: Definitions, landing: Path, tmp_path: Path
) -> None:
    first = tick(defs, landing, None)
    initial = only_request(first)
    with DagsterInstance.ephemeral() as instance:
        ingest(defs, initial, instance)
        assert event_ids(tmp_path) == ["f1", "j1", "j2"]

        (landing / "events/2026-01.csv").unlink()
        second = tick(defs, landing, first.cursor)
        removal = only_request(second)
        assert removal.tags["onboarding/removed_files"] == "events/2026-01.csv"
        assert removal.tags["onboarding/changed_files"] == ""
        assert removal.run_key != initial.run_key
        # Every partition, as for a change: the removed rows may sit on any date.
        assert removal.tags["dagster/asset_partition_range_start"] == "2026-01-01"
        assert set(json.loads(second.cursor or "{}")) == {"users.csv", "events/2026-02.csv"}

        ingest(defs, removal, instance)
        assert event_ids(tmp_path) == ["f1"]

    # The removal is applied once: the next tick has nothing to do.
    third = tick(defs, landing, second.cursor)
    assert not third.run_requests and third.cursor == second.cursor


def test_a_file_put_back_and_removed_again_runs_each_time(defs: Definitions, landing: Path) -> None:
    first = tick(defs, landing, None)
    january = landing / "events/2026-01.csv"
    january.unlink()
    removed = tick(defs, landing, first.cursor)
    # Put back (a new version): a change, keyed by that version.
    settled(write(landing, "events/2026-01.csv", JANUARY), LONG_AGO + 60)
    back = tick(defs, landing, removed.cursor)
    assert only_request(back).tags["onboarding/changed_files"] == "events/2026-01.csv"
    # Removed again: keyed by the version that went, so not mistaken for the first removal.
    january.unlink()
    again = only_request(tick(defs, landing, back.cursor))
    assert again.tags["onboarding/removed_files"] == "events/2026-01.csv"
    keys = {only_request(r).run_key for r in (first, removed, back)}
    assert len(keys) == 3 and again.run_key not in keys


def test_a_file_still_being_copied_is_not_a_removal(defs: Definitions, landing: Path) -> None:
    first = tick(defs, landing, None)
    # Rewritten just now: present, but not settled yet. Neither changed nor removed.
    write(landing, "events/2026-02.csv", FEBRUARY + "f2,u2,shared,2026-02-04T10:00:00Z\n")
    waiting = tick(defs, landing, first.cursor)
    assert not waiting.run_requests
    assert "events/2026-02.csv" in json.loads(waiting.cursor or "{}")


def test_no_events_file_at_all_starts_nothing(defs: Definitions, landing: Path) -> None:
    """An unmounted or emptied directory is not a mass removal: no run, cursor kept."""
    first = tick(defs, landing, None)
    for path in (landing / "events").iterdir():
        path.unlink()
    empty = tick(defs, landing, first.cursor)
    assert not empty.run_requests
    assert "no events file" in (empty.skip_message or "")
    assert empty.cursor in (None, first.cursor)

"""Sessions in the warehouse: inactivity rule, supplied ids, incremental equals full, tied
timestamps, partition sizes and quiet days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import ibis
import pandas as pd
import pytest
import sqlglot
from dagster import AssetKey, DagsterInstance, PartitionKeyRange
from sqlglot import expressions as sge

from onboarding_pipeline.code_location import build_definitions
from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.modeling.sessions import (
    inactivity_sessions,
    session_violations,
    write_sessions,
)
from onboarding_pipeline.runner import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    data_partition_range,
    event_partitions_of,
)
from onboarding_pipeline.settings import Settings
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.tables import RAW_EVENTS
from onboarding_pipeline_tests.conftest import ALL_TIME, ingest_all, write

TIMEOUT = timedelta(minutes=30)
EVENTS = """
    event_id,user_id,event_name,timestamp,session_id
    a1,u1,x,2026-01-01T10:00:00Z,
    a2,u1,x,2026-01-01T10:29:00Z,
    a3,u1,x,2026-01-01T10:59:00Z,
    a4,u1,x,2026-01-01T11:30:00Z,
    b1,u1,x,2026-01-01T23:50:00Z,
    b2,u1,x,2026-01-02T00:10:00Z,
    b3,u1,x,2026-01-02T00:35:00Z,
    c1,u2,x,2026-01-01T12:00:00Z,m-1
    c2,u2,x,2026-01-01T15:00:00Z,m-1
    c3,u2,x,2026-01-02T01:00:00Z,m-2
    c4,u2,x,2026-01-03T09:00:00Z,
    c5,u2,x,2026-01-03T09:00:00Z,
"""


def day(d: int) -> datetime:
    return datetime(2026, 1, d, tzinfo=UTC)


def sessions_table(warehouse: WarehouseResource) -> pd.DataFrame:
    frame = warehouse.execute(warehouse.table("sessions"))
    return frame.sort_values(["user_id", "session_start"]).reset_index(drop=True)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write(
        tmp_path,
        "users.csv",
        "user_id,signup_at\nu1,2026-01-01T09:00:00Z\nu2,2026-01-01T09:00:00Z\n",
    )
    write(tmp_path, "events.csv", EVENTS)
    return tmp_path


def test_inactivity_and_supplied_sessions(
    warehouse: WarehouseResource, data_dir: Path, config: ProductConfig
) -> None:
    ingest_all(warehouse, data_dir, config)
    write_sessions(warehouse, TIMEOUT, *ALL_TIME)
    found = sessions_table(warehouse)
    summary = [
        (r.user_id, r.session_start.strftime("%dT%H:%M"), r.event_count, r.session_id_source)
        for r in found.itertuples()
    ]
    assert summary == [
        # 29 and 30 minutes apart stay together; 31 minutes starts a new session.
        ("u1", "01T10:00", 3, "inactivity"),
        ("u1", "01T11:30", 1, "inactivity"),
        ("u1", "01T23:50", 3, "inactivity"),  # crosses midnight
        ("u2", "01T12:00", 2, "input"),  # a supplied id holds a 3-hour gap together
        ("u2", "02T01:00", 1, "input"),
        ("u2", "03T09:00", 2, "inactivity"),
    ]
    crossing = found.iloc[2]
    assert crossing.session_end == pd.Timestamp("2026-01-02T00:35:00Z")
    assert crossing.duration_seconds == 45 * 60
    assert set(found[found.session_id_source == "input"].session_id) == {"m-1", "m-2"}


def test_day_by_day_equals_full_recompute(
    warehouse: WarehouseResource, data_dir: Path, config: ProductConfig
) -> None:
    ingest_all(warehouse, data_dir, config)
    write_sessions(warehouse, TIMEOUT, *ALL_TIME)
    full = sessions_table(warehouse)
    warehouse.replace_all("sessions", warehouse.table("sessions").limit(0))
    for d in (1, 2, 3):
        write_sessions(warehouse, TIMEOUT, day(d), day(d + 1))
    pd.testing.assert_frame_equal(sessions_table(warehouse), full)


def test_late_day_recomputes_the_session_that_crosses_into_it(
    warehouse: WarehouseResource, data_dir: Path, config: ProductConfig
) -> None:
    """Daily runs as data lands: day 1 first, then day 2, which extends a day-1 session."""
    ingest_all(warehouse, data_dir, config, window=(day(1), day(2)))
    write_sessions(warehouse, TIMEOUT, day(1), day(2))
    early = sessions_table(warehouse)
    assert early.session_end.max() == pd.Timestamp("2026-01-01T23:50:00Z")

    ingest_all(warehouse, data_dir, config, window=(day(2), day(4)))
    # sessions[d] depends on raw_events[d-1..d+1], so day 1 is stale and re-run with days 2-3.
    for d in (1, 2, 3):
        write_sessions(warehouse, TIMEOUT, day(d), day(d + 1))
    incremental = sessions_table(warehouse)

    write_sessions(warehouse, TIMEOUT, *ALL_TIME)
    pd.testing.assert_frame_equal(incremental, sessions_table(warehouse))


def test_session_running_for_days_is_found_whole(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    """A chain of events every 20 minutes for three days is one session, even per day."""
    write(tmp_path, "users.csv", "user_id,signup_at\nbot,2026-01-01T00:00:00Z\n")
    stamps = pd.date_range("2026-01-01T12:00:00Z", periods=3 * 72, freq="20min")
    rows = "\n".join(f"e{i},bot,ping,{t.isoformat()}" for i, t in enumerate(stamps))
    write(tmp_path, "events.csv", "event_id,user_id,event_name,timestamp\n" + rows + "\n")
    ingest_all(warehouse, tmp_path, config)
    for d in (1, 2, 3, 4):
        write_sessions(warehouse, TIMEOUT, day(d), day(d + 1))
    found = sessions_table(warehouse)
    assert len(found) == 1
    assert found.event_count.item() == len(stamps)
    assert found.session_end.item() == stamps[-1]


def tied_events(users: int) -> str:
    """Per user: three events at one instant, then three after a gap, two of them tied.

    The ids sort against file order, so neither the file nor the ids agree with arrival.
    """
    rows = ["event_id,user_id,event_name,timestamp"]
    for u in range(users):
        for n, stamp in enumerate(["10:00", "10:00", "10:00", "10:40", "10:40", "10:41"]):
            rows.append(f"e{u:04d}-{9 - n},u{u},x,2026-01-01T{stamp}:00Z")
    return "\n".join(rows) + "\n"


def test_tied_timestamps_give_one_answer(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    """Ties are ordered by event id in every window: the same sessions on every run, and
    never two sessions of one user with the same start (the blocking check's `repeated_id`)."""
    users = 150
    write(
        tmp_path,
        "users.csv",
        "user_id,signup_at\n" + "".join(f"u{u},2026-01-01T09:00:00Z\n" for u in range(users)),
    )
    write(tmp_path, "events.csv", tied_events(users))
    ingest_all(warehouse, tmp_path, config)
    runs = []
    for _ in range(3):
        write_sessions(warehouse, TIMEOUT, day(1), day(2))
        assert session_violations(warehouse, day(1), day(2)) == {}
        runs.append(sessions_table(warehouse).sort_values(["user_id", "session_id"]))
    for run in runs[1:]:
        pd.testing.assert_frame_equal(run, runs[0])
    found = runs[0]
    assert len(found) == 2 * users
    assert found.groupby("user_id").event_count.apply(sorted).map(tuple).unique().tolist() == [
        (3, 3)
    ]


def test_every_session_window_has_a_total_order() -> None:
    """Tied timestamps differ between runs only at scale (DuckDB sorts >120k rows in parallel,
    and the lag and the running sum then saw ties in different orders): so the fix is
    checked on the SQL itself, where every window must sort by timestamp, then event id."""
    events = ibis.table(RAW_EVENTS.schema, name="raw_events")
    sql = ibis.to_sql(inactivity_sessions(events, TIMEOUT), dialect="duckdb")
    windows = list(sqlglot.parse_one(sql, dialect="duckdb").find_all(sge.Window))
    assert len(windows) >= 2  # the lag and the running sum
    for window in windows:
        assert [o.this.name for o in window.args["order"].expressions] == ["timestamp", "event_id"]


def test_a_day_without_events_writes_no_sessions(
    warehouse: WarehouseResource, data_dir: Path, config: ProductConfig
) -> None:
    ingest_all(warehouse, data_dir, config)
    assert write_sessions(warehouse, TIMEOUT, day(20), day(21)) == 0
    assert session_violations(warehouse, day(20), day(21)) == {}


# Across a week, a month and a year boundary, with tied timestamps: small enough that the
# daily variant stays ~30 partitions (each costs Dagster bookkeeping).
SPANNING_EVENTS = """
    event_id,user_id,event_name,timestamp
    a1,u1,x,2025-11-30T23:50:00Z
    a3,u1,x,2025-12-01T00:10:00Z
    a2,u1,x,2025-12-01T00:10:00Z
    a4,u1,x,2025-12-20T12:00:00Z
    b1,u2,x,2025-12-31T23:59:00Z
    b2,u2,x,2026-01-01T00:20:00Z
    b3,u2,x,2026-01-01T03:00:00Z
"""


def spanning_settings(tmp_path: Path, partitions: str) -> Settings:
    data = tmp_path / "data"
    write(
        data, "users.csv", "user_id,signup_at\nu1,2025-11-30T23:00:00Z\nu2,2025-12-31T23:00:00Z\n"
    )
    write(data, "events.csv", SPANNING_EVENTS)
    write(
        data,
        "onboarding.yaml",
        f"aha_events: [x]\npartitions_start_date: 2025-11-15\npartitions: {partitions}\n",
    )
    return Settings(
        data_dir=data,
        config_path=data / "onboarding.yaml",
        warehouse_url=f"duckdb:///{tmp_path / 'w.duckdb'}",
        output_dir=tmp_path / "out",
    )


@pytest.mark.parametrize("partitions", ["daily", "weekly", "monthly"])
def test_partition_size_changes_the_bookkeeping_not_the_tables(
    tmp_path: Path, partitions: str
) -> None:
    """Three sizes of partition: the same sessions (they cross a week, a month and a year
    boundary), one materialization per partition, and `run`'s range is the partitions holding
    the first and last event."""
    settings = spanning_settings(tmp_path, partitions)
    defs = build_definitions(settings)
    span = data_partition_range(settings, defs)
    expected_span = {
        "daily": ("2025-11-30", "2026-01-01"),
        "weekly": ("2025-11-24", "2025-12-29"),  # the Mondays of those weeks
        "monthly": ("2025-11-01", "2026-01-01"),
    }[partitions]
    assert span == expected_span
    job = defs.resolve_implicit_global_asset_job_def()
    with DagsterInstance.ephemeral() as instance:
        for key in ("source_sync", "raw_users", "raw_events", "sessions"):
            partitioned = key in ("raw_events", "sessions")
            result = job.execute_in_process(
                instance=instance,
                asset_selection=[AssetKey(key)],
                tags={RANGE_START_TAG: span[0], RANGE_END_TAG: span[1]} if partitioned else {},
            )
            assert result.success
        materialized = instance.get_materialized_partitions(AssetKey("sessions"))
    partitions_def = event_partitions_of(defs)
    assert partitions_def is not None
    assert len(materialized) == len(
        partitions_def.get_partition_keys_in_range(PartitionKeyRange(*span))
    )
    warehouse = WarehouseResource(url=settings.warehouse_url)
    try:
        found = sessions_table(warehouse)
    finally:
        warehouse.close()
    assert [
        (r.user_id, r.session_start.isoformat(), r.event_count) for r in found.itertuples()
    ] == [
        ("u1", "2025-11-30T23:50:00+00:00", 3),
        ("u1", "2025-12-20T12:00:00+00:00", 1),
        ("u2", "2025-12-31T23:59:00+00:00", 2),
        ("u2", "2026-01-01T03:00:00+00:00", 1),
    ]


def test_a_quiet_day_materializes_zero_sessions_and_says_so(tmp_path: Path) -> None:
    """A daily run over a day without events (a quiet weekend): success, 0 rows, and why."""
    settings = spanning_settings(tmp_path, "daily")
    defs = build_definitions(settings)
    job = defs.resolve_implicit_global_asset_job_def()
    with DagsterInstance.ephemeral() as instance:
        for key in ("source_sync", "raw_users", "raw_events", "sessions"):
            partitioned = key in ("raw_events", "sessions")
            result = job.execute_in_process(
                instance=instance,
                asset_selection=[AssetKey(key)],
                partition_key="2025-12-10" if partitioned else None,
            )
            assert result.success
        [materialization] = result.asset_materializations_for_node("sessions")
        [check] = result.get_asset_check_evaluations()
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["dagster/row_count"] == 0
    assert metadata["empty"] is True
    assert metadata["empty_reason"] == (
        "no session starts in 2025-12-10..2025-12-10 (no accepted events there)"
    )
    assert check.check_name == "sessions_well_formed" and check.passed

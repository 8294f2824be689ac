"""Sessions in the warehouse: inactivity rule, supplied ids, incremental equals full."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.modeling.sessions import write_sessions
from onboarding_pipeline.warehouse import WarehouseResource
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

"""Ingestion against a real DuckDB file: every quarantine reason, counts, idempotency."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onboarding_pipeline.config import ColumnMapping, ProductConfig
from onboarding_pipeline.ingestion.readers import InputError
from onboarding_pipeline.ingestion.sources import FileSource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline_tests.conftest import ingest_all, write

USERS = """
    user_id,signup_at,role,favourite_colour
    u1,2026-01-01T10:00:00Z,admin,blue
    u2,2026-01-02T10:00:00+02:00,analyst,red
    ,2026-01-02T10:00:00Z,analyst,red
    u3,,engineer,green
    u4,notadate,engineer,green
    u1,2026-01-01T10:00:00Z,admin,blue
    u2,2026-01-05T10:00:00Z,analyst,red
"""
# Row numbers count data records after the header (first record = row 1).
EVENTS = """
    event_id,user_id,event_name,timestamp,session_id,properties
    e1,u1,signed_up,2026-01-01T10:00:00Z,,
    e2,u1,page_viewed,2026-01-01T10:05:00Z,,"{""page"":""/home""}"
    e2,u1,page_viewed,2026-01-01T10:05:00Z,,"{""page"":""/home""}"
    ,u1,page_viewed,2026-01-01T11:05:00,,
    ,u1,page_viewed,2026-01-01T11:05:00,,
    e3,,page_viewed,2026-01-01T11:05:00,,
    e4,u1,,2026-01-01T11:05:00,,
    e5,u1,search,,,
    e6,u1,search,not-a-date,,
    e7,u1,search,2026-01-01T11:05:00Z,,"[1,2]"
    e8,u9,search,2026-01-01T11:05:00Z,,
    e9,u1,search,2099-01-01T11:05:00Z,,
    e10,u1,search,2025-06-01T11:05:00Z,,
    e11,u2,search,2026-01-02T09:00:00Z,s1,
    only,two-fields
    e12,u2,search,2026-01-02T09:10:00Z,s1,{}
    e13,u2,search,2026-13-45T00:00:00Z,,
    e14,u1,search,2025-12-31T12:00:00Z,,
"""
EXPECTED_EVENT_REASONS = {
    6: ("missing_user_id", "user_id"),
    7: ("missing_event_name", "event_name"),
    8: ("missing_timestamp", "timestamp"),
    9: ("unparseable_timestamp", "timestamp"),
    10: ("invalid_properties", "properties"),
    11: ("unknown_user", "user_id"),
    12: ("future_timestamp", "timestamp"),
    13: ("before_signup", "timestamp"),
    15: ("malformed_row", None),
    17: ("unparseable_timestamp", "timestamp"),
    18: ("before_partitions_start", "timestamp"),
}
EXPECTED_USER_REASONS = {
    3: ("missing_user_id", "user_id"),
    4: ("missing_signup_at", "signup_at"),
    5: ("unparseable_signup_at", "signup_at"),
    7: ("conflicting_duplicate_user", "user_id"),
}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    write(directory, "users.csv", USERS)
    write(directory, "events.csv", EVENTS)
    return directory


def quarantine(warehouse: WarehouseResource, kind: str) -> pd.DataFrame:
    table = warehouse.table("quarantine")
    return warehouse.execute(table.filter(table.kind == kind)).set_index("row_number").sort_index()


def test_every_event_reason_is_quarantined_with_row_and_field(
    warehouse: WarehouseResource, data_dir: Path, config: ProductConfig
) -> None:
    ingest_all(warehouse, data_dir, config)
    rows = quarantine(warehouse, "events")
    found = {
        int(n): (row.reason, row.field if isinstance(row.field, str) else None)
        for n, row in rows.iterrows()
    }
    assert found == EXPECTED_EVENT_REASONS
    assert set(rows.source) == {"events.csv"}
    # The original content is kept: parsed rows as their input text, broken rows verbatim.
    assert json.loads(rows.loc[9, "raw"])["timestamp"] == "not-a-date"
    assert rows.loc[15, "raw"] == "only,two-fields"


def test_every_user_reason_is_quarantined(
    warehouse: WarehouseResource, data_dir: Path, config: ProductConfig
) -> None:
    users_report, _ = ingest_all(warehouse, data_dir, config)
    rows = quarantine(warehouse, "users")
    assert {int(n): (r.reason, r.field) for n, r in rows.iterrows()} == EXPECTED_USER_REASONS
    assert users_report.duplicates == 1
    accepted = warehouse.execute(warehouse.table("raw_users")).set_index("user_id")
    assert sorted(accepted.index) == ["u1", "u2"]
    # The conflicting later row does not overwrite the first one.
    assert accepted.loc["u2", "signup_at"] == pd.Timestamp("2026-01-02T08:00:00Z")
    assert json.loads(accepted.loc["u1", "attributes"]) == {"favourite_colour": "blue"}


def test_counts_reconcile(
    warehouse: WarehouseResource, data_dir: Path, config: ProductConfig
) -> None:
    users, events = ingest_all(warehouse, data_dir, config)
    assert (users.rows_read, users.accepted, users.duplicates, users.quarantined) == (7, 2, 1, 4)
    assert events.rows_read == 18
    assert events.duplicates == 2  # e2 repeated, and an id-less row repeated verbatim
    assert events.quarantined == len(EXPECTED_EVENT_REASONS)
    assert events.rows_read == events.accepted + events.duplicates + events.quarantined
    assert warehouse.execute(warehouse.table("raw_events").count()) == events.accepted == 5
    assert events.by_source["events.csv"]["read"] == 18


def test_derived_event_id_is_a_stable_content_hash(
    warehouse: WarehouseResource, data_dir: Path, config: ProductConfig
) -> None:
    ingest_all(warehouse, data_dir, config)
    events = warehouse.execute(warehouse.table("raw_events"))
    derived = events[events.row_number == 4].event_id.item()
    assert len(derived) == 32 and derived not in {"e1", "e2"}
    other = WarehouseResource(url=f"duckdb:///{data_dir.parent / 'second.duckdb'}")
    ingest_all(other, data_dir, config)
    again = other.execute(other.table("raw_events"))
    assert again[again.row_number == 4].event_id.item() == derived
    other.close()


def test_rerun_is_idempotent(
    warehouse: WarehouseResource, data_dir: Path, config: ProductConfig
) -> None:
    ingest_all(warehouse, data_dir, config)
    snapshot = {
        t: warehouse.execute(warehouse.table(t)) for t in ("raw_users", "raw_events", "quarantine")
    }
    ingest_all(warehouse, data_dir, config)
    for name, before in snapshot.items():
        after = warehouse.execute(warehouse.table(name))
        key = list(before.columns[:3])
        pd.testing.assert_frame_equal(
            before.sort_values(key).reset_index(drop=True),
            after.sort_values(key).reset_index(drop=True),
        )


def test_adding_a_file_adds_only_its_new_rows(
    warehouse: WarehouseResource, data_dir: Path, config: ProductConfig
) -> None:
    ingest_all(warehouse, data_dir, config)
    before = warehouse.execute(warehouse.table("raw_events").count())
    write(
        data_dir,
        "events/2026-01-03.csv",
        """
        event_id,user_id,event_name,timestamp
        e1,u1,signed_up,2026-01-01T10:00:00Z
        e20,u1,search,2026-01-03T10:00:00Z
        """,
    )
    _, report = ingest_all(warehouse, data_dir, config)
    assert warehouse.execute(warehouse.table("raw_events").count()) == before + 1
    assert report.duplicates == 3
    assert report.by_source["events/2026-01-03.csv"] == {"read": 2, "accepted": 1, "duplicate": 1}


def test_timezone_offsets_are_normalised_to_utc(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    write(tmp_path, "users.csv", "user_id,signup_at\nu1,2026-03-01T00:00:00-05:00\n")
    write(
        tmp_path,
        "events.csv",
        """
        event_id,user_id,event_name,timestamp
        a,u1,x,2026-03-01T12:00:00Z
        b,u1,x,2026-03-01T14:00:00+02:00
        c,u1,x,2026-03-01T12:00:00
        d,u1,x,2026-03-01 06:30:00-05:30
        e,u1,x,2026-03-01T12:00:00.250Z
        """,
    )
    ingest_all(warehouse, tmp_path, config)
    users = warehouse.execute(warehouse.table("raw_users"))
    assert users.signup_at.item() == pd.Timestamp("2026-03-01T05:00:00Z")
    events = warehouse.execute(warehouse.table("raw_events")).set_index("event_id").timestamp
    noon = pd.Timestamp("2026-03-01T12:00:00Z")
    assert [events[k] for k in "abcd"] == [noon] * 4
    assert events["e"] == noon + pd.Timedelta(milliseconds=250)


def test_column_mapping_renames_input_columns(warehouse: WarehouseResource, tmp_path: Path) -> None:
    config = ProductConfig(
        aha_events=["x"],
        partitions_start_date="2025-01-01",
        column_mapping=ColumnMapping(
            users={"clientId": "user_id", "created": "signup_at"},
            events={"client_id": "user_id", "event": "event_name", "time": "timestamp"},
        ),
    )
    write(tmp_path, "users.csv", "clientId,created\nu1,2026-03-01T00:00:00Z\n")
    write(tmp_path, "events.csv", "client_id,event,time\nu1,opened,2026-03-01T01:00:00Z\n")
    _, report = ingest_all(warehouse, tmp_path, config)
    assert report.accepted == 1
    assert warehouse.execute(warehouse.table("raw_events")).event_name.item() == "opened"


def test_missing_required_column_names_file_and_column(tmp_path: Path) -> None:
    write(tmp_path, "users.csv", "user_id,signup_at\nu1,2026-03-01T00:00:00Z\n")
    write(tmp_path, "events.csv", "user_id,event\nu1,opened\n")
    with pytest.raises(InputError) as raised:
        FileSource(data_dir=str(tmp_path)).read_events({})
    message = str(raised.value)
    assert "events.csv" in message and "event_name" in message and "timestamp" in message
    assert "column_mapping" in message


def test_parquet_and_jsonl_inputs(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    write(tmp_path, "users.csv", "user_id,signup_at\nu1,2026-03-01T00:00:00Z\n")
    pq.write_table(
        pa.table(
            {
                "user_id": ["u1", "u1"],
                "event_name": ["a", "b"],
                "timestamp": pa.array(
                    [pd.Timestamp("2026-03-01T01:00:00Z"), pd.Timestamp("2026-03-01T02:00:00Z")],
                    pa.timestamp("us", tz="UTC"),
                ),
            }
        ),
        tmp_path / "events.parquet",
    )
    write(
        tmp_path,
        "events.jsonl",
        """
        {"user_id": "u1", "event_name": "c", "timestamp": "2026-03-01T03:00:00Z", "properties": {"k": 1}}
        not json
        ["a list"]
        {"user_id": "u1", "event_name": "d", "timestamp": "2026-03-01T04:00:00Z"}
        """,
    )
    _, report = ingest_all(warehouse, tmp_path, config)
    assert report.rows_read == 6 and report.accepted == 4
    assert report.quarantined_by_reason == {"malformed_row": 2}
    rows = quarantine(warehouse, "events")
    assert list(rows.index) == [2, 3] and set(rows.source) == {"events.jsonl"}
    events = warehouse.execute(warehouse.table("raw_events")).set_index("event_name")
    assert json.loads(events.loc["c", "properties"]) == {"k": 1}
    assert events.loc["b", "timestamp"] == pd.Timestamp("2026-03-01T02:00:00Z")


def test_partition_write_replaces_only_its_range(
    warehouse: WarehouseResource, data_dir: Path, config: ProductConfig
) -> None:
    from datetime import UTC, datetime

    day_one = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))
    day_two = (datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC))
    ingest_all(warehouse, data_dir, config, window=day_one)
    ingest_all(warehouse, data_dir, config, window=day_two)
    ingest_all(warehouse, data_dir, config, window=day_one)
    events = warehouse.execute(warehouse.table("raw_events"))
    assert sorted(events.timestamp.dt.strftime("%d").value_counts().items()) == [
        ("01", 3),
        ("02", 2),
    ]


def test_duckdb_urls_follow_the_sqlalchemy_convention() -> None:
    from onboarding_pipeline.warehouse.resource import duckdb_path

    assert duckdb_path("duckdb:///output/warehouse.duckdb") == Path("output/warehouse.duckdb")
    assert duckdb_path("duckdb:////srv/warehouse.duckdb") == Path("/srv/warehouse.duckdb")
    assert duckdb_path("duckdb://") is None

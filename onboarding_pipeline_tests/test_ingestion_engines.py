"""The hostile corpus on PostgreSQL and on DuckDB: the same rows accepted, the same rows
quarantined with the same reason, field and detail, the same manifest.

Every test here needs the server: the module is marked `postgres`, so conftest's one probe
skips them with its reason when it is unreachable (and `ONBOARDING_TEST_REQUIRE_POSTGRES=1`
makes that an error), and `ONBOARDING_TEST_POSTGRES_URL` chooses the server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.ingestion.load import ingest_events, ingest_users
from onboarding_pipeline.ingestion.sources import FileSource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline_tests.conftest import POSTGRES_URL

CLOCK = datetime(2026, 11, 1, tzinfo=UTC)
WINDOW = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))
CONFIG = ProductConfig(aha_events=["a"], partitions_start_date="2026-01-01")

pytestmark = pytest.mark.postgres


def corpus(directory: Path) -> None:
    """One data directory holding a case of every kind of damage."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "users.csv").write_bytes(
        b"\xef\xbb\xbfuser_id,signup_at,team,team\n"
        b"1,2026-01-01T00:00:00Z,red,blue\n"
        b"2,1767225600\n"  # epoch seconds, and a short record
        b"2,1767225600,x,y\n"
        b"3,infinity,x,y\n"
        b"4,294247-01-10T04:00:54.775806Z,x,y\n"
        b"5,2026-01-01,x,y\n"
        b"5,2026-01-02,x,y\n"  # conflicting duplicate user
    )
    (directory / "events.csv").write_bytes(
        b"event_id,user_id,event_name,timestamp,properties\n"
        b"e1,1,a,2026-01-02T10:00:00+02:00,\n"
        b"e1,2,a,2026-01-02T10:00:00+02:00,\n"  # conflicting event id
        b"e1,1,a,2026-01-02T08:00:00Z,\n"  # identical repeat
        b",1,caf\xe9,2026-01-02T00:00:00Z,\n"
        b',1,"b,2026-01-02T00:00:00Z,\n'
        b",1,c,1767348000000,\n"
        b",1,d,infinity,\n"
        b',1,e,2026-01-03,"{""k"": 1}"\n'
        b",1,f,not-a-time,\n"
        b",,g,2026-01-03,\n"
        b",1,h,2026-01-03,[1]\n"
        b",9,i,2026-01-03,\n"
        b",1,j,2027-01-03,\n"
    )
    (directory / "events").mkdir(exist_ok=True)
    (directory / "events" / "empty.csv").write_bytes(b"")
    (directory / "events" / "more.jsonl").write_bytes(
        b'{"user_id": "2", "event_name": "k", "timestamp": 1767348000}\n'
        b'{"user_id": "2", "event_name": "l", "properties": ' + b"[" * 3000 + b"]" * 3000 + b"}\n"
        b"\n"
        b'{"user_id": "5", "event_name": "m", "timestamp": "2026-01-02T00:00:00"}\n'
    )
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([b"1", b"\xff"], pa.binary()),
                "event_name": ["n", "o"],
                "timestamp": pa.array([1767348000123, 1767348000123], pa.int64()),
            }
        ),
        directory / "events" / "typed.parquet",
    )


def build(warehouse: WarehouseResource, data_dir: Path) -> dict[str, pd.DataFrame]:
    source = FileSource(data_dir=str(data_dir))
    users = ingest_users(warehouse, source, CONFIG, clock=CLOCK)
    events = ingest_events(warehouse, source, CONFIG, *WINDOW, clock=CLOCK)
    tables = {
        name: warehouse.execute(warehouse.table(name))
        for name in ("raw_users", "raw_events", "quarantine", "ingestion_manifest")
    }
    tables["counts"] = pd.DataFrame(
        [
            {
                "kind": report.kind,
                "read": report.rows_read,
                "accepted": report.accepted,
                "duplicates": report.duplicates,
                "quarantined": report.quarantined,
                "collapsed": report.identical_rows_collapsed,
            }
            for report in (users, events)
        ]
    )
    return tables


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, dict]]:  # type: ignore[type-arg]
    data_dir = tmp_path_factory.mktemp("hostile")
    corpus(data_dir)
    schema = f"onboarding_hostile_{uuid.uuid4().hex[:8]}"
    postgres = WarehouseResource(url=POSTGRES_URL, schema_name=schema)
    duckdb = WarehouseResource(url=f"duckdb:///{data_dir / 'warehouse.duckdb'}")
    try:
        yield build(postgres, data_dir), build(duckdb, data_dir)
    finally:
        postgres.connect().drop_database(schema, force=True, cascade=True)
        postgres.close()
        duckdb.close()


def canonical(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    frame = frame.drop(columns=["ingested_at"], errors="ignore")
    frame = frame.sort_values(keys).reset_index(drop=True)
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            frame[column] = frame[column].astype("datetime64[us, UTC]")
        elif frame[column].dtype == object or str(frame[column].dtype) in ("str", "string"):
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


@pytest.mark.parametrize(
    ("table", "keys"),
    [
        ("raw_users", ["user_id"]),
        ("raw_events", ["event_id"]),
        ("quarantine", ["source", "row_number"]),
        ("ingestion_manifest", ["kind", "source"]),
        ("counts", ["kind"]),
    ],
)
def test_postgres_and_duckdb_agree_on_the_hostile_corpus(both, table: str, keys: list[str]) -> None:  # type: ignore[no-untyped-def]
    on_postgres, on_duckdb = both
    assert len(on_duckdb[table]) > 0
    pd.testing.assert_frame_equal(
        canonical(on_postgres[table], keys),
        canonical(on_duckdb[table][on_postgres[table].columns], keys),
        check_dtype=False,
    )


def test_the_corpus_lands_every_valid_row(both) -> None:  # type: ignore[no-untyped-def]
    _, on_duckdb = both
    assert sorted(on_duckdb["raw_events"].event_name) == ["a", "c", "e", "k", "m", "n"]
    quarantine = on_duckdb["quarantine"].set_index(["source", "row_number"])
    expected = {
        ("users.csv", 2): "malformed_row",
        ("users.csv", 4): "out_of_range_timestamp",
        ("users.csv", 5): "out_of_range_timestamp",
        ("users.csv", 7): "conflicting_duplicate_user",
        ("events.csv", 2): "conflicting_event_id",
        ("events.csv", 4): "malformed_row",
        ("events.csv", 5): "malformed_row",
        ("events.csv", 7): "out_of_range_timestamp",
        ("events.csv", 9): "unparseable_timestamp",
        ("events.csv", 10): "missing_user_id",
        ("events.csv", 11): "invalid_properties",
        ("events.csv", 12): "unknown_user",
        ("events.csv", 13): "future_timestamp",
        ("events/more.jsonl", 2): "malformed_row",
        ("events/typed.parquet", 2): "malformed_row",
    }
    assert quarantine.reason.to_dict() == expected
    counts = on_duckdb["counts"].set_index("kind")
    assert counts.loc["events", "read"] == 18 and counts.loc["events", "duplicates"] == 1


def test_signups_from_first_events_agree(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_bytes(
        b"user_id,event_name,timestamp\nu1,b,2026-01-03\nu1,a,1767312000\nu2,a,bad\nu2,c,2026-01-05\n"
    )
    schema = f"onboarding_first_{uuid.uuid4().hex[:8]}"
    postgres = WarehouseResource(url=POSTGRES_URL, schema_name=schema)
    duckdb = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    try:
        found = [build(warehouse, tmp_path)["raw_users"] for warehouse in (postgres, duckdb)]
    finally:
        postgres.connect().drop_database(schema, force=True, cascade=True)
        postgres.close()
        duckdb.close()
    on_postgres, on_duckdb = (canonical(frame, ["user_id"]) for frame in found)
    pd.testing.assert_frame_equal(on_postgres, on_duckdb[on_postgres.columns], check_dtype=False)
    assert on_duckdb.signup_at.tolist() == [
        pd.Timestamp("2026-01-02T00:00:00Z"),
        pd.Timestamp("2026-01-05T00:00:00Z"),
    ]

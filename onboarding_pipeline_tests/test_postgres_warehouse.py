"""The same asset code on PostgreSQL (127.0.0.1:5432, database `test`) and on DuckDB gives the
same tables: ingestion with every quarantine reason, sessions, features."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from onboarding_pipeline.activation.features import build_features
from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.modeling.sessions import write_sessions
from onboarding_pipeline.sample_data import generate_sample
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline_tests.conftest import POSTGRES_URL, ingest_all

WINDOW = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
CONFIG = ProductConfig(
    aha_events=["dashboard_shared"],
    partitions_start_date="2026-01-01",
    funnel_steps=["onboarding_started", "profile_completed", "workspace_created"],
)


def build(warehouse: WarehouseResource, data_dir: Path) -> dict[str, pd.DataFrame]:
    users, events = ingest_all(warehouse, data_dir, CONFIG, window=WINDOW)
    write_sessions(warehouse, timedelta(minutes=30), *WINDOW)
    features, _, _ = build_features(
        warehouse.table("raw_users"),
        warehouse.table("raw_events"),
        warehouse.table("sessions"),
        CONFIG,
        warehouse.connect(),
        stage=warehouse.temp_table,
    )
    tables = {
        name: warehouse.execute(warehouse.table(name))
        for name in ("raw_users", "raw_events", "quarantine", "sessions")
    }
    tables["user_features"] = warehouse.execute(features)
    tables["counts"] = pd.DataFrame(
        [vars(users) | {"by_source": None}, vars(events) | {"by_source": None}]
    )
    return tables


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, dict]]:  # type: ignore[type-arg]
    data_dir = tmp_path_factory.mktemp("pg-sample")
    generate_sample(data_dir, users=200, seed=4, progress=False)
    schema = f"onboarding_test_{uuid.uuid4().hex[:8]}"
    postgres = WarehouseResource(url=POSTGRES_URL, schema_name=schema)
    duckdb = WarehouseResource(url=f"duckdb:///{data_dir / 'warehouse.duckdb'}")
    try:
        yield build(postgres, data_dir), build(duckdb, data_dir)
    finally:
        postgres.connect().drop_database(schema, force=True, cascade=True)
        postgres.close()
        duckdb.close()


def canonical(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
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
        ("sessions", ["user_id", "session_start"]),
        ("user_features", ["user_id"]),
    ],
)
def test_postgres_and_duckdb_give_the_same_table(both, table: str, keys: list[str]) -> None:  # type: ignore[no-untyped-def]
    on_postgres, on_duckdb = both
    assert len(on_duckdb[table]) > 0
    pd.testing.assert_frame_equal(
        canonical(on_postgres[table], keys),
        canonical(on_duckdb[table][on_postgres[table].columns], keys),
        check_dtype=False,
    )


def test_every_quarantine_reason_is_caught_on_postgres(both) -> None:  # type: ignore[no-untyped-def]
    on_postgres, _ = both
    reasons = set(on_postgres["quarantine"].reason)
    assert {"unparseable_timestamp", "invalid_properties", "unknown_user"} <= reasons
    counts = on_postgres["counts"].set_index("kind")
    assert counts.loc["events", "rows_read"] == (
        counts.loc["events", "accepted"]
        + counts.loc["events", "duplicates"]
        + on_postgres["quarantine"].kind.eq("events").sum()
    )

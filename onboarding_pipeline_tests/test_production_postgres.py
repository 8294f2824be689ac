"""The production setup for real: the committed `dagster.yaml` (run, event-log and schedule storage
in PostgreSQL) and the warehouse in PostgreSQL, on 127.0.0.1:5432; the whole asset graph runs,
the runs are in the Postgres run storage, and every table equals the DuckDB run's; and the real
`dagster-daemon` on that instance runs the landing sensor's refresh and evaluates freshness."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import psycopg
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.definitions.freshness import FreshnessState

from onboarding_pipeline.runner import RunSummary, run_pipeline
from onboarding_pipeline.sample_data import generate_sample
from onboarding_pipeline.settings import PROJECT_ROOT, SAMPLE_DATA_DIR, Settings
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline_tests.conftest import POSTGRES_URL
from onboarding_pipeline_tests.test_postgres_warehouse import canonical

# The server of the test database (conftest skips this module when it is unreachable).
SERVER = POSTGRES_URL.rsplit("/", 1)[0]
_PARTS = urlsplit(POSTGRES_URL)
SCHEMA = "onboarding"
# Columns that record when or where a run happened, not what it computed.
RUN_SPECIFIC = {
    "written_at",
    "computed_at",
    "created_at",
    "updated_at",
    "generated_at",
    "run_id",
    "ingested_at",
}


def pg_env(database: str) -> dict[str, str]:
    """The DAGSTER_PG_* values (without prefix) of the committed dagster.yaml."""
    return {
        "USERNAME": _PARTS.username or "postgres",
        "PASSWORD": _PARTS.password or "",
        "HOST": _PARTS.hostname or "127.0.0.1",
        "PORT": str(_PARTS.port or 5432),
        "DB": database,
    }


@dataclass
class Runs:
    tables: dict[str, dict[str, pd.DataFrame]]  # engine -> table -> rows
    summaries: dict[str, RunSummary]
    asset_count: int
    database: str
    home: Path


def read_tables(settings: Settings) -> dict[str, pd.DataFrame]:
    """Every warehouse table; paths inside the run's output folder are made relative to it."""
    warehouse = WarehouseResource(url=settings.warehouse_url)
    try:
        names = warehouse.connect().list_tables(database=SCHEMA)
        tables = {name: warehouse.execute(warehouse.table(name)) for name in names}
    finally:
        warehouse.close()
    prefix = str(settings.output_dir)
    for frame in tables.values():
        for column in frame.columns:
            # astype(object): an empty timestamp column maps to a datetime Series.
            paths = frame[column].astype(object).map(lambda v: isinstance(v, str) and prefix in v)
            if paths.astype(bool).any():
                frame[column] = frame[column].str.replace(prefix, "<output>", regex=False)
    return tables


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    root = tmp_path_factory.mktemp("production")
    data = root / "data"
    generate_sample(data, users=800, seed=5, progress=False)
    shutil.copy(SAMPLE_DATA_DIR / "onboarding.yaml", data / "onboarding.yaml")
    database = f"onboarding_it_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{SERVER}/test", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')  # a generated name, not user input
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    try:
        summaries, tables = {}, {}
        with pytest.MonkeyPatch.context() as env:
            env.setenv("DAGSTER_HOME", str(home))
            for name, value in pg_env(database).items():
                env.setenv(f"DAGSTER_PG_{name}", value)
            on_postgres = Settings(
                data_dir=data,
                config_path=data / "onboarding.yaml",
                warehouse_url=f"{SERVER}/{database}",
                output_dir=root / "out-postgres",
            )
            summaries["postgres"] = run_pipeline(on_postgres, echo=lambda _: None)
            tables["postgres"] = read_tables(on_postgres)
        with pytest.MonkeyPatch.context() as env:
            env.delenv("DAGSTER_HOME", raising=False)  # the local SQLite instance
            on_duckdb = Settings(
                data_dir=data,
                config_path=data / "onboarding.yaml",
                warehouse_url=f"duckdb:///{root / 'warehouse.duckdb'}",
                output_dir=root / "out-duckdb",
            )
            summaries["duckdb"] = run_pipeline(on_duckdb, echo=lambda _: None)
            tables["duckdb"] = read_tables(on_duckdb)
        from onboarding_pipeline.code_location import build_definitions

        asset_count = len(build_definitions(on_duckdb).resolve_asset_graph().get_all_asset_keys())
        yield Runs(tables, summaries, asset_count, database, home)
    finally:
        with psycopg.connect(f"{SERVER}/test", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_the_whole_graph_succeeds_on_both(runs: Runs) -> None:
    for engine, summary in runs.summaries.items():
        assert summary.failures == {}, (engine, summary.failures)
        assert summary.events > 0 and summary.users_scored > 0


def test_runs_are_in_the_postgres_run_storage(runs: Runs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(runs.home))
    for name, value in pg_env(runs.database).items():
        monkeypatch.setenv(f"DAGSTER_PG_{name}", value)
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        finished = instance.get_runs()
        # `run` materializes asset by asset: one successful run per asset.
        assert len(finished) == runs.asset_count
        assert {run.status for run in finished} == {DagsterRunStatus.SUCCESS}
    # ... and there for anyone reading the database, not only through Dagster.
    with psycopg.connect(f"{SERVER}/{runs.database}") as con:
        rows = con.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
    assert rows == [("SUCCESS", runs.asset_count)]


def test_postgres_and_duckdb_give_the_same_tables(runs: Runs) -> None:
    on_postgres, on_duckdb = runs.tables["postgres"], runs.tables["duckdb"]
    assert set(on_postgres) == set(on_duckdb)
    assert {"raw_events", "sessions", "user_features", "activation_scores"} <= set(on_duckdb)
    compared, different = 0, {}
    for name in sorted(on_duckdb):
        duck, pg = on_duckdb[name], on_postgres[name]
        assert list(pg.columns) == list(duck.columns), name
        assert len(pg) == len(duck), name
        columns = [c for c in duck.columns if c not in RUN_SPECIFIC]
        # Sort by every comparable column: tables need no declared key for this.
        # astype(object): an empty timestamp column maps to a datetime Series.
        keys = [
            c
            for c in columns
            if not duck[c].astype(object).map(lambda v: isinstance(v, (dict, list))).any()
        ]
        try:
            pd.testing.assert_frame_equal(
                canonical(pg[columns], keys),
                canonical(duck[columns], keys),
                check_dtype=False,
                rtol=1e-6,
                obj=name,
            )
        except AssertionError as error:
            different[name] = str(error).splitlines()[:4]
        compared += len(duck) > 0
    assert different == {}
    assert compared >= 8  # most tables hold rows on this sample


def test_the_daemon_runs_the_landing_sensor_on_the_postgres_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dagster-daemon` with the committed dagster.yaml: the landing sensor sees the files, the
    queued run coordinator launches `daily_refresh`, it succeeds, and freshness is evaluated."""
    data = tmp_path / "data"
    generate_sample(data, users=300, seed=6, progress=False)  # a run, not the statistics
    shutil.copy(SAMPLE_DATA_DIR / "onboarding.yaml", data / "onboarding.yaml")
    settled = time.time() - 3600  # completely copied, as far as the sensor can tell
    for path in data.rglob("*"):
        os.utime(path, (settled, settled))
    database = f"onboarding_it_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{SERVER}/test", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        "DAGSTER_HOME": str(home),
        **{f"DAGSTER_PG_{k}": v for k, v in pg_env(database).items()},
        "ONBOARDING_DATA_DIR": str(data),
        "ONBOARDING_OUTPUT_DIR": str(tmp_path / "output"),
        "TMPDIR": str(tmp_path),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    daemon = subprocess.Popen(
        [Path(sys.executable).parent / "dagster-daemon", "run", "-w", "workspace.yaml"],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its code server stops with it
    )
    try:
        with DagsterInstance.get() as instance:
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline:
                runs = instance.get_runs()
                if runs and runs[0].is_finished:
                    break
                time.sleep(5)
            [run] = instance.get_runs()
            assert (run.job_name, run.status) == ("daily_refresh", DagsterRunStatus.SUCCESS)
            assert run.tags["onboarding/trigger"] == "landing_files"
            assert run.tags["dagster/run_key"].startswith("landing-")
            assert {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR", "FRESHNESS_DAEMON"} <= set(
                instance.get_daemon_heartbeats()
            )
            scores = AssetKey("activation_scores")
            while time.monotonic() < deadline:
                record = instance.get_freshness_state_records([scores]).get(scores)
                if record is not None and record.freshness_state == FreshnessState.PASS:
                    break
                time.sleep(5)
            else:
                pytest.fail("the freshness daemon never passed activation_scores")
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
        with psycopg.connect(f"{SERVER}/test", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

"""One writer at a time per warehouse: the PostgreSQL advisory lock every write transaction
takes, DuckDB's own file lock, bounded waits with a clear message, and two whole pipeline
runs at once on one PostgreSQL warehouse (no duplicate row anywhere, one delivery each)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql
from pytest_httpserver import HTTPServer

from onboarding_pipeline.sample_data import generate_sample
from onboarding_pipeline.settings import SAMPLE_DATA_DIR
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.lock import ENV_LOCK_TIMEOUT, WarehouseBusyError
from onboarding_pipeline_tests.conftest import POSTGRES_URL
from onboarding_pipeline_tests.delivery_stubs import Inbox, SlackStub, smtp_server

PROJECT = Path(__file__).resolve().parents[1]


def rows(start: int, count: int) -> pa.Table:
    return pa.table(
        {
            "kind": ["events"] * count,
            "source": [f"file{i}.csv" for i in range(start, start + count)],
            "size_bytes": [1] * count,
            "modified_at": pa.array([None] * count, pa.timestamp("us", tz="UTC")),
            "status": ["ingested"] * count,
            "rows_read": [1] * count,
            "rows_accepted": [1] * count,
            "duplicates": [0] * count,
            "rows_quarantined": [0] * count,
            "blank_records": [0] * count,
            "ingested_at": pa.array([0] * count, pa.timestamp("us", tz="UTC")),
        }
    )


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"onboarding_test_{uuid.uuid4().hex[:8]}"
    yield name
    cleanup = WarehouseResource(url=POSTGRES_URL, schema_name=name)
    cleanup.connect().drop_database(name, force=True, cascade=True)
    cleanup.close()


@pytest.mark.postgres
def test_postgres_second_writer_waits_then_sees_the_first_writers_rows(schema: str) -> None:
    first = WarehouseResource(url=POSTGRES_URL, schema_name=schema)
    second = WarehouseResource(url=POSTGRES_URL, schema_name=schema)
    holding, done = threading.Event(), threading.Event()
    waited: list[float] = []

    def write_slowly() -> None:
        with first.transaction():
            first._delete("ingestion_manifest", None)
            first._insert("ingestion_manifest", rows(0, 5))
            holding.set()
            time.sleep(1.5)  # a long write: the other writer must not interleave

    def write_after() -> None:
        holding.wait(30)
        started = time.monotonic()
        second.replace_all("ingestion_manifest", rows(100, 3))
        waited.append(time.monotonic() - started)
        done.set()

    threads = [threading.Thread(target=write_slowly), threading.Thread(target=write_after)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert done.is_set() and waited[0] >= 1.0  # it waited for the first commit
    table = second.table("ingestion_manifest")
    # Its DELETE ran after the first commit: only its own rows remain, none doubled.
    assert sorted(second.execute(table.source).tolist()) == [
        "file100.csv",
        "file101.csv",
        "file102.csv",
    ]
    first.close()
    second.close()


@pytest.mark.postgres
def test_postgres_writer_gives_up_after_the_timeout_naming_the_holder(schema: str) -> None:
    holder = WarehouseResource(url=POSTGRES_URL, schema_name=schema)
    waiter = WarehouseResource(url=POSTGRES_URL, schema_name=schema, lock_timeout_seconds=0.5)
    waiter.connect()
    with holder.transaction():
        holder._insert("ingestion_manifest", rows(0, 1))
        started = time.monotonic()
        with pytest.raises(WarehouseBusyError) as caught:
            waiter.replace_all("ingestion_manifest", rows(1, 1))
        assert 0.5 <= time.monotonic() - started < 5
    message = str(caught.value)
    pid = holder.connect().con.info.backend_pid
    assert f"schema {schema}" in message and f"pid {pid}" in message
    assert ENV_LOCK_TIMEOUT in message and "postgres@" not in message  # no credentials
    # Nothing of the failed write landed; the holder's row did.
    assert waiter.execute(waiter.table("ingestion_manifest").count()) == 1
    holder.close()
    waiter.close()


@pytest.mark.postgres
def test_postgres_concurrent_rewrites_never_double_rows(schema: str) -> None:
    """Many delete-then-insert rewrites from two connections at once: the table always ends
    up with exactly one writer's rows (without the lock, both DELETEs ran before either
    INSERT committed and the rows doubled)."""
    writers = [WarehouseResource(url=POSTGRES_URL, schema_name=schema) for _ in range(2)]
    for writer in writers:
        writer.connect()
    errors: list[BaseException] = []

    def rewrite(writer: WarehouseResource) -> None:
        try:
            for _ in range(8):
                writer.replace_all("ingestion_manifest", rows(0, 50))
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=rewrite, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    table = writers[0].table("ingestion_manifest")
    assert writers[0].execute(table.count()) == 50
    assert writers[0].execute(table.source.nunique()) == 50
    for writer in writers:
        writer.close()


def test_duckdb_waits_for_the_file_lock_then_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('open', flush=True);"
            " time.sleep(float(sys.argv[2]))",
            str(path),
            "3",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        busy = WarehouseResource(url=f"duckdb:///{path}", lock_timeout_seconds=0.5)
        with pytest.raises(
            WarehouseBusyError, match=r"another process has had the DuckDB file open"
        ) as caught:
            busy.connect()
        assert f"PID {holder.pid}" in str(caught.value) and ENV_LOCK_TIMEOUT in str(caught.value)
        # With room to wait, the second writer gets the file once the first lets go.
        patient = WarehouseResource(url=f"duckdb:///{path}", lock_timeout_seconds=30)
        started = time.monotonic()
        patient.replace_all("ingestion_manifest", rows(0, 2))
        assert time.monotonic() - started >= 1.0
        assert patient.execute(patient.table("ingestion_manifest").count()) == 2
        patient.close()
    finally:
        holder.kill()
        holder.wait()


def test_lock_timeout_setting_is_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_LOCK_TIMEOUT, "ten minutes")
    with pytest.raises(ValueError, match=rf"{ENV_LOCK_TIMEOUT}='ten minutes': expected a number"):
        WarehouseResource(url=f"duckdb:///{tmp_path / 'w.duckdb'}").connect()


# ---------------------------------------------------------------- two whole runs at once


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A database of its own (the CLI writes schema `onboarding`), dropped afterwards."""
    name = f"onboarding_lock_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as con:
        con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as con:
        con.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.postgres
def test_two_full_runs_at_once_on_postgres(  # type: ignore[no-untyped-def]
    httpserver: HTTPServer, postgres_database: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    generate_sample(data, users=300, seed=3, progress=False)
    shutil.copy(SAMPLE_DATA_DIR / "onboarding.yaml", data / "onboarding.yaml")
    slack = SlackStub(httpserver)
    inbox = Inbox()
    with smtp_server(inbox) as port:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("ONBOARDING_", "SLACK_", "SMTP_", "NOTION_", "ANTHROPIC_"))
            and key != "DAGSTER_HOME"
        }
        env.update(
            SLACK_BOT_TOKEN="xoxb-test",
            SLACK_API_BASE_URL=httpserver.url_for("/api/"),
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(port),
            SMTP_SECURITY="none",  # a documented value that used to fail loading
            SMTP_FROM="reports@example.com",
            # The generated data ends in the week of 2026-10-26: the Monday after, that week
            # is the one that just ended, the only one deliveries send.
            ONBOARDING_DELIVERY_CLOCK="2026-11-02T09:00:00Z",
        )
        runs = [
            subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "onboarding-pipeline"),
                    "run",
                    "--data-dir",
                    str(data),
                    "--output-dir",
                    str(tmp_path / f"out{index}"),
                    "--warehouse-url",
                    postgres_database,
                ],
                cwd=PROJECT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for index in range(2)
        ]
        time.sleep(5)
        assert [run.poll() for run in runs] == [None, None]  # both running at once
        outputs = [run.communicate(timeout=540)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]

    with psycopg.connect(postgres_database) as con:
        tables = [
            row[0]
            for row in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                ["onboarding"],
            )
        ]
        assert {"raw_events", "raw_users", "sessions", "report_deliveries"} <= set(tables)
        counts = {}
        for table in tables:
            name = sql.Identifier("onboarding", table)
            total, distinct = con.execute(
                sql.SQL(
                    "SELECT (SELECT count(*) FROM {t}), (SELECT count(*) FROM (SELECT DISTINCT * FROM {t}) d)"
                ).format(t=name)
            ).fetchone()  # type: ignore[misc]
            counts[table] = (total, distinct)
        duplicated = {t: c for t, c in counts.items() if c[0] != c[1]}
        assert duplicated == {}
        events, ids = con.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM onboarding.raw_events"
        ).fetchone()  # type: ignore[misc]
        assert events == ids > 10_000
        ledger = con.execute(
            "SELECT channel, recipient, status, attempts FROM onboarding.report_deliveries ORDER BY 1, 2"
        ).fetchall()
    recipients = ["growth-team@example.com", "stakeholders@example.com"]
    assert ledger == [
        ("email", recipients[0], "sent", 1),
        ("email", recipients[1], "sent", 1),
        ("slack", "#onboarding", "sent", 1),
    ]
    # One delivery per channel: one Slack post of the report, one email per recipient, and
    # each intervention hand-off once.
    kinds = [(m["metadata"] or {}).get("event_type") for m in slack.messages]
    assert kinds.count("onboarding_weekly_report") == 1
    handoffs = [
        m["metadata"]["event_payload"]["idempotency_key"]
        for m in slack.messages
        if (m["metadata"] or {}).get("event_type") == "onboarding_intervention_handoff"
    ]
    assert len(handoffs) == len(set(handoffs))
    assert slack.count("chat.postMessage") == 1 + len(handoffs)
    # The report once to each of its recipients; each nudge email once to its user.
    addressed = [e.rcpt_tos[0] for e in inbox.envelopes]
    assert sorted(a for a in addressed if a in recipients) == recipients
    nudged = [a for a in addressed if a not in recipients]
    assert len(nudged) == len(set(nudged))

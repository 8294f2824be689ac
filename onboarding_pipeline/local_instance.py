"""Event-log storage of the local SQLite Dagster instance (`onboarding-pipeline run`, `dagster dev`).

Dagster records one planned and one materialization event per partition and asset, each in its
own SQLite transaction. The stock consolidated storage builds a new SQLAlchemy engine for every
one of them and, in WAL mode with the default `synchronous=FULL`, syncs the disk on every
commit: most of a run over many partitions went there. This subclass keeps one engine and runs
with `synchronous=NORMAL`, which in WAL mode stays consistent after a crash (a power loss may
drop the last commits; the run history of a local instance can afford that, the warehouse is
elsewhere). The production instance (PostgreSQL, dagster.yaml) is not affected.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

import sqlalchemy as db
from dagster._core.storage.event_log.sqlite.consolidated_sqlite_event_log import (
    ConsolidatedSqliteEventLogStorage,
)
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS


class LocalSqliteEventLogStorage(ConsolidatedSqliteEventLogStorage):
    """`ConsolidatedSqliteEventLogStorage` with one engine and `synchronous=NORMAL`."""

    @cached_property
    def _engine(self) -> db.Engine:
        # SQLAlchemy's default pool for a SQLite file keeps connections open (one per thread
        # at a time): closing the last connection of a WAL database checkpoints it to disk.
        engine = db.create_engine(
            self._conn_string, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
        )

        @db.event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine

    @contextmanager
    def _connect(self) -> Iterator[db.Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn

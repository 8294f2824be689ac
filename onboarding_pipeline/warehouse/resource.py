"""`WarehouseResource`: one Ibis connection to DuckDB (embedded default) or PostgreSQL."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir
import pyarrow as pa
import sqlglot as sg
import sqlglot.expressions as sge
from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from onboarding_pipeline.warehouse.lock import (
    WarehouseBusyError,
    acquire_postgres_lock,
    is_duckdb_lock_error,
    lock_name,
    lock_timeout_seconds,
    release_postgres_lock,
    safe_location,
)
from onboarding_pipeline.warehouse.tables import TABLES, TableSpec


@dataclass(frozen=True)
class TableWrite:
    """One step of `WarehouseResource.write_together`: delete the rows of `name` matching
    `where` (all rows if None; nothing if `delete` is False), then insert `rows` (if any)."""

    name: str
    rows: ir.Table | pa.Table | None = None
    where: sge.Expression | None = None
    delete: bool = True


class WarehouseResource(ConfigurableResource):
    """Where every table of schema `onboarding` lives.

    `url` is `duckdb:///path/to/file.duckdb` or `postgresql://user@host:port/db`.

    Writes take the warehouse's write lock (see `warehouse/lock.py`): one writer at a time,
    a second one waits up to `lock_timeout_seconds` (None: `ONBOARDING_WAREHOUSE_LOCK_TIMEOUT_
    SECONDS`, default 600 s) and then fails naming the holder.
    """

    url: str
    schema_name: str = "onboarding"
    duckdb_memory_limit: str = "1536MB"
    lock_timeout_seconds: float | None = None

    _backend: Any = PrivateAttr(default=None)
    _transaction_depth: int = PrivateAttr(default=0)

    @property
    def engine(self) -> str:
        return urlparse(self.url).scheme.split("+")[0]

    def connect(self) -> Any:
        """The Ibis backend, created once per resource instance, with every table in place."""
        if self._backend is None:
            backend = self._open()
            with contextlib.suppress(Exception):  # exists already (or made by a concurrent run)
                backend.create_database(self.schema_name, force=True)
            self._backend = backend
            try:
                # Under the write lock: two runs starting at once must not both create a table.
                with self.transaction():
                    for spec in TABLES.values():
                        self.ensure_table(spec)
            except BaseException:
                self.close()
                raise
        return self._backend

    @property
    def location(self) -> str:
        """The warehouse without credentials, and its schema, for messages."""
        return f"warehouse {safe_location(self.url)} (schema {self.schema_name})"

    def _open(self) -> Any:
        if self.engine == "duckdb":
            path = duckdb_path(self.url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            timeout = lock_timeout_seconds(self.lock_timeout_seconds)
            deadline = time.monotonic() + timeout
            # DuckDB lets one process write a file at a time (its own file lock): wait for the
            # other process, bounded.
            while True:
                try:
                    return ibis.duckdb.connect(
                        str(path) if path else ":memory:",
                        # Bounded memory: large stages spill to disk instead of growing RSS;
                        # row order is never relied on, which lets inserts run in parallel.
                        memory_limit=self.duckdb_memory_limit,
                        preserve_insertion_order=False,
                    )
                except Exception as error:
                    if not is_duckdb_lock_error(error):
                        raise
                    if time.monotonic() > deadline:
                        raise WarehouseBusyError(
                            f"{self.location}: another process has had the DuckDB file open "
                            f"for more than {timeout:g} s ({error}). One run writes to a "
                            "warehouse at a time: wait for it to finish, or raise "
                            "ONBOARDING_WAREHOUSE_LOCK_TIMEOUT_SECONDS."
                        ) from None
                    time.sleep(0.5)
        if self.engine == "postgresql":
            return ibis.connect(self.url.replace("postgresql+psycopg://", "postgresql://"))
        raise ValueError(
            f"ONBOARDING_WAREHOUSE_URL: unsupported scheme {self.engine!r}; "
            "use duckdb:///path/file.duckdb or postgresql://user@host:port/db"
        )

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self.close()

    def close(self) -> None:
        if self._backend is not None:
            self._backend.disconnect()
            self._backend = None

    def ensure_table(self, spec: TableSpec) -> None:
        con = self._backend
        if spec.name not in con.list_tables(database=self.schema_name):
            con.create_table(spec.name, schema=spec.schema, database=self.schema_name)
            return
        # A warehouse made by an older version: add the nullable columns added since (a
        # required column cannot be added to existing rows; that needs a rebuild).
        existing = set(con.table(spec.name, database=self.schema_name).columns)
        for name, dtype in spec.schema.items():
            if name not in existing and dtype.nullable:
                con.raw_sql(_add_column(self.schema_name, spec.name, name, dtype, self.engine))

    def table(self, name: str) -> ir.Table:
        return self.connect().table(name, database=self.schema_name)

    def execute(self, expr: ir.Expr) -> Any:
        """A table as a pandas DataFrame (through Arrow: many times faster than Ibis' own
        conversion on wide tables), anything else as Ibis returns it."""
        if isinstance(expr, ir.Table):
            return self.connect().to_pyarrow(expr).to_pandas()
        return self.connect().execute(expr)

    def to_pyarrow(self, expr: ir.Expr) -> pa.Table:
        return self.connect().to_pyarrow(expr)

    def stage(self, name: str, data: pa.Table) -> ir.Table:
        """A temporary table holding `data` for in-warehouse processing in this session."""
        return self.temp_table(name, ibis.memtable(data))

    def temp_table(self, name: str, rows: ir.Table) -> ir.Table:
        """Materialize `rows` as a temporary table of this session, replacing any before."""
        con = self.connect()
        # Drop first: Ibis' overwrite=True builds under another name and copies the table.
        con.drop_table(name, force=True)
        return con.create_table(name, rows, temp=True)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction holding the warehouse's write lock (nested calls join the outer one).

        PostgreSQL: a transaction-scoped advisory lock, taken before the first statement so
        that a DELETE sees every row a concurrent writer committed before it. DuckDB: the
        process already holds the file exclusively."""
        con = self.connect()
        if self._transaction_depth:
            self._transaction_depth += 1
            try:
                yield
            finally:
                self._transaction_depth -= 1
            return
        self._transaction_depth = 1
        try:
            if self.engine == "postgresql":
                with con.con.transaction():
                    acquire_postgres_lock(
                        con.con,
                        lock_name(self.schema_name),
                        timeout=lock_timeout_seconds(self.lock_timeout_seconds),
                        session=False,
                        where=self.location,
                    )
                    yield
                return
            con.raw_sql(sge.Transaction())
            try:
                yield
            except BaseException:
                con.raw_sql(sge.Rollback())
                raise
            con.raw_sql(sge.Commit())
        finally:
            self._transaction_depth = 0

    @contextlib.contextmanager
    def exclusive(self, purpose: str) -> Iterator[None]:
        """Hold lock `purpose` of this warehouse across several transactions (e.g. one week's
        deliveries: read the ledger, send, record). PostgreSQL: a session-level advisory lock,
        freed on exit or when the process dies; DuckDB: the file lock this process holds."""
        con = self.connect()
        if self.engine != "postgresql":
            yield
            return
        name = lock_name(self.schema_name, purpose)
        acquire_postgres_lock(
            con.con,
            name,
            timeout=lock_timeout_seconds(self.lock_timeout_seconds),
            session=True,
            where=self.location,
        )
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a dropped connection released it already
                release_postgres_lock(con.con, name)

    def replace_table(self, name: str, rows: ir.Table) -> ir.Table:
        """Create or replace a table whose columns follow the data (e.g. `user_features`)."""
        with self.transaction():
            return self.connect().create_table(
                name, rows, database=self.schema_name, overwrite=True
            )

    def replace_all(self, name: str, rows: ir.Table | pa.Table) -> None:
        """Make `rows` the whole content of table `name`, atomically."""
        with self.transaction():
            self._delete(name, None)
            self._insert(name, rows)

    def replace_range(
        self, name: str, rows: ir.Table | pa.Table, column: str, start: datetime, end: datetime
    ) -> None:
        """Idempotent partition write: delete `start <= column < end`, insert `rows`, atomically."""
        with self.transaction():
            self._delete(name, _in_range(column, start, end))
            self._insert(name, rows)

    def replace_where_equal(
        self, name: str, rows: ir.Table | pa.Table, column: str, value: str
    ) -> None:
        """Delete the rows whose `column` equals `value`, insert `rows`, atomically."""
        condition = sge.EQ(
            this=sg.column(column, quoted=True), expression=sge.Literal.string(value)
        )
        with self.transaction():
            self._delete(name, condition)
            self._insert(name, rows)

    def write_together(self, writes: Sequence[TableWrite]) -> None:
        """Several deletes and inserts, across tables, in one transaction: all land or none
        (an error leaves every table as it was)."""
        with self.transaction():
            for write in writes:
                if write.delete:
                    self._delete(write.name, write.where)
                if write.rows is not None:
                    self._insert(write.name, write.rows)

    def insert_missing(self, name: str, rows: pa.Table, keys: list[str]) -> int:
        """Append the rows whose `keys` are not in table `name` yet (an append-only log whose
        reruns add nothing); returns how many were added."""
        if rows.num_rows == 0:
            return 0
        # Read and append under one lock: two runs must not both add the same new rows.
        with self.transaction():
            staged = self.stage(f"_new_{name}", rows)
            existing = self.table(name).select(*keys).distinct()
            fresh = staged.anti_join(existing, keys)
            added = int(self.execute(fresh.count()))
            self._insert(name, fresh)
        return added

    def update_where_null(self, name: str, rows: pa.Table, key: str, columns: list[str]) -> None:
        """Fill `columns` of table `name` from `rows` (matched on `key`) where the first of
        them is still null: values once set are never overwritten."""
        if rows.num_rows == 0:
            return
        staged_name = f"_update_{name}"
        self.stage(staged_name, rows)
        # A temporary table: found by its bare name on every engine.
        source = sg.table(staged_name, quoted=True).as_("_source")
        target = sg.table(name, db=self.schema_name, quoted=True)
        statement = sge.Update(
            this=target,
            expressions=[
                sge.EQ(
                    this=sg.column(column, quoted=True),
                    expression=sg.column(column, table="_source", quoted=True),
                )
                for column in columns
            ],
            where=sge.Where(
                this=sge.and_(
                    sge.EQ(
                        this=sg.column(key, table=name, quoted=True),
                        expression=sg.column(key, table="_source", quoted=True),
                    ),
                    sge.Is(
                        this=sg.column(columns[0], table=name, quoted=True), expression=sge.Null()
                    ),
                )
            ),
        )
        statement.set("from_", sge.From(this=source))
        with self.transaction():
            self.connect().raw_sql(statement)

    def _delete(self, name: str, condition: sge.Expression | None) -> None:
        statement = sge.Delete(this=sg.table(name, db=self.schema_name, quoted=True))
        if condition is not None:
            statement = statement.where(condition)
        self.connect().raw_sql(statement)

    def _insert(self, name: str, rows: ir.Table | pa.Table) -> None:
        columns = list(TABLES[name].schema.names) if name in TABLES else None
        if isinstance(rows, pa.Table):
            if rows.num_rows == 0:
                return
            rows = ibis.memtable(rows)
        if columns is not None:
            rows = rows.select(*columns)
        self.connect().insert(name, rows, database=self.schema_name)


@ibis.udf.scalar.builtin(name="epoch_ms")
def _duckdb_epoch_ms(moment: dt.Timestamp(timezone="UTC")) -> dt.int64:  # type: ignore[valid-type]
    """DuckDB's `epoch_ms(TIMESTAMPTZ)`: whole milliseconds since 1970 of the instant."""


def milliseconds_between(later: ir.TimestampValue, earlier: ir.TimestampValue) -> ir.IntegerValue:
    """`later - earlier` in whole milliseconds, as `later.delta(earlier, unit="millisecond")`
    counts them (millisecond boundaries crossed), on the expression's engine.

    On DuckDB as epoch arithmetic: its DATE_DIFF on time-zone-aware timestamps goes through
    ICU calendars and took five times as long over 10M events, for the same numbers.
    """
    if ibis.get_backend(later).name == "duckdb":
        return _duckdb_epoch_ms(later) - _duckdb_epoch_ms(earlier)
    return later.delta(earlier, unit="millisecond")


def duckdb_path(url: str) -> Path | None:
    """The file of a `duckdb:///path` URL (SQLAlchemy style: `duckdb:///relative/file.duckdb`,
    `duckdb:////absolute/file.duckdb`); None for an in-memory database (`duckdb://`)."""
    location = url.split("://", 1)[1].removeprefix("/")
    return Path(location) if location and location != ":memory:" else None


def where_equal(column: str, value: str) -> sge.Expression:
    """`column = value` as a sqlglot tree (a typed literal, never pasted text)."""
    return sge.EQ(this=sg.column(column, quoted=True), expression=sge.Literal.string(value))


def where_in(column: str, values: Sequence[str]) -> sge.Expression:
    """`column IN (values...)` as a sqlglot tree."""
    return sge.In(
        this=sg.column(column, quoted=True),
        expressions=[sge.Literal.string(value) for value in values],
    )


def where_in_range(column: str, start: datetime, end: datetime) -> sge.Expression:
    """`start <= column < end` as a sqlglot tree."""
    return _in_range(column, start, end)


def _add_column(schema: str, table: str, column: str, dtype: Any, engine: str) -> sge.Alter:
    """`ALTER TABLE schema.table ADD COLUMN column <type>` as a sqlglot tree."""
    dialect = "postgres" if engine == "postgresql" else engine
    kind = sge.DataType.build(ibis_type_sql(dtype, dialect), dialect=dialect)
    return sge.Alter(
        this=sg.table(table, db=schema, quoted=True),
        kind="TABLE",
        actions=[sge.ColumnDef(this=sg.to_identifier(column, quoted=True), kind=kind)],
    )


def ibis_type_sql(dtype: Any, dialect: str) -> str:
    """The engine's SQL name of an Ibis type (as Ibis itself would create the column)."""
    from ibis.backends.sql.datatypes import DuckDBType, PostgresType

    converter = DuckDBType if dialect == "duckdb" else PostgresType
    return str(converter.from_ibis(dtype).sql(dialect=dialect))


def _in_range(column: str, start: datetime, end: datetime) -> sge.Expression:
    """`start <= column < end` as a sqlglot tree: values are typed literals, never pasted text."""
    ident = sg.column(column, quoted=True)
    return sge.and_(
        sge.GTE(this=ident, expression=_timestamp_literal(start)),
        sge.LT(this=ident, expression=_timestamp_literal(end)),
    )


def _timestamp_literal(value: datetime) -> sge.Expression:
    return sge.Cast(
        this=sge.Literal.string(value.isoformat()),
        to=sge.DataType.build("TIMESTAMPTZ"),
    )

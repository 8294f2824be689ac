"""One writer at a time per warehouse, whatever started the run (CLI, UI, schedule, sensor).

PostgreSQL: every write transaction of `WarehouseResource` first takes a transaction-scoped
advisory lock named after the warehouse's schema, so a second writer's DELETE runs only after
the first one's INSERT is committed and sees it (no doubled rows). The lock ends with the
transaction, so the steps of one run (the multiprocess executor gives each its own
connection) queue per write and never wait on each other across steps; a killed process
frees it with its connection. Longer critical sections (a week's deliveries: read the
ledger, send, write the ledger) take a session-level lock of their own name.

DuckDB: the database file admits one writing process at a time (DuckDB's own file lock); a
second process waits for it at connect time.

Both waits are bounded: `ONBOARDING_WAREHOUSE_LOCK_TIMEOUT_SECONDS` (default 600 s), then a
`WarehouseBusyError` says who holds the lock.
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import urlparse

ENV_LOCK_TIMEOUT = "ONBOARDING_WAREHOUSE_LOCK_TIMEOUT_SECONDS"
DEFAULT_LOCK_TIMEOUT_SECONDS = 600.0
POLL_SECONDS = 0.2

# A 64-bit key from the lock's name (PostgreSQL's own hash: the same key in every client).
_TRY_XACT = "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))"
_TRY_SESSION = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
_UNLOCK_SESSION = "SELECT pg_advisory_unlock(hashtextextended(%s, 0))"
# Who holds it: a bigint advisory key shows in pg_locks as classid (high) and objid (low word).
_HOLDER = """
SELECT l.pid, a.application_name, a.client_addr::text, a.xact_start
FROM pg_locks AS l LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid::bigint = ((hashtextextended(%s, 0) >> 32) & 4294967295)
  AND l.objid::bigint = (hashtextextended(%s, 0) & 4294967295)
LIMIT 1
"""


class WarehouseBusyError(RuntimeError):
    """Another process kept the warehouse's write lock longer than the configured timeout."""


def lock_timeout_seconds(configured: float | None = None) -> float:
    """The configured timeout, else `ONBOARDING_WAREHOUSE_LOCK_TIMEOUT_SECONDS`, else 600 s."""
    if configured is not None:
        return configured
    text = os.environ.get(ENV_LOCK_TIMEOUT)
    if not text:
        return DEFAULT_LOCK_TIMEOUT_SECONDS
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"{ENV_LOCK_TIMEOUT}={text!r}: expected a number of seconds, e.g. 600"
        ) from None
    if value < 0:
        raise ValueError(f"{ENV_LOCK_TIMEOUT}={text!r}: must not be negative")
    return value


def lock_name(schema: str, purpose: str = "write") -> str:
    return f"onboarding-pipeline:{schema}:{purpose}"


def safe_location(url: str) -> str:
    """The warehouse URL without user or password, for messages."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{host}{port}{parsed.path}"


def acquire_postgres_lock(
    connection: Any, name: str, *, timeout: float, session: bool, where: str
) -> None:
    """Take advisory lock `name` on a psycopg connection, waiting at most `timeout` seconds.

    `session=False`: must run inside a transaction, released at its end. `session=True`:
    held until `release_postgres_lock` (or until the connection closes)."""
    statement = _TRY_SESSION if session else _TRY_XACT
    deadline = time.monotonic() + timeout
    while True:
        if connection.execute(statement, [name]).fetchone()[0]:
            return
        if time.monotonic() >= deadline:
            raise WarehouseBusyError(
                f"{where}: another writer has held lock {name!r} for more than {timeout:g} s"
                f"{_holder(connection, name)}. One run writes to a warehouse at a time: wait for "
                f"that run to finish, or raise {ENV_LOCK_TIMEOUT}."
            )
        time.sleep(POLL_SECONDS)


def release_postgres_lock(connection: Any, name: str) -> None:
    connection.execute(_UNLOCK_SESSION, [name])


def _holder(connection: Any, name: str) -> str:
    try:
        row = connection.execute(_HOLDER, [name, name]).fetchone()
    except Exception:  # the message matters more than the detail
        return ""
    if row is None:
        return ""
    pid, application, client, since = row
    parts = [f"PostgreSQL backend pid {pid}"]
    if application:
        parts.append(f"application {application!r}")
    if client:
        parts.append(f"client {client}")
    if since is not None:
        parts.append(f"transaction since {since:%Y-%m-%d %H:%M:%S %Z}".strip())
    return " (" + ", ".join(parts) + ")"


def is_duckdb_lock_error(error: BaseException) -> bool:
    """DuckDB's answer when another process has the file open for writing."""
    text = str(error).lower()
    return "lock" in text and ("conflicting" in text or "could not set lock" in text)

"""The delivery ledger (`intervention_deliveries`): one row per (user, next action, escalation
step, experiment), whatever the channel, and the status of its message.

Before a message leaves, its row says `sending` with the message's idempotency key (written and
committed first); once the service accepted it, `sent` with the provider's id. A run that finds
`sending` (the last one died, or got no answer) checks before it sends again, channel by
channel (see each adapter). Rows are written by key (delete the key, insert the row, in one
transaction), so the ledger keeps every day's rows and a rerun changes only what it did."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd
import pyarrow as pa

from onboarding_pipeline.reporting.report import clean_value
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.resource import TableWrite, where_in
from onboarding_pipeline.warehouse.tables import INTERVENTION_DELIVERIES

DUE, SENDING, SENT, FAILED = "due", "sending", "sent", "failed"
SUPPRESSED, OUTBOX, EXPIRED = "suppressed", "outbox", "expired"
# Rows a run still works on; the others are final for their key.
OPEN = (DUE, SENDING, FAILED)
# What the daily limits count: messages that left, went to the outbox, or may have left.
COUNTED = (SENT, OUTBOX, SENDING)
MAX_ERROR_CHARS = 500


def delivery_key(experiment: str, user_id: str, escalation_step: int, next_action: str) -> str:
    """The identity of one message: the same queue entry on any day or rerun has the same key."""
    parts = "\x1f".join([experiment, user_id, str(int(escalation_step)), next_action])
    return hashlib.sha256(parts.encode()).hexdigest()[:32]


def message_key(deployment: str, key: str) -> str:
    """The idempotency key sent with the message: the deployment's id keeps two installs that
    share a service (a Slack channel, a webhook receiver) from taking each other's messages."""
    return f"onboarding-intervention:{deployment}:{key}"


def short_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]


class DeliveryLedger:
    """The rows a run works on: every open row, the rows of the given keys and those
    attempted `today` (what the daily limits count). Read and changed only under the delivery
    lock (`deliver_interventions` holds it)."""

    def __init__(self, warehouse: WarehouseResource, keys: Iterable[str], today: date) -> None:
        self.warehouse = warehouse
        table = warehouse.table(INTERVENTION_DELIVERIES.name)
        wanted = sorted(set(keys))
        condition = table.status.isin(OPEN) | (table.last_attempt_on == today)
        if wanted:
            condition = condition | table.delivery_key.isin(wanted)
        frame = warehouse.execute(table.filter(condition))
        self.rows: dict[str, dict[str, Any]] = {
            str(row["delivery_key"]): {key: clean_value(value) for key, value in row.items()}
            for row in frame.to_dict(orient="records")
        }
        self._changed: set[str] = set()

    def get(self, key: str) -> dict[str, Any] | None:
        return self.rows.get(key)

    def add(self, row: dict[str, Any]) -> None:
        """A new queue entry, status `due`."""
        base: dict[str, Any] = {name: None for name in INTERVENTION_DELIVERIES.schema.names}
        base.update(row, status=DUE, attempts=0)
        self.rows[str(row["delivery_key"])] = base
        self._changed.add(str(row["delivery_key"]))

    def update(self, key: str, **values: Any) -> None:
        """Change a row. A new status without a note of its own clears the note: it said why
        the row waited (daily limit, quiet hours) or was held back, and no longer does.
        `sent_at` is the wall clock of the send (an audit time; timelines use the data's)."""
        row = self.rows[key]
        if "status" in values and values["status"] != row.get("status"):
            values = {"note": None, **values}
        row.update(values)
        if values.get("status") == SENT:
            row["sent_at"] = datetime.now(UTC)
        self._changed.add(key)

    def intend(self, key: str, idempotency_key: str, today: date) -> None:
        """Record, durably, that message `idempotency_key` is about to leave: a crash from here
        on leaves `sending`, and the next run checks before it sends again."""
        row = self.rows[key]
        self.update(
            key,
            status=SENDING,
            idempotency_key=idempotency_key,
            attempts=int(row.get("attempts") or 0) + 1,
            intent_at=datetime.now(UTC),
            last_attempt_on=today,
            last_error=None,
            note=None,
        )
        self.save()

    def save(self) -> None:
        """Write the changed rows (delete their keys, insert them) in one transaction."""
        if not self._changed:
            return
        keys = sorted(self._changed)
        now = datetime.now(UTC)
        for key in keys:
            self.rows[key]["updated_at"] = now
        schema = INTERVENTION_DELIVERIES.schema.to_pyarrow()
        columns = {name: [self.rows[key].get(name) for key in keys] for name in schema.names}
        rows = pa.Table.from_pydict(columns, schema=schema)
        self.warehouse.write_together(
            [
                TableWrite(
                    INTERVENTION_DELIVERIES.name, rows=rows, where=where_in("delivery_key", keys)
                )
            ]
        )
        self._changed.clear()

    def used_today(self, channel: str, today: date) -> int:
        """Messages of `channel` counted against today's limit."""
        return sum(
            1
            for row in self.rows.values()
            if row["channel"] == channel
            and row["status"] in COUNTED
            and as_date(row.get("last_attempt_on")) == today
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows.values()))


def as_date(value: Any) -> date | None:
    """A ledger day column's value as a date (engines return dates, datetimes or text)."""
    if value is None or value != value:  # None, NaN or NaT
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return pd.Timestamp(value).date()

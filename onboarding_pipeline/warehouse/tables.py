"""Output tables of schema `onboarding`: names and columns are a contract (see docs/tables.md)."""

from __future__ import annotations

from dataclasses import dataclass

import ibis
import ibis.expr.datatypes as dt

UTC_TIMESTAMP = dt.Timestamp(timezone="UTC")


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: ibis.Schema
    description: str


RAW_USERS = TableSpec(
    "raw_users",
    ibis.schema(
        {
            "user_id": "!string",
            "signup_at": UTC_TIMESTAMP.copy(nullable=False),
            "account_id": "string",
            "email": "string",
            "first_name": "string",
            "job_title": "string",
            "role": "string",
            "company": "string",
            "company_size": "string",
            "plan": "string",
            "use_case": "string",
            "tech_savvy": "string",
            "attributes": "string",  # JSON object of the input's extra columns
            "source": "string",
            "row_number": "int64",
        }
    ),
    "One row per accepted user; signup_at in UTC.",
)

RAW_EVENTS = TableSpec(
    "raw_events",
    ibis.schema(
        {
            "event_id": "!string",
            "user_id": "!string",
            "event_name": "!string",
            "timestamp": UTC_TIMESTAMP.copy(nullable=False),
            "account_id": "string",
            "session_id": "string",
            "properties": "string",  # JSON object
            "source": "string",
            "row_number": "int64",
        }
    ),
    "Accepted, de-duplicated events; timestamp in UTC; event_id unique.",
)

QUARANTINE = TableSpec(
    "quarantine",
    ibis.schema(
        {
            "source": "!string",
            "row_number": "int64",
            "reason": "!string",
            "field": "string",
            "raw": "string",  # the original row as a JSON object of its input strings
            "kind": "!string",  # users | events
            "event_date": "date",  # for event rows with a usable timestamp: their partition
        }
    ),
    "Every rejected input row with its source, row number, reason and original content.",
)

SESSIONS = TableSpec(
    "sessions",
    ibis.schema(
        {
            "user_id": "!string",
            "session_id": "!string",
            "session_start": UTC_TIMESTAMP.copy(nullable=False),
            "session_end": UTC_TIMESTAMP.copy(nullable=False),
            "event_count": "!int64",
            "duration_seconds": "!float64",
            "session_id_source": "!string",  # input (supplied id) | inactivity (derived)
        }
    ),
    "Sessions: a supplied session_id is kept, otherwise an inactivity gap starts a new one.",
)

TABLES = {spec.name: spec for spec in (RAW_USERS, RAW_EVENTS, QUARANTINE, SESSIONS)}

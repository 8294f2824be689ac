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

ACTIVATION_SCORES = TableSpec(
    "activation_scores",
    ibis.schema(
        {
            "user_id": "!string",
            "activation_probability": "!float64",
            "model_version": "!string",
            "scored_at": UTC_TIMESTAMP.copy(nullable=False),  # the watermark ("now")
            "population": "!string",  # onboarding (window open) | validation (held out)
            "label": "float64",  # the known outcome of validation users
            "horizon_complete": "boolean",  # false: early behaviour still accruing
        }
    ),
    "Activation probability of every user still in onboarding, plus validation predictions.",
)

_FLOAT_COLUMNS = [
    "activation_rate_with",
    "activation_rate_without",
    "lift",
    "odds_ratio",
    "ci_low",
    "ci_high",
    "p_value",
    "q_value",
    "adjusted_effect",
    "adjusted_ci_low",
    "adjusted_ci_high",
    "adjusted_p_value",
    "adjusted_q_value",
    "best_threshold_n",
    "best_threshold_days",
    "threshold_precision",
    "threshold_recall",
    "median_hours_to_event_activators",
]
CRITICAL_PATH = TableSpec(
    "critical_path",
    ibis.schema(
        {
            "segment_type": "!string",
            "segment": "!string",
            "event_name": "!string",
            "users_with_event": "!int64",
            "users_without_event": "!int64",
            **{name: "float64" for name in _FLOAT_COLUMNS[:9]},
            **{name: "float64" for name in _FLOAT_COLUMNS[9:]},
            "support_ok": "!boolean",
            "note": "string",
            "classification": "!string",  # driver | vanity | blocker | neutral
        }
    ),
    "Each early event's association with activation, naive and adjusted, overall and per segment.",
)

TABLES = {
    spec.name: spec
    for spec in (RAW_USERS, RAW_EVENTS, QUARANTINE, SESSIONS, ACTIVATION_SCORES, CRITICAL_PATH)
}

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

REPORT_DELIVERIES = TableSpec(
    "report_deliveries",
    ibis.schema(
        {
            "report_week": "!string",  # Monday of the weekly partition
            "channel": "!string",  # email | slack
            "recipient": "!string",  # email address or Slack channel
            "status": "!string",  # sent | outbox | failed | posted (Slack text sent, charts not)
            "attempts": "!int64",
            "provider_id": "string",  # SMTP Message-ID or Slack channel/ts
            "last_error": "string",
            "outbox_path": "string",  # the message written instead of sent (no credentials)
            "sent_at": UTC_TIMESTAMP,
            "updated_at": UTC_TIMESTAMP.copy(nullable=False),
        }
    ),
    "Delivery ledger of the weekly report: one row per (report week, channel, recipient).",
)

MILESTONE_PROGRESS = TableSpec(
    "milestone_progress",
    ibis.schema(
        {
            "user_id": "!string",
            "path": "!string",
            "milestone": "!string",
            "milestone_label": "!string",
            "position": "!int64",
            "weight": "!float64",
            "due_day": "!int64",
            "due_at": UTC_TIMESTAMP,
            "started_at": UTC_TIMESTAMP,  # first `started_by` event, if any
            "completed": "!boolean",
            "completed_at": UTC_TIMESTAMP,
            "completed_on_time": "!boolean",
            "is_next": "!boolean",  # the first milestone not completed, in path order
        }
    ),
    "Per user still onboarding and milestone of their path: done, when, and the next one.",
)

HEALTH_SCORES = TableSpec(
    "health_scores",
    ibis.schema(
        {
            "user_id": "!string",
            "path": "!string",
            "population": "!string",  # onboarding (as of now) | backtest (as of early horizon)
            "as_of": UTC_TIMESTAMP.copy(nullable=False),
            "health_score": "!float64",  # 0-100
            "risk_level": "!string",  # high | medium | low
            "activation_speed": "!float64",
            "feature_adoption": "!float64",
            "engagement_frequency": "!float64",
            "milestone_completion": "!float64",
            "activation_probability": "float64",  # the model's, where scored
            "days_since_signup": "!float64",
            "label": "float64",  # known outcome (backtest rows)
        }
    ),
    "Health score, its components and risk level of every user still onboarding, plus the "
    "closed-window users it is back-tested on.",
)

STALLED_USERS = TableSpec(
    "stalled_users",
    ibis.schema(
        {
            "user_id": "!string",
            "path": "!string",
            "stalled": "!boolean",
            "stall_kind": "string",  # inactive | step_incomplete
            "failure_label": "string",  # access_block | invite_failure | generic_tour_trap | ...
            "last_event_name": "string",
            "last_event_at": UTC_TIMESTAMP,
            "current_step": "string",
            "current_step_label": "string",
            "days_since_signup": "!float64",
            "hours_inactive": "!float64",
            "evidence": "string",
        }
    ),
    "Every user still onboarding: stalled or not, why, and the evidence.",
)

_QUEUE_COLUMNS = {
    "user_id": "!string",
    "path": "string",
    "next_action": "!string",
    "intervention_type": "!string",  # urgent | nudge | guide
    "channel": "!string",  # in_app | email | human
    "owner": "!string",
    "escalation_step": "!int64",
    "reason": "string",
    "holdout": "!boolean",
    "priority": "float64",  # expected gain in activation
    "failure_label": "string",
    "experiment": "!string",
    "queued_on": "!date",
    "queued_at": UTC_TIMESTAMP.copy(nullable=False),
}
INTERVENTION_QUEUE = TableSpec(
    "intervention_queue",
    ibis.schema(
        {
            **_QUEUE_COLUMNS,
            "message": "string",  # template text; null for holdout users
            "risk_level": "string",
            "health_score": "float64",
            "activation_probability": "float64",
        }
    ),
    "One row per user who needs action now, with the next action, owner and channel.",
)

INTERVENTION_LEDGER = TableSpec(
    "intervention_ledger",
    ibis.schema(
        {
            **_QUEUE_COLUMNS,
            "outcome": "string",  # activated | not_activated, once known
            "outcome_at": UTC_TIMESTAMP,
        }
    ),
    "Every queue entry ever made (one per user, day and experiment), with its outcome later.",
)

INTERVENTION_EFFECTIVENESS = TableSpec(
    "intervention_effectiveness",
    ibis.schema(
        {
            "segment_type": "!string",  # overall | intervention_type | failure_label
            "segment": "!string",
            "treated_users": "!int64",
            "treated_activated": "!int64",
            "treated_rate": "float64",
            "holdout_users": "!int64",
            "holdout_activated": "!int64",
            "holdout_rate": "float64",
            "difference": "float64",  # treated_rate - holdout_rate
            "ci_low": "float64",
            "ci_high": "float64",
            "p_value": "float64",
        }
    ),
    "Activation of treated vs holdout users whose outcome is known, with a 95% interval.",
)

NUDGES = TableSpec(
    "nudges",
    ibis.schema(
        {
            "user_id": "!string",
            "next_action": "!string",
            "intervention_type": "!string",
            "channel": "!string",
            "language": "!string",
            "message": "!string",
            "message_source": "!string",  # llm | cache | template
            "model": "string",
            "note": "string",  # why a template was used
            "written_at": UTC_TIMESTAMP.copy(nullable=False),
        }
    ),
    "The message for each treated queue row and which source wrote it.",
)

TABLES = {
    spec.name: spec
    for spec in (
        RAW_USERS,
        RAW_EVENTS,
        QUARANTINE,
        SESSIONS,
        ACTIVATION_SCORES,
        CRITICAL_PATH,
        MILESTONE_PROGRESS,
        HEALTH_SCORES,
        STALLED_USERS,
        INTERVENTION_QUEUE,
        INTERVENTION_LEDGER,
        INTERVENTION_EFFECTIVENESS,
        NUDGES,
        REPORT_DELIVERIES,
    )
}

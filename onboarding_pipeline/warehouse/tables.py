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
            # What went wrong, in words; for conflicts the kept row (file and row number).
            "detail": "string",
        }
    ),
    "Every rejected input row with its source, row number, reason and original content.",
)

INGESTION_MANIFEST = TableSpec(
    "ingestion_manifest",
    ibis.schema(
        {
            "kind": "!string",  # users | events
            "source": "!string",  # file, relative to the data directory
            "size_bytes": "int64",
            "modified_at": UTC_TIMESTAMP,  # the file's modification time
            "status": "!string",  # ingested | skipped_empty
            "rows_read": "!int64",
            "rows_accepted": "!int64",
            "duplicates": "!int64",
            "rows_quarantined": "!int64",
            "blank_records": "!int64",
            "ingested_at": UTC_TIMESTAMP.copy(nullable=False),
        }
    ),
    "The file versions the current raw tables were built from, one row per file and kind.",
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
            # P(activate before the window closes | not activated by age_hours, behaviour so
            # far); NULL when no model has been accepted yet (scoring_status says so).
            "activation_probability": "float64",
            "model_version": "string",
            "scored_at": UTC_TIMESTAMP.copy(nullable=False),  # the watermark ("now")
            "population": "!string",  # onboarding (window open) | validation (held out)
            "age_hours": "!float64",  # age since signup the probability is conditioned on
            "label": "float64",  # the known outcome of validation users
            "horizon_complete": "boolean",  # false: still inside the observation horizon
            "scoring_status": "!string",  # model | no_accepted_model
        }
    ),
    "Activation probability of every user still onboarding, given their age and that they have "
    "not activated yet, plus the validation predictions at the main landmark.",
)

_CRITICAL_PATH_FLOATS = [
    "activation_rate_with",
    "activation_rate_without",
    "lift",
    "odds_ratio",  # Haldane-corrected (0.5 added to every cell)
    "ci_low",
    "ci_high",
    "p_value",
    "q_value",
    "total_effect",  # log-odds, adjusted for segments, engagement and earlier events
    "total_ci_low",
    "total_ci_high",
    "total_p_value",
    "total_q_value",
    "direct_effect",  # log-odds, also holding every other event fixed
    "direct_ci_low",
    "direct_ci_high",
    "direct_p_value",
    "direct_q_value",
    "e_value",
    "e_value_ci",
    "best_threshold_n",
    "best_threshold_days",
    "threshold_phi",
    "threshold_precision",
    "threshold_precision_ci_low",
    "threshold_precision_ci_high",
    "threshold_recall",
    "threshold_recall_ci_low",
    "threshold_recall_ci_high",
    "threshold_lift",
    "threshold_lift_ci_low",
    "threshold_lift_ci_high",
    "median_hours_to_event_activators",
]
CRITICAL_PATH = TableSpec(
    "critical_path",
    ibis.schema(
        {
            "landmark_hours": "!int64",
            "segment_type": "!string",
            "segment": "!string",
            "event_name": "!string",
            "population_users": "!int64",
            "users_with_event": "!int64",
            "users_without_event": "!int64",
            **{name: "float64" for name in _CRITICAL_PATH_FLOATS},
            "works_through": "string",  # prerequisite: the later step it matters through
            "aliased_with": "string",  # the event this one duplicates (judged once, there)
            "tracked_since": "string",  # newly tracked: judged on signups after this date
            "note": "string",
            # driver | prerequisite | vanity | blocker | no_effect | inconclusive
            "classification": "!string",
        }
    ),
    "Each early event's association with later activation per landmark population (closed "
    "windows, not activated by the landmark): naive, total and direct effects, overall and per "
    "segment.",
)

LANDMARK_POPULATIONS = TableSpec(
    "landmark_populations",
    ibis.schema(
        {
            "landmark_hours": "!int64",
            "closed_window_users": "!int64",
            "activated_before_landmark": "!int64",
            "share_activated_before": "float64",
            "median_hours_to_activation_early": "float64",
            "shared_events_early_activators": "string",
            "population_users": "!int64",
            "activated_after_landmark": "!int64",
            "activation_rate": "float64",
            "activation_rate_ci_low": "float64",
            "activation_rate_ci_high": "float64",
        }
    ),
    "Per landmark: users who activated before it (reported apart) and the population left.",
)

REPORT_DELIVERIES = TableSpec(
    "report_deliveries",
    ibis.schema(
        {
            "report_week": "!string",  # Monday of the weekly partition
            "channel": "!string",  # email | slack | notion
            "recipient": "!string",  # email address, Slack channel or Notion database
            # sending (intent recorded, outcome unknown: checked before any resend) | sent |
            # outbox | failed | posted (Slack text sent, charts not yet)
            "status": "!string",
            "attempts": "!int64",
            "provider_id": "string",  # SMTP Message-ID, Slack channel/ts or Notion page id
            "last_error": "string",
            "outbox_path": "string",  # the message written instead of sent (no credentials)
            "sent_at": UTC_TIMESTAMP,
            "updated_at": UTC_TIMESTAMP.copy(nullable=False),
            # The message's identity across attempts: the email Message-ID, the key in the
            # Slack message's metadata, the Notion page's key.
            "idempotency_key": "string",
            "intent_at": UTC_TIMESTAMP,  # when `sending` was recorded (history is searched from it)
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
    "target_step": "string",  # the path milestone the action pushes toward
    "intervention_type": "!string",  # urgent | nudge | guide
    "channel": "!string",  # in_app | email | human; none for holdout rows
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
            # At assignment: the covariate the effectiveness read-out adjusts for (CUPAC).
            "activation_probability": "float64",
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
            "p_value": "float64",  # anytime-valid, like the interval
            # Regression-adjusted for the activation probability at assignment (CUPAC).
            "adjusted_difference": "float64",
            "adjusted_ci_low": "float64",
            "adjusted_ci_high": "float64",
            "adjusted_p_value": "float64",
            "variance_reduction": "float64",  # 1 - adjusted variance / plain variance
            "q_value": "float64",  # Benjamini-Hochberg over the subgroup rows
            "pending_users": "!int64",  # assigned, follow-up not over yet
            "note": "string",  # why a row has no estimate
        }
    ),
    "Activation of treated vs holdout users at a fixed follow-up from assignment, plain and "
    "regression-adjusted, with anytime-valid intervals.",
)

STEP_EXPERIMENTS = TableSpec(
    "step_experiments",
    ibis.schema(
        {
            "step": "!string",  # the path milestone the nudges pushed toward
            "step_events": "string",
            "treated_users": "!int64",
            "holdout_users": "!int64",
            "treated_step_rate": "float64",
            "holdout_step_rate": "float64",
            "step_itt": "float64",  # effect of the nudge on doing the step
            "activation_itt": "float64",  # effect of the nudge on activation
            "first_stage_f": "float64",
            "step_effect": "float64",  # effect of doing the step on activation (IV)
            "ci_low": "float64",
            "ci_high": "float64",
            "evidence": "!string",  # experiment | not_confirmed | not_estimated
            "note": "string",
        }
    ),
    "Causal effect of doing each nudged step on activation, from the randomized holdout "
    "(instrumental variable), at the effectiveness follow-up.",
)

USER_TIMELINES = TableSpec(
    "user_timelines",
    ibis.schema(
        {
            "user_id": "!string",
            "at": UTC_TIMESTAMP,
            # signup | milestone | activated | stalled | queued | held_out | delivered | outcome
            "kind": "!string",
            "detail": "!string",
            "source": "!string",  # the table the row comes from
        }
    ),
    "How each user the experiment assigned moved: signup, milestones, stalls, queue entries, "
    "activation and outcome, in order.",
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

INTERVENTION_DELIVERIES = TableSpec(
    "intervention_deliveries",
    ibis.schema(
        {
            # Hash of (experiment, user, escalation step, next action): one message each.
            "delivery_key": "!string",
            "user_id": "!string",
            "next_action": "!string",
            "escalation_step": "!int64",
            "experiment": "!string",
            "channel": "!string",  # in_app | email | human
            "owner": "string",
            "recipient": "string",  # the Slack channel of a hand-off; null for the user's own
            "intervention_type": "string",
            "priority": "float64",
            "reason": "string",  # the queue's evidence, for the hand-off
            "message": "string",  # the nudge (plain text) as it was when queued
            "queued_on": "!date",
            # due (waiting: limit, quiet hours) | sending (intent recorded, outcome unknown:
            # checked before any resend) | sent | failed | suppressed | outbox | expired
            "status": "!string",
            "note": "string",  # why a row waits, was suppressed or expired
            "attempts": "!int64",
            "provider_id": "string",  # SMTP Message-ID, webhook response id, Slack channel/ts
            "last_error": "string",
            "idempotency_key": "string",  # carries the deployment id
            "intent_at": UTC_TIMESTAMP,
            "sent_at": UTC_TIMESTAMP,
            "last_attempt_on": "date",  # the day the daily limits count it on
            "outbox_path": "string",
            "updated_at": UTC_TIMESTAMP.copy(nullable=False),
        }
    ),
    "Delivery ledger of the intervention queue: one row per (user, next action, escalation "
    "step, experiment) and its channel, with status, provider id and attempts.",
)

TABLES = {
    spec.name: spec
    for spec in (
        RAW_USERS,
        RAW_EVENTS,
        QUARANTINE,
        INGESTION_MANIFEST,
        SESSIONS,
        ACTIVATION_SCORES,
        CRITICAL_PATH,
        LANDMARK_POPULATIONS,
        MILESTONE_PROGRESS,
        HEALTH_SCORES,
        STALLED_USERS,
        INTERVENTION_QUEUE,
        INTERVENTION_LEDGER,
        INTERVENTION_EFFECTIVENESS,
        STEP_EXPERIMENTS,
        USER_TIMELINES,
        NUDGES,
        REPORT_DELIVERIES,
        INTERVENTION_DELIVERIES,
    )
}

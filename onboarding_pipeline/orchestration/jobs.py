"""Jobs: the daily refresh (ingestion down to the intervention queue and nudges) and the weekly
report with its deliveries. Selections are by group, so assets added to a group later join the
job without an edit here."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    Backoff,
    Jitter,
    RetryPolicy,
    define_asset_job,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

REFRESH_GROUPS = ("ingestion", "modeling", "activation", "engagement")
REPORT_GROUPS = ("reporting",)

DAILY_REFRESH_JOB = "daily_refresh"
WEEKLY_REPORT_JOB = "weekly_report_job"

# Runs that rewrite the warehouse tables carry this tag; dagster.yaml lets one of them run at a
# time (a schedule tick and a landing-file tick would otherwise replace the same tables at once).
REFRESH_TAG = "onboarding/refresh"
PIPELINE_TAG = "onboarding/pipeline"
# Run retries (dagster.yaml `run_retries`) only for a crashed run worker: asset failures are
# retried per step by the op retry policy, and a failed blocking check must not be retried.
RUN_RETRY_TAGS = {"dagster/max_retries": "1", "dagster/retry_on_asset_or_op_failure": "false"}

# Transient failures (a locked file, a dropped database connection, a Slack 5xx after the
# client's own retries) get two more tries, 30 s then ~60 s apart.
STEP_RETRIES = RetryPolicy(
    max_retries=2, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)

refresh_selection = AssetSelection.groups(*REFRESH_GROUPS)
report_selection = AssetSelection.groups(*REPORT_GROUPS)


def daily_refresh_job() -> UnresolvedAssetJobDefinition:
    return define_asset_job(
        DAILY_REFRESH_JOB,
        selection=refresh_selection,
        description=(
            "Ingest the landing files and refresh every table down to the intervention queue and "
            "nudges. Partitioned assets run over a partition range (range tags); a failed "
            "blocking check stops everything downstream of it."
        ),
        run_tags={PIPELINE_TAG: "daily_refresh", REFRESH_TAG: "true", **RUN_RETRY_TAGS},
        op_retry_policy=STEP_RETRIES,
    )


def weekly_report_job() -> UnresolvedAssetJobDefinition:
    return define_asset_job(
        WEEKLY_REPORT_JOB,
        selection=report_selection,
        description="Render the week's report and deliver it to Slack and email (once per week).",
        run_tags={PIPELINE_TAG: "weekly_report", **RUN_RETRY_TAGS},
        op_retry_policy=STEP_RETRIES,
    )

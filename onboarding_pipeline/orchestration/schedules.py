"""Schedules: the daily refresh at 01:30 UTC and the weekly report on Monday 08:00 local time.

Partitions are UTC days. The daily run covers the day before yesterday up to today: yesterday
is complete by 01:30 UTC, late events of the day before still land, and `sessions[d]` reads
`raw_events[d-1..d+1]`, so re-ingesting yesterday must rebuild the sessions either side of it.
Older late files are the landing sensor's job (it re-runs the full range).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from dagster import (
    AssetCheckKey,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    TimeWindowPartitionsDefinition,
    schedule,
)
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG as RANGE_END_TAG
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG as RANGE_START_TAG

DAILY_CRON = "30 1 * * *"
WEEKLY_CRON = "0 8 * * 1"
# Days before the scheduled day that the daily run re-ingests (see the module docstring).
DAILY_LOOKBACK_DAYS = 2


def daily_partition_range(
    partitions: TimeWindowPartitionsDefinition, now: datetime, lookback_days: int
) -> tuple[str, str] | None:
    """The keys of the partitions holding any day from `lookback_days` before `now`'s day up to
    `now`, clipped to the partitions that exist at `now` (weekly or monthly partitions: the one
    or two that hold those days)."""
    keys = partitions.get_partition_keys(current_time=now)
    first_day = (now - timedelta(days=lookback_days)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    in_range: list[str] = []
    for key in reversed(keys):
        window = partitions.time_window_for_partition_key(key)
        if window.end <= first_day:
            break
        if window.start <= now:
            in_range.insert(0, key)
    return (in_range[0], in_range[-1]) if in_range else None


def build_daily_refresh_schedule(
    job: UnresolvedAssetJobDefinition, partitions: TimeWindowPartitionsDefinition
) -> ScheduleDefinition:
    @schedule(
        name="daily_refresh_schedule",
        job=job,
        cron_schedule=DAILY_CRON,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=(
            f"Every day at 01:30 UTC: {job.name} over the partitions holding the last "
            f"{DAILY_LOOKBACK_DAYS + 1} days (late events, and sessions that read the "
            "neighbouring partitions)."
        ),
    )
    def daily_refresh_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        span = daily_partition_range(
            partitions, context.scheduled_execution_time, DAILY_LOOKBACK_DAYS
        )
        if span is None:
            return SkipReason(f"no partition yet (they start on {partitions.start:%Y-%m-%d})")
        return RunRequest(
            run_key=f"daily-{span[1]}",
            tags={RANGE_START_TAG: span[0], RANGE_END_TAG: span[1]},
        )

    return daily_refresh_schedule


def last_complete_partition(
    partitions: TimeWindowPartitionsDefinition, now: datetime
) -> str | None:
    """The latest partition whose window has ended by `now` (last week's, on a Monday)."""
    for key in reversed(partitions.get_partition_keys(current_time=now)):
        if partitions.time_window_for_partition_key(key).end <= now:
            return key
    return None


def failed_blocking_checks(
    context: ScheduleEvaluationContext, checks: Sequence[AssetCheckKey]
) -> list[str]:
    """Blocking checks whose latest evaluation failed: the data they guard is not fit to report."""
    failed = []
    for key in checks:
        history = context.instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
        if history and history[0].status == AssetCheckExecutionRecordStatus.FAILED:
            failed.append(f"{key.asset_key.to_user_string()}:{key.name}")
    return failed


def build_weekly_report_schedule(
    job: UnresolvedAssetJobDefinition,
    partitions: TimeWindowPartitionsDefinition | None,
    timezone: str,
    blocking_checks: Sequence[AssetCheckKey],
) -> ScheduleDefinition:
    @schedule(
        name="weekly_report_schedule",
        job=job,
        cron_schedule=WEEKLY_CRON,
        execution_timezone=timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description=(
            f"Mondays 08:00 ({timezone}): the report of the week that just ended, delivered once. "
            "Skipped while a blocking check upstream is failing."
        ),
    )
    def weekly_report_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        failed = failed_blocking_checks(context, blocking_checks)
        if failed:
            # The refresh run that failed them already alerted (run-failure sensor).
            return SkipReason(f"blocking checks failing upstream: {', '.join(sorted(failed))}")
        now = context.scheduled_execution_time
        if partitions is None:
            return RunRequest(run_key=f"report-{now:%Y-%m-%d}")
        week = last_complete_partition(partitions, now)
        if week is None:
            return SkipReason("no complete week yet")
        return RunRequest(run_key=f"report-{week}", partition_key=week)

    return weekly_report_schedule

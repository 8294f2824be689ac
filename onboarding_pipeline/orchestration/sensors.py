"""Sensors: new, changed or removed landing files start a refresh; a failed run is posted to
Slack."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dagster import (
    DagsterEventType,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    TimeWindowPartitionsDefinition,
    run_failure_sensor,
    sensor,
)
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG as RANGE_END_TAG
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG as RANGE_START_TAG

from onboarding_pipeline.ingestion.readers import InputError
from onboarding_pipeline.ingestion.sources import FileSource, SourceResource
from onboarding_pipeline.reporting.slack import SlackResource

# A file modified more recently than this may still be being copied; the next tick takes it.
SETTLE_SECONDS = 30

# file path (relative to the data dir) -> [mtime in ns, size in bytes]
FileStates = dict[str, list[int]]


@dataclass(frozen=True)
class LandingFiles:
    """The users and events files of the data directory: those that have stopped changing
    (with their state) and the names of every file present, settled or not."""

    settled: FileStates
    present: frozenset[str]


def landing_files(source: FileSource, now: float, settle_seconds: float) -> LandingFiles:
    settled: FileStates = {}
    present: set[str] = set()
    for path in [*source.users_files(), *source.events_files()]:
        try:
            stat = path.stat()
        except FileNotFoundError:  # moved away since the listing
            continue
        name = str(path.relative_to(source.root))
        present.add(name)
        if now - stat.st_mtime >= settle_seconds:
            settled[name] = [stat.st_mtime_ns, stat.st_size]
    return LandingFiles(settled, frozenset(present))


def changed_files(previous: FileStates, current: FileStates) -> FileStates:
    """Files that are new or whose modification time or size changed since the cursor."""
    return {name: state for name, state in current.items() if previous.get(name) != state}


def removed_files(previous: FileStates, present: frozenset[str]) -> FileStates:
    """Files of the cursor that are gone from the directory, with the state they had (a file
    still being copied is present, not removed)."""
    return {name: state for name, state in previous.items() if name not in present}


def run_key_for(changed: FileStates, removed: FileStates | None = None) -> str:
    """The same file versions (and removals of the same versions) always give the same key,
    so Dagster never launches them twice (even if the cursor is lost)."""
    versions: dict[str, object] = dict(changed)
    # A removal is keyed by the version that went, so removing a file put back later (a new
    # version) runs again.
    versions |= {f"removed:{name}": state for name, state in (removed or {}).items()}
    digest = hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:24]
    return f"landing-{digest}"


def build_landing_files_sensor(
    job: UnresolvedAssetJobDefinition,
    partitions: TimeWindowPartitionsDefinition,
    settle_seconds: float = SETTLE_SECONDS,
) -> SensorDefinition:
    @sensor(
        name="landing_files_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Starts a refresh over every partition when a users or events file in the data "
            "directory is new, has changed (modification time or size) or was removed (its rows "
            "are then deleted). The cursor holds each file's state; the run key is a hash of "
            "the changed and removed file states."
        ),
    )
    def landing_files_sensor(
        context: SensorEvaluationContext, source: SourceResource
    ) -> SensorResult | SkipReason:
        if not isinstance(source, FileSource):
            # A connector pulls its own landing folder inside the run (`source_sync`).
            return SkipReason(
                f"the source is a {type(source).__name__}: the daily refresh syncs it"
            )
        try:
            files = landing_files(source, time.time(), settle_seconds)
        except InputError as error:
            # No users or no events file at all (e.g. an unmounted volume): no run, so nothing
            # is deleted, and the cursor stays for when the files are back.
            return SkipReason(f"nothing to ingest yet: {error}")
        previous: FileStates = json.loads(context.cursor) if context.cursor else {}
        changed = changed_files(previous, files.settled)
        # A removed file starts a refresh too: ingestion deletes its rows from raw_events
        # (every date), and everything downstream is rebuilt without them.
        removed = removed_files(previous, files.present)
        # Files still being copied keep their previous state until they settle.
        current = {
            name: state
            for name, state in previous.items()
            if name in files.present and name not in files.settled
        } | files.settled
        cursor = json.dumps(current, sort_keys=True)
        if not changed and not removed:
            return SensorResult(skip_reason=SkipReason("no new or changed files"), cursor=cursor)
        keys = partitions.get_partition_keys()
        if not keys:
            return SensorResult(
                skip_reason=SkipReason(
                    f"no daily partition yet (from {partitions.start:%Y-%m-%d})"
                ),
                cursor=cursor,
            )
        # The full range, not the changed file's days: ingestion re-reads every file on each
        # run anyway (event ids make that harmless), a new users file can accept events on any
        # day, and a range is one single-run backfill, so the cost is the same read.
        tags = {
            RANGE_START_TAG: keys[0],
            RANGE_END_TAG: keys[-1],
            "onboarding/trigger": "landing_files",
            "onboarding/changed_files": ", ".join(sorted(changed))[:200],
        }
        if removed:
            tags["onboarding/removed_files"] = ", ".join(sorted(removed))[:200]
        request = RunRequest(run_key=run_key_for(changed, removed), tags=tags)
        return SensorResult(run_requests=[request], cursor=cursor)

    return landing_files_sensor


@dataclass(frozen=True)
class RunFailure:
    """What the alert says about a failed run."""

    run_id: str
    job_name: str
    failed_steps: Mapping[str, str]  # step -> innermost error message
    failed_assets: list[str]  # assets of the failed steps
    skipped_assets: list[str]  # planned, neither materialized nor failed: upstream failed


def describe_failure(context: RunFailureSensorContext) -> RunFailure:
    run = context.dagster_run
    planned: dict[str, list[str]] = {}
    materialized: set[str] = set()
    failed_steps: dict[str, str] = {}
    for record in context.instance.all_logs(
        run.run_id,
        of_type={
            DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
            DagsterEventType.ASSET_MATERIALIZATION,
            DagsterEventType.STEP_FAILURE,
        },
    ):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED and event.asset_key:
            planned.setdefault(event.step_key or "", []).append(event.asset_key.to_user_string())
        elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION and event.asset_key:
            materialized.add(event.asset_key.to_user_string())
        elif event.event_type == DagsterEventType.STEP_FAILURE and event.step_key:
            error = event.step_failure_data.error
            # Dagster wraps the real exception (and retries wrap it again); the cause says why.
            while error is not None and error.cause is not None:
                error = error.cause
            failed_steps[event.step_key] = error.message.strip() if error else "unknown error"
    failed_assets = sorted({asset for step in failed_steps for asset in planned.get(step, [])})
    skipped = sorted(
        {asset for assets in planned.values() for asset in assets}
        - materialized
        - set(failed_assets)
    )
    return RunFailure(run.run_id, run.job_name, failed_steps, failed_assets, skipped)


def _escape(text: str) -> str:
    # Slack mrkdwn control characters; error texts may hold `<`, `>` or `&`.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def failure_message(
    failure: RunFailure, ui_url: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Plain-text fallback and Block Kit blocks for one failed run."""
    run = (
        f"<{ui_url.rstrip('/')}/runs/{failure.run_id}|{failure.run_id}>"
        if ui_url
        else failure.run_id
    )
    text = f"Dagster run {failure.run_id} of job {failure.job_name} failed"
    lines = [f":rotating_light: *Run {run} of job `{_escape(failure.job_name)}` failed*"]
    if failure.failed_assets:
        lines.append("*Failed assets:* " + ", ".join(f"`{a}`" for a in failure.failed_assets))
    if failure.skipped_assets:
        lines.append("*Not refreshed (upstream failed):* " + ", ".join(failure.skipped_assets))
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}
    ]
    for step, message in sorted(failure.failed_steps.items()):
        # A section's text is limited to 3000 characters.
        body = f"*{_escape(step)}*\n```{_escape(message)[:2500]}```"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": body}})
    return text, blocks[:50]


def build_run_failure_slack_sensor(ui_url: str | None = None) -> SensorDefinition:
    @run_failure_sensor(
        name="run_failure_slack_sensor",
        default_status=DefaultSensorStatus.RUNNING,
        description="Posts every failed run of this code location to Slack: the run, its job, "
        "the failed assets with their errors, and what was not refreshed.",
    )
    def run_failure_slack_sensor(
        context: RunFailureSensorContext, slack: SlackResource
    ) -> SkipReason | None:
        client = slack.client()
        failure = describe_failure(context)
        if client is None:
            context.log.warning(
                f"run {failure.run_id} failed; SLACK_BOT_TOKEN is not set, so no alert was posted"
            )
            return SkipReason("SLACK_BOT_TOKEN not set")
        text, blocks = failure_message(failure, ui_url)
        client.chat_postMessage(channel=slack.channel, text=text, blocks=blocks)
        return None

    return run_failure_slack_sensor

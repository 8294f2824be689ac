"""Ingestion assets: `raw_users` and time-partitioned `raw_events` (daily by default), with
inline checks."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionsDefinition,
    asset,
)

from onboarding_pipeline.connectors.assets import source_sync
from onboarding_pipeline.ingestion.load import IngestionReport, ingest_events, ingest_users
from onboarding_pipeline.ingestion.quality import (
    duplicate_event_ids,
    event_bounds_violations,
    event_key_violations,
    user_key_violations,
    users_table_state,
)
from onboarding_pipeline.ingestion.sources import SourceResource
from onboarding_pipeline.ingestion.validation import ANONYMOUS_REASON
from onboarding_pipeline.resources import ProductConfigResource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.metadata import preview, table_definition_metadata
from onboarding_pipeline.warehouse.tables import QUARANTINE, RAW_EVENTS, RAW_USERS

KINDS = {"ibis", "table"}


def report_metadata(report: IngestionReport) -> dict[str, Any]:
    """The reconciliation that proves nothing was lost, per reason and per file."""
    sources = "\n".join(
        f"| {source} | " + " | ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v) + " |"
        for source, counts in sorted(report.by_source.items())
    )
    metadata: dict[str, Any] = {
        "rows_read": report.rows_read,
        "rows_accepted": report.accepted,
        "duplicates": report.duplicates,
        "identical_rows_collapsed": report.identical_rows_collapsed,
        "rows_quarantined": report.quarantined,
        "rows_anonymous": report.anonymous,
        "quarantined_by_reason": MetadataValue.json(
            dict(sorted(report.quarantined_by_reason.items()))
        ),
        "reconciled": MetadataValue.md(
            f"read {report.rows_read} = accepted {report.accepted} + duplicates "
            f"{report.duplicates} + quarantined {report.quarantined}"
        ),
        "by_file": MetadataValue.md("| file | counts |\n|---|---|\n" + sources),
        "dagster/row_count": report.rows_written,
        "empty": report.empty_note() is not None,
    }
    if report.empty_note():
        metadata["empty_reason"] = report.empty_note()
    if report.blank_records:
        metadata["blank_records"] = report.blank_records
    if report.skipped_files:
        metadata["skipped_files"] = MetadataValue.json(report.skipped_files)
    if report.removed_files:
        metadata["removed_files"] = MetadataValue.json(report.removed_files)
        metadata["restored_rows"] = report.restored_rows
    if report.kind == "users":
        metadata["signup_source"] = report.signup_source
    if report.warnings:
        metadata["warnings"] = MetadataValue.md("\n".join(f"- {w}" for w in report.warnings))
    return metadata


def _log_warnings(context: AssetExecutionContext, report: IngestionReport) -> None:
    for warning in report.warnings:
        context.log.warning(warning)
    if report.empty_note():
        context.log.info(f"{report.kind}: {report.empty_note()}")


def _inspect(warehouse: WarehouseResource, kind: str, where: str) -> str:
    """How to look at the rows behind a failed check (text for a person, never executed)."""
    return (
        f"inspect them: SELECT source, row_number, reason, field, detail, raw FROM "
        f"{warehouse.schema_name}.{QUARANTINE.name} WHERE kind = '{kind}'{where}"
    )


@asset(
    group_name="ingestion",
    kinds=KINDS,
    metadata=table_definition_metadata(RAW_USERS),
    deps=[source_sync],
    check_specs=[AssetCheckSpec("user_keys_valid", asset="raw_users", blocking=True)],
)
def raw_users(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    source: SourceResource,
    product_config: ProductConfigResource,
) -> Iterator[MaterializeResult[None] | AssetCheckResult]:
    """Every accepted user of the input, one row each, signup_at in UTC.

    Rejected rows go to `onboarding.quarantine` (kind `users`) with the reason; a user id
    repeated with identical content is counted as a duplicate, with other content it is a
    conflict and the first row wins.
    """
    config = product_config.load()
    report = ingest_users(warehouse, source, config, clock=datetime.now(UTC))
    _log_warnings(context, report)
    context.log.info(f"users: {report.accepted} accepted, {report.quarantined} quarantined")
    yield MaterializeResult(
        metadata={
            **report_metadata(report),
            "preview": preview(warehouse, warehouse.table(RAW_USERS.name)),
        }
    )
    problems = user_key_violations(warehouse)
    yield AssetCheckResult(
        check_name="user_keys_valid",
        passed=not problems,
        metadata=problems,
        description=None
        if not problems
        else (
            f"raw_users breaks its keys ({problems}); no setting governs this: ingestion never "
            f"writes such rows, so something else wrote {warehouse.schema_name}.raw_users. "
            "Re-materialize raw_users; the rejected input rows are in quarantine, "
            + _inspect(warehouse, "users", "")
        ),
    )


def build_raw_events(partitions: TimeWindowPartitionsDefinition) -> AssetsDefinition:
    @asset(
        name="raw_events",
        group_name="ingestion",
        kinds=KINDS,
        partitions_def=partitions,
        # One run reads the files once for a whole backfill range.
        backfill_policy=BackfillPolicy.single_run(),
        deps=[raw_users, source_sync],
        metadata=table_definition_metadata(RAW_EVENTS),
        check_specs=[
            AssetCheckSpec("event_keys_valid", asset="raw_events", blocking=True),
            AssetCheckSpec("event_ids_unique", asset="raw_events", blocking=True),
            AssetCheckSpec("timestamps_within_bounds", asset="raw_events"),
            AssetCheckSpec("quarantine_share_under_threshold", asset="raw_events", blocking=True),
            AssetCheckSpec("anonymous_share_under_threshold", asset="raw_events", blocking=True),
        ],
    )
    def raw_events(
        context: AssetExecutionContext,
        warehouse: WarehouseResource,
        source: SourceResource,
        product_config: ProductConfigResource,
    ) -> Iterator[MaterializeResult[None] | AssetCheckResult]:
        """Accepted, de-duplicated events of the day(s), timestamps in UTC.

        All input files are validated on every run (so duplicates are found across files and
        days) and the partition's rows are replaced atomically: re-runs change nothing.
        Rejected rows land in `onboarding.quarantine` with file, row, reason and content.
        """
        config = product_config.load()
        window = context.partition_time_window
        clock = datetime.now(UTC)
        report = ingest_events(warehouse, source, config, window.start, window.end, clock=clock)
        _log_warnings(context, report)
        context.log.info(
            f"events {window.start:%Y-%m-%d}..{window.end:%Y-%m-%d}: wrote {report.rows_written}; "
            f"files: read {report.rows_read}, quarantined {report.quarantined}, "
            f"duplicates {report.duplicates}"
        )
        events = warehouse.table(RAW_EVENTS.name)
        in_window = events.filter(
            (events.timestamp >= window.start) & (events.timestamp < window.end)
        )
        yield MaterializeResult(
            metadata={**report_metadata(report), "preview": preview(warehouse, in_window)}
        )

        table = f"{warehouse.schema_name}.{RAW_EVENTS.name}"
        key_problems = event_key_violations(warehouse, window.start, window.end)
        yield AssetCheckResult(
            check_name="event_keys_valid",
            passed=not key_problems,
            metadata=key_problems,
            description=None
            if not key_problems
            else (
                f"{table} breaks its keys in this window ({key_problems}); no setting governs "
                "this: ingestion never writes such rows, so the table was written by something "
                "else (or its columns changed). Re-materialize raw_events for these days."
            ),
        )
        duplicates = duplicate_event_ids(warehouse)
        yield AssetCheckResult(
            check_name="event_ids_unique",
            passed=duplicates == 0,
            metadata={"duplicate_ids": duplicates},
            description=None
            if duplicates == 0
            else (
                f"{duplicates} event ids repeat in {table}; no setting governs this: ingestion "
                "keeps one row per id. Find them with SELECT event_id, count(*) FROM "
                f"{table} GROUP BY event_id HAVING count(*) > 1, then re-materialize raw_events."
            ),
        )
        reference = config.as_of or clock
        bounds = event_bounds_violations(
            warehouse,
            window.start,
            window.end,
            latest_allowed=reference + timedelta(hours=config.ingestion.future_tolerance_hours),
            pre_signup_tolerance=timedelta(hours=config.ingestion.pre_signup_tolerance_hours),
        )
        yield AssetCheckResult(
            check_name="timestamps_within_bounds",
            passed=not bounds,
            severity=AssetCheckSeverity.WARN,
            metadata=bounds,
            description=None
            if not bounds
            else (
                f"events written earlier no longer fit the bounds ({bounds}), e.g. after "
                "raw_users changed: re-materialize raw_events (settings "
                "ingestion.future_tolerance_hours, ingestion.pre_signup_tolerance_hours)"
            ),
        )
        yield _share_check(
            "quarantine_share_under_threshold",
            bad=report.malformed,
            # Identified rows only: anonymous traffic neither hides nor inflates bad data.
            total=report.rows_read - report.anonymous,
            limit=config.ingestion.max_quarantine_share,
            setting="ingestion.max_quarantine_share",
            what="identified event rows (user_id present) quarantined",
            top=", ".join(
                f"{reason} {rows}"
                for reason, rows in report.quarantined_by_reason.most_common()
                if reason != ANONYMOUS_REASON
            ),
            inspect=_inspect(warehouse, "events", f" AND reason <> '{ANONYMOUS_REASON}'"),
            cause=_unknown_users_cause(warehouse, report),
        )
        yield _share_check(
            "anonymous_share_under_threshold",
            bad=report.anonymous,
            total=report.rows_read,
            limit=config.ingestion.max_anonymous_share,
            setting="ingestion.max_anonymous_share",
            what=f"event rows without a user_id ({ANONYMOUS_REASON})",
            top=f"{ANONYMOUS_REASON} {report.anonymous}",
            inspect=_inspect(warehouse, "events", f" AND reason = '{ANONYMOUS_REASON}'"),
        )

    return raw_events


def _unknown_users_cause(warehouse: WarehouseResource, report: IngestionReport) -> str:
    """When most bad rows are `unknown_user`, the events are fine and the users are not: say
    so, or the message would send people to the wrong setting."""
    unknown = report.quarantined_by_reason.get("unknown_user", 0)
    if not unknown or unknown * 2 < report.malformed:
        return ""
    users, rejected = users_table_state(warehouse)
    reasons = ", ".join(f"{reason} {rows}" for reason, rows in sorted(rejected.items()))
    return (
        f"Most are unknown_user: their user_id is not in raw_users, which holds {users} users"
        + (f" ({sum(rejected.values())} users rows quarantined: {reasons})" if rejected else "")
        + ". Fix the users file (or remove it: signups then come from first events); "
        + _inspect(warehouse, "users", "")
        + ". "
    )


def _share_check(
    name: str,
    *,
    bad: int,
    total: int,
    limit: float,
    setting: str,
    what: str,
    top: str,
    inspect: str,
    cause: str = "",
) -> AssetCheckResult:
    share = bad / total if total else 0.0
    passed = share <= limit
    return AssetCheckResult(
        check_name=name,
        passed=passed,
        metadata={
            "share": round(share, 6),
            "rows": bad,
            "of_rows": total,
            "limit": limit,
            "setting": setting,
        },
        description=None
        if passed
        else (
            f"{bad} of {total} {what} ({share:.1%}), over the {limit:.1%} limit set by "
            f"`{setting}` in onboarding.yaml ({top}). {cause}Fix the input or raise the "
            f"limit; {inspect}"
        ),
    )

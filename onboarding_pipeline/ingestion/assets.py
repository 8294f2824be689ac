"""Ingestion assets: `raw_users` and daily-partitioned `raw_events`, with inline checks."""

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
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from onboarding_pipeline.connectors.assets import source_sync
from onboarding_pipeline.ingestion.load import IngestionReport, ingest_events, ingest_users
from onboarding_pipeline.ingestion.quality import (
    duplicate_event_ids,
    event_bounds_violations,
    event_key_violations,
    user_key_violations,
)
from onboarding_pipeline.ingestion.sources import SourceResource
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
    return {
        "rows_read": report.rows_read,
        "rows_accepted": report.accepted,
        "duplicates": report.duplicates,
        "rows_quarantined": report.quarantined,
        "quarantined_by_reason": MetadataValue.json(
            dict(sorted(report.quarantined_by_reason.items()))
        ),
        "reconciled": MetadataValue.md(
            f"read {report.rows_read} = accepted {report.accepted} + duplicates "
            f"{report.duplicates} + quarantined {report.quarantined}"
        ),
        "by_file": MetadataValue.md("| file | counts |\n|---|---|\n" + sources),
        "dagster/row_count": report.rows_written,
    }


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
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """Every accepted user of the input, one row each, signup_at in UTC.

    Rejected rows go to `onboarding.quarantine` (kind `users`) with the reason; a user id
    repeated with identical content is counted as a duplicate, with other content it is a
    conflict and the first row wins.
    """
    config = product_config.load()
    report = ingest_users(warehouse, source, config)
    context.log.info(f"users: {report.accepted} accepted, {report.quarantined} quarantined")
    yield MaterializeResult(
        metadata={
            **report_metadata(report),
            "preview": preview(warehouse, warehouse.table(RAW_USERS.name)),
        }
    )
    problems = user_key_violations(warehouse)
    yield AssetCheckResult(check_name="user_keys_valid", passed=not problems, metadata=problems)


def build_raw_events(partitions: DailyPartitionsDefinition) -> AssetsDefinition:
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
        ],
    )
    def raw_events(
        context: AssetExecutionContext,
        warehouse: WarehouseResource,
        source: SourceResource,
        product_config: ProductConfigResource,
    ) -> Iterator[MaterializeResult | AssetCheckResult]:
        """Accepted, de-duplicated events of the day(s), timestamps in UTC.

        All input files are validated on every run (so duplicates are found across files and
        days) and the partition's rows are replaced atomically: re-runs change nothing.
        Rejected rows land in `onboarding.quarantine` with file, row, reason and content.
        """
        config = product_config.load()
        window = context.partition_time_window
        clock = datetime.now(UTC)
        report = ingest_events(warehouse, source, config, window.start, window.end, clock=clock)
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

        key_problems = event_key_violations(warehouse, window.start, window.end)
        yield AssetCheckResult(
            check_name="event_keys_valid", passed=not key_problems, metadata=key_problems
        )
        duplicates = duplicate_event_ids(warehouse)
        yield AssetCheckResult(
            check_name="event_ids_unique",
            passed=duplicates == 0,
            metadata={"duplicate_ids": duplicates},
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
        )
        share = report.quarantined / report.rows_read if report.rows_read else 0.0
        limit = config.ingestion.max_quarantine_share
        yield AssetCheckResult(
            check_name="quarantine_share_under_threshold",
            passed=share <= limit,
            metadata={
                "quarantined_share": round(share, 6),
                "max_quarantine_share": limit,
                "quarantine_table": f"{warehouse.schema_name}.{QUARANTINE.name}",
            },
            description=None
            if share <= limit
            else (
                f"{report.quarantined} of {report.rows_read} rows quarantined ({share:.1%}), over "
                f"the {limit:.1%} limit: inspect onboarding.quarantine before data flows on"
            ),
        )

    return raw_events

"""`source_sync`: fetch what is new from the analytics tool into the landing folder."""

from datetime import UTC, datetime
from typing import Any

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from onboarding_pipeline.connectors.base import ConnectorSource, SyncReport
from onboarding_pipeline.ingestion.sources import FileSource, SourceResource


def sync_metadata(report: SyncReport) -> dict[str, Any]:
    """Counts and cursors of a sync; credentials never appear here."""
    days = report.days
    return {
        "source": report.source,
        "landing_dir": MetadataValue.path(report.landing_dir),
        "days_fetched": f"{days[0]}..{days[-1]} ({len(days)})" if days else "none",
        "rows_fetched": report.rows_fetched,
        "requests": report.stats.requests,
        "pages": report.stats.pages,
        "retries": report.stats.retries,
        "cursor_before": str(report.cursor_before or "none (first sync)"),
        "cursor_after": str(report.cursor_after or "none"),
        "users_landed": report.users_landed,
        "rows_by_day": MetadataValue.json(report.rows_by_day),
    }


@asset(group_name="ingestion", kinds={"python", "file"})
def source_sync(context: AssetExecutionContext, source: SourceResource) -> MaterializeResult:
    """Events fetched from PostHog, Mixpanel or Amplitude into the landing folder.

    Incremental: each run fetches from the cursor (the last day landed completely) minus the
    overlap window, one UTC day at a time; each day lands as one file, written whole, before the
    cursor moves. `raw_users` and `raw_events` then read the landing folder like a data
    directory. With the `files` source there is nothing to fetch.
    """
    if isinstance(source, ConnectorSource):
        report = source.sync(now=datetime.now(UTC), log=context.log.info)
        context.log.info(
            f"{report.source}: {report.rows_fetched} events over {len(report.days)} day(s), "
            f"cursor {report.cursor_before} -> {report.cursor_after}"
        )
        return MaterializeResult(metadata=sync_metadata(report))
    data_dir = source.data_dir if isinstance(source, FileSource) else "-"
    return MaterializeResult(
        metadata={"source": "files", "data_dir": MetadataValue.path(data_dir), "rows_fetched": 0}
    )

"""Daily partitions by event date (UTC), shared by raw_events and sessions."""

from __future__ import annotations

from dagster import DailyPartitionsDefinition

from onboarding_pipeline.config import ProductConfig


def daily_partitions(config: ProductConfig) -> DailyPartitionsDefinition:
    # end_offset=1 includes today, so a daily run picks up the day's events as they land.
    return DailyPartitionsDefinition(
        start_date=config.partitions_start_date.isoformat(), end_offset=1, timezone="UTC"
    )

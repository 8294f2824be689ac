"""Time partitions of `raw_events` and `sessions` by event time (UTC): daily, weekly or monthly.

One setting (`partitions` in onboarding.yaml) picks the size. A partition is Dagster's unit of
bookkeeping: a run over a range records one planned and one materialization event per partition
and asset, which costs far more than the warehouse work when the history is long and thin (12
years of daily partitions are 4,400 of them). Weekly partitions start on Mondays (like the
report's weeks), monthly ones on the 1st; the first one holds `partitions_start_date`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from dagster import (
    DailyPartitionsDefinition,
    MonthlyPartitionsDefinition,
    TimeWindowPartitionsDefinition,
    WeeklyPartitionsDefinition,
)

from onboarding_pipeline.config import ProductConfig

EVENTS_ASSET = "raw_events"


def event_partitions(config: ProductConfig) -> TimeWindowPartitionsDefinition:
    """The partitions of `raw_events` and `sessions` that `config.partitions` asks for."""
    first = config.partitions_start_date
    # end_offset=1 includes the current partition, so a run picks up events as they land.
    if config.partitions == "weekly":
        monday = first - timedelta(days=first.weekday())
        return WeeklyPartitionsDefinition(
            start_date=monday.isoformat(), day_offset=1, end_offset=1, timezone="UTC"
        )
    if config.partitions == "monthly":
        return MonthlyPartitionsDefinition(
            start_date=first.replace(day=1).isoformat(), end_offset=1, timezone="UTC"
        )
    return DailyPartitionsDefinition(start_date=first.isoformat(), end_offset=1, timezone="UTC")


def partition_key_of(partitions: TimeWindowPartitionsDefinition, day: date) -> str:
    """The key of the partition that holds `day` (a day before the first gives the first)."""
    moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    first = partitions.start
    return partitions.get_partition_key_for_timestamp(max(moment, first).timestamp())

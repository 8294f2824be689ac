"""Modeling assets: `sessions`, partitioned by the day each session starts."""

from collections.abc import Iterator
from datetime import timedelta

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    DailyPartitionsDefinition,
    MaterializeResult,
    TimeWindowPartitionMapping,
    asset,
)

from onboarding_pipeline.modeling.sessions import session_violations, write_sessions
from onboarding_pipeline.resources import ProductConfigResource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.metadata import preview, table_definition_metadata
from onboarding_pipeline.warehouse.tables import SESSIONS

# A day's sessions read the day before (is the first event a continuation?) and the day after
# (does a session run past midnight?), so Dagster marks them stale when either neighbour changes.
NEIGHBOURING_DAYS = TimeWindowPartitionMapping(
    start_offset=-1, end_offset=1, allow_nonexistent_upstream_partitions=True
)


def build_sessions(partitions: DailyPartitionsDefinition) -> AssetsDefinition:
    @asset(
        name="sessions",
        group_name="modeling",
        kinds={"ibis", "table"},
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.single_run(),
        deps=[AssetDep("raw_events", partition_mapping=NEIGHBOURING_DAYS)],
        metadata=table_definition_metadata(SESSIONS),
        check_specs=[AssetCheckSpec("sessions_well_formed", asset="sessions", blocking=True)],
    )
    def sessions(
        context: AssetExecutionContext,
        warehouse: WarehouseResource,
        product_config: ProductConfigResource,
    ) -> Iterator[MaterializeResult | AssetCheckResult]:
        """User sessions that start in the partition's day(s), computed in the warehouse.

        A supplied `session_id` is kept as the session; other events start a new session after
        `session_timeout_minutes` of inactivity. Incremental runs equal a full recompute.
        """
        config = product_config.load()
        window = context.partition_time_window
        timeout = timedelta(minutes=config.session_timeout_minutes)
        written = write_sessions(warehouse, timeout, window.start, window.end)
        table = warehouse.table(SESSIONS.name)
        in_window = table.filter(
            (table.session_start >= window.start) & (table.session_start < window.end)
        )
        stats = warehouse.execute(
            in_window.aggregate(
                users=in_window.user_id.nunique(),
                median_duration_seconds=in_window.duration_seconds.median(),
                median_events=in_window.event_count.median(),
            )
        ).iloc[0]
        yield MaterializeResult(
            metadata={
                "dagster/row_count": written,
                "users_with_sessions": int(stats["users"]),
                "median_duration_seconds": float(stats["median_duration_seconds"] or 0.0),
                "median_events_per_session": float(stats["median_events"] or 0.0),
                "session_timeout_minutes": config.session_timeout_minutes,
                "preview": preview(warehouse, in_window),
            }
        )
        problems = session_violations(warehouse, window.start, window.end)
        yield AssetCheckResult(
            check_name="sessions_well_formed", passed=not problems, metadata=problems
        )

    return sessions

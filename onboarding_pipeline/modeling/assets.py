"""Modeling assets: `sessions`, partitioned by when each session starts (day, week or month)."""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    MaterializeResult,
    TimeWindowPartitionMapping,
    TimeWindowPartitionsDefinition,
    asset,
)

from onboarding_pipeline.modeling.sessions import session_violations, write_sessions
from onboarding_pipeline.resources import ProductConfigResource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.metadata import preview, table_definition_metadata
from onboarding_pipeline.warehouse.tables import SESSIONS

# A partition's sessions read the partition before (is the first event a continuation?) and the
# one after (does a session run past its end?), so Dagster marks them stale when either changes.
NEIGHBOURING_PARTITIONS = TimeWindowPartitionMapping(
    start_offset=-1, end_offset=1, allow_nonexistent_upstream_partitions=True
)


def build_sessions(partitions: TimeWindowPartitionsDefinition) -> AssetsDefinition:
    @asset(
        name="sessions",
        group_name="modeling",
        kinds={"ibis", "table"},
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.single_run(),
        deps=[AssetDep("raw_events", partition_mapping=NEIGHBOURING_PARTITIONS)],
        metadata=table_definition_metadata(SESSIONS),
        check_specs=[AssetCheckSpec("sessions_well_formed", asset="sessions", blocking=True)],
    )
    def sessions(
        context: AssetExecutionContext,
        warehouse: WarehouseResource,
        product_config: ProductConfigResource,
    ) -> Iterator[MaterializeResult | AssetCheckResult]:
        """User sessions that start in the partition(s), computed in the warehouse.

        A supplied `session_id` is kept as the session; other events start a new session after
        `session_timeout_minutes` of inactivity; tied timestamps are ordered by event id, so
        every run gives the same sessions. Incremental runs equal a full recompute.
        """
        config = product_config.load()
        window = context.partition_time_window
        timeout = timedelta(minutes=config.session_timeout_minutes)
        written = write_sessions(warehouse, timeout, window.start, window.end)
        table = warehouse.table(SESSIONS.name)
        in_window = table.filter(
            (table.session_start >= window.start) & (table.session_start < window.end)
        )
        metadata: dict[str, Any] = {
            "dagster/row_count": written,
            "session_timeout_minutes": config.session_timeout_minutes,
            "empty": written == 0,
        }
        last_day = window.end - timedelta(microseconds=1)
        if written == 0:
            # A quiet day (or a range before the first event) is a normal state, not an error.
            metadata["empty_reason"] = (
                f"no session starts in {window.start:%Y-%m-%d}..{last_day:%Y-%m-%d} "
                "(no accepted events there)"
            )
            context.log.info(f"sessions: {metadata['empty_reason']}")
        else:
            stats = warehouse.execute(
                in_window.aggregate(
                    users=in_window.user_id.nunique(),
                    median_duration_seconds=in_window.duration_seconds.median(),
                    median_events=in_window.event_count.median(),
                )
            ).iloc[0]
            metadata |= {
                "users_with_sessions": int(stats["users"]),
                "median_duration_seconds": float(stats["median_duration_seconds"]),
                "median_events_per_session": float(stats["median_events"]),
                "preview": preview(warehouse, in_window),
            }
        yield MaterializeResult(metadata=metadata)
        problems = session_violations(warehouse, window.start, window.end)
        yield AssetCheckResult(
            check_name="sessions_well_formed",
            passed=not problems,
            metadata=problems,
            description=None
            if not problems
            else (
                f"sessions starting in {window.start:%Y-%m-%d}..{last_day:%Y-%m-%d} break their "
                f"invariants ({problems}); no setting governs this: sessionization never writes "
                f"such rows, so something else wrote {warehouse.schema_name}.{SESSIONS.name}. "
                "Re-materialize sessions for these partitions."
            ),
        )

    return sessions

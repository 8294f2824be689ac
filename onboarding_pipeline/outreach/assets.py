"""`intervention_deliveries`: the asset that delivers the queue (thin: the work is in
`deliver.py` and the channel modules)."""

from collections.abc import Iterator
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from onboarding_pipeline.engagement.assets import (
    GROUP,
    engagement_now,
    intervention_queue,
    markdown,
    nudges,
)
from onboarding_pipeline.outreach.deliver import CHANNELS, deliver_interventions
from onboarding_pipeline.outreach.resource import OutreachResource
from onboarding_pipeline.reporting.mail import EmailResource
from onboarding_pipeline.reporting.slack import SlackResource
from onboarding_pipeline.resources import OutputDirResource, ProductConfigResource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.metadata import table_definition_metadata
from onboarding_pipeline.warehouse.tables import (
    INTERVENTION_DELIVERIES,
    INTERVENTION_LEDGER,
    RAW_USERS,
)


@asset(
    group_name=GROUP,
    kinds={"smtp", "slack", "table"},
    deps=[nudges, intervention_queue, RAW_USERS.name],
    metadata=table_definition_metadata(INTERVENTION_DELIVERIES),
    check_specs=[AssetCheckSpec("holdout_never_delivered", asset="intervention_deliveries")],
)
def intervention_deliveries(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    product_config: ProductConfigResource,
    outputs: OutputDirResource,
    email: EmailResource,
    slack: SlackResource,
    outreach: OutreachResource,
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """Each treated queue row delivered once on its channel: `email` to the user (SMTP, with
    unsubscribe header and link, a suppression list), `in_app` as a signed webhook (and a
    JSONL export), `human` as a Slack hand-off to the owner's channel. Per channel and day
    limits and quiet hours leave rows due for a later run; a channel without credentials
    writes to `<output>/outbox/interventions/<day>/`. Held-out users get nothing."""
    config = product_config.load()
    settings = config.interventions.delivery
    suppression = None
    if settings.suppression_file:
        suppression = Path(product_config.path).parent / settings.suppression_file
    result = deliver_interventions(
        warehouse,
        config,
        email=email,
        slack=slack,
        outreach=outreach,
        outbox_root=outputs.folder("outbox") / "interventions",
        export_root=outputs.folder("outreach") / "in_app",
        now=engagement_now(warehouse, config),
        suppression_file=suppression,
        log=context.log.info,
    )
    by_channel = {
        channel: {
            status: count for (name, status), count in result.outcomes.items() if name == channel
        }
        for channel in CHANNELS
    }
    rows = result.rows
    shown = ["user_id", "channel", "status", "note", "attempts", "provider_id"]
    yield MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "by_channel_and_status": MetadataValue.json(by_channel),
            "already_delivered": result.already_delivered,
            "suppressed": MetadataValue.json(dict(result.suppressed)),
            "limited": MetadataValue.json(dict(result.limited)),
            "quiet_hours": MetadataValue.json(dict(result.quiet_hours)),
            "expired": result.expired,
            "channel_errors": MetadataValue.json(result.errors),
            "outbox_folder": str(result.outbox),
            "in_app_export": str(result.export) if result.export else None,
            "email_configured": email.configured,
            "slack_configured": bool(slack.token),
            "in_app_configured": outreach.inapp_configured,
            "preview": markdown(
                rows[shown].head(10) if len(rows) else rows, "_nothing to deliver today_"
            ),
        }
    )
    leaked = held_out_deliveries(warehouse, config.interventions.experiment)
    yield AssetCheckResult(
        check_name="holdout_never_delivered",
        passed=leaked == 0,
        description=None
        if leaked == 0
        else f"{leaked} delivery rows belong to held-out users: the control group was touched",
        metadata={"held_out_users_in_deliveries": leaked},
    )


def held_out_deliveries(warehouse: WarehouseResource, experiment: str) -> int:
    """Users held out of `experiment` (intervention ledger) with any delivery row."""
    deliveries = warehouse.table(INTERVENTION_DELIVERIES.name)
    assigned = warehouse.table(INTERVENTION_LEDGER.name)
    held = assigned.filter((assigned.experiment == experiment) & assigned.holdout)
    touched = deliveries.filter(deliveries.experiment == experiment).semi_join(
        held, deliveries.user_id == held.user_id
    )
    return int(warehouse.execute(touched.user_id.nunique()))

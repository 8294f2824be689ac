"""Assets of every domain wired to the shared resources, for any `Settings`."""

from __future__ import annotations

from dagster import Definitions, in_process_executor, multiprocess_executor

from onboarding_pipeline.activation.assets import (
    activation_model,
    activation_scores,
    critical_path,
    friction_clusters,
    funnel,
    landmark_populations,
    onboarding_kpis,
    user_features,
)
from onboarding_pipeline.config import load_config
from onboarding_pipeline.connectors.assets import source_sync
from onboarding_pipeline.connectors.resource import source_resource
from onboarding_pipeline.engagement.assets import ENGAGEMENT_ASSETS, anthropic_resource_from_env
from onboarding_pipeline.ingestion.assets import build_raw_events, raw_users
from onboarding_pipeline.modeling.assets import build_sessions
from onboarding_pipeline.orchestration import add_orchestration
from onboarding_pipeline.outreach.assets import intervention_deliveries
from onboarding_pipeline.outreach.resource import outreach_resource_from_env
from onboarding_pipeline.partitions import event_partitions
from onboarding_pipeline.reporting.assets import add_reporting, weekly_partitions
from onboarding_pipeline.reporting.mail import email_resource_from_env
from onboarding_pipeline.reporting.slack import slack_resource_from_env
from onboarding_pipeline.resources import OutputDirResource, ProductConfigResource
from onboarding_pipeline.settings import Settings
from onboarding_pipeline.warehouse import WarehouseResource


def build_definitions(settings: Settings) -> Definitions:
    config = load_config(settings.config_path)
    partitions = event_partitions(config)
    warehouse = WarehouseResource(url=settings.warehouse_url)
    defs = Definitions(
        assets=[
            source_sync,
            raw_users,
            build_raw_events(partitions),
            build_sessions(partitions),
            user_features,
            activation_model,
            activation_scores,
            critical_path,
            landmark_populations,
            funnel,
            onboarding_kpis,
            friction_clusters,
            *ENGAGEMENT_ASSETS,
            # After `nudges`; registered here, since it builds on the engagement assets.
            intervention_deliveries,
        ],
        resources={
            "warehouse": warehouse,
            "source": source_resource(config, settings),
            "product_config": ProductConfigResource(path=str(settings.config_path)),
            "outputs": OutputDirResource(path=str(settings.output_dir)),
            "slack": slack_resource_from_env(config.report.slack_channel),
            "email": email_resource_from_env(),
            "anthropic": anthropic_resource_from_env(),
            "outreach": outreach_resource_from_env(),
        },
        # An embedded DuckDB file takes one writer at a time: run steps in one process.
        executor=in_process_executor if warehouse.engine == "duckdb" else multiprocess_executor,
    )
    defs = add_reporting(defs, weekly_partitions(config))
    return add_orchestration(defs, config, partitions)

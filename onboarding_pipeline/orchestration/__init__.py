"""Orchestration: jobs, schedules, sensors and freshness policies on top of the asset graph."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from dagster import (
    AssetCheckKey,
    AssetsDefinition,
    AssetSpec,
    Definitions,
    FreshnessPolicy,
    TimeWindowPartitionsDefinition,
    apply_freshness_policy,
)
from dagster._record import replace

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.orchestration.jobs import (
    REFRESH_GROUPS,
    REPORT_GROUPS,
    daily_refresh_job,
    weekly_report_job,
)
from onboarding_pipeline.orchestration.schedules import (
    build_daily_refresh_schedule,
    build_weekly_report_schedule,
)
from onboarding_pipeline.orchestration.sensors import (
    build_landing_files_sensor,
    build_run_failure_slack_sensor,
)
from onboarding_pipeline.reporting.slack import slack_resource_from_env

# Link failed runs in Slack alerts to the UI, e.g. https://dagster.example.com
ENV_UI_URL = "ONBOARDING_DAGSTER_UI_URL"

# Refreshed daily: warn when a day's run is late, fail (red in the UI) when a run was missed.
DAILY_FRESHNESS = FreshnessPolicy.time_window(
    fail_window=timedelta(hours=30), warn_window=timedelta(hours=26)
)
WEEKLY_FRESHNESS = FreshnessPolicy.time_window(
    fail_window=timedelta(days=8), warn_window=timedelta(days=7, hours=6)
)


def report_timezone(config: ProductConfig) -> str:
    """`report.timezone` of onboarding.yaml (an IANA name), UTC if unset."""
    report: Any = config.report
    value = (
        report.get("timezone") if isinstance(report, dict) else getattr(report, "timezone", None)
    )
    return str(value or "UTC")


def _assets(defs: Definitions) -> list[AssetsDefinition]:
    return [a for a in defs.assets or [] if isinstance(a, AssetsDefinition)]


def _groups(defs: Definitions) -> set[str]:
    return {spec.group_name or "default" for a in _assets(defs) for spec in a.specs}


def blocking_checks(defs: Definitions, groups: Sequence[str]) -> list[AssetCheckKey]:
    """Blocking checks on assets of these groups."""
    keys = []
    for assets_def in _assets(defs):
        group_of = {spec.key: spec.group_name for spec in assets_def.specs}
        keys += [
            spec.key
            for spec in assets_def.check_specs
            if spec.blocking and group_of.get(spec.asset_key) in groups
        ]
    return keys


def with_freshness(spec: AssetSpec) -> AssetSpec:
    policy = WEEKLY_FRESHNESS if spec.group_name in REPORT_GROUPS else DAILY_FRESHNESS
    return apply_freshness_policy(spec, policy, overwrite_existing=False)


def add_orchestration(
    defs: Definitions, config: ProductConfig, partitions: TimeWindowPartitionsDefinition
) -> Definitions:
    """`defs` with freshness policies on every asset, plus the jobs, schedules and sensors.

    The weekly report job and schedule exist once the `reporting` group has assets."""
    refresh = daily_refresh_job()
    jobs: list[Any] = [refresh]
    schedules: list[Any] = [build_daily_refresh_schedule(refresh, partitions)]
    if set(REPORT_GROUPS) & _groups(defs):
        report = weekly_report_job()
        report_partitions = {
            type(a.partitions_def): a.partitions_def
            for a in _assets(defs)
            if a.partitions_def is not None and {s.group_name for s in a.specs} & set(REPORT_GROUPS)
        }
        weekly = next(
            (
                p
                for p in report_partitions.values()
                if isinstance(p, TimeWindowPartitionsDefinition)
            ),
            None,
        )
        jobs.append(report)
        schedules.append(
            build_weekly_report_schedule(
                report, weekly, report_timezone(config), blocking_checks(defs, REFRESH_GROUPS)
            )
        )
    # The failure alert needs Slack even before the reporting group wires its resource.
    resources = {} if "slack" in (defs.resources or {}) else {"slack": slack_resource_from_env()}
    orchestration = Definitions(
        resources=resources,
        jobs=jobs,
        schedules=schedules,
        sensors=[
            build_landing_files_sensor(refresh, partitions),
            build_run_failure_slack_sensor(os.environ.get(ENV_UI_URL)),
        ],
    )
    # Per asset: `Definitions.map_asset_specs` is still a preview API (it warns on every load).
    fresh = [
        a.map_asset_specs(with_freshness) if isinstance(a, AssetsDefinition) else a
        for a in defs.assets or []
    ]
    return Definitions.merge(replace(defs, assets=fresh), orchestration)

"""Reporting assets: the weekly report and its deliveries (group `reporting`, weekly partitions)."""

from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Config,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    WeeklyPartitionsDefinition,
    asset,
)

from onboarding_pipeline.activation.assets import png_markdown
from onboarding_pipeline.activation.model import ModelStore
from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.engagement.scoring import model_unlock_reason
from onboarding_pipeline.reporting.delivery import deliver_report
from onboarding_pipeline.reporting.mail import EmailResource
from onboarding_pipeline.reporting.report import (
    NOT_ENOUGH_DATA,
    gather_report,
    load_report,
    render_markdown,
    write_report,
)
from onboarding_pipeline.reporting.slack import SlackResource
from onboarding_pipeline.resources import OutputDirResource, ProductConfigResource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.metadata import table_definition_metadata
from onboarding_pipeline.warehouse.tables import REPORT_DELIVERIES

GROUP = "reporting"
# Assets whose tables or files the report reads; lineage to those that are defined.
REPORT_INPUTS = (
    "onboarding_kpis",
    "funnel",
    "critical_path",
    "activation_model",
    "stalled_users",
    "health_scores",
    "intervention_queue",
    "intervention_effectiveness",
)


def weekly_partitions(config: ProductConfig) -> WeeklyPartitionsDefinition:
    """Monday-to-Sunday weeks (UTC) from `partitions_start_date`; the current week included
    (end_offset=1) so a run can report the week that holds the data's watermark."""
    return WeeklyPartitionsDefinition(
        start_date=config.partitions_start_date.isoformat(),
        day_offset=1,
        timezone="UTC",
        end_offset=1,
    )


class DeliveryConfig(Config):
    """Run config of `report_deliveries`."""

    # Send again to recipients whose ledger row says `sent` (e.g. after fixing the report).
    force: bool = False


def build_reporting_assets(
    partitions: WeeklyPartitionsDefinition, upstream: Sequence[Any]
) -> list[AssetsDefinition]:
    """`weekly_report` and `report_deliveries`, depending on those report inputs that are
    among `upstream` (asset definitions of the code location)."""
    defined = {key for a in upstream if isinstance(a, AssetsDefinition) for key in a.keys}
    deps = [AssetKey(name) for name in REPORT_INPUTS if AssetKey(name) in defined]

    @asset(
        name="weekly_report",
        group_name=GROUP,
        kinds={"jinja", "matplotlib", "html"},
        partitions_def=partitions,
        deps=deps,
    )
    def weekly_report(
        context: AssetExecutionContext,
        warehouse: WarehouseResource,
        product_config: ProductConfigResource,
        outputs: OutputDirResource,
    ) -> MaterializeResult:
        """The week's onboarding report as HTML (charts embedded) and Markdown under
        `<output>/reports/<week>/`: headline KPIs vs targets and the previous cohort, funnel
        with drop-offs, critical path, model quality and base-rate drift, stalled and at-risk
        users, the intervention queue and its effectiveness, and the 1-3 issues for the
        weekly review with evidence and owner. Sections without input say "not enough data
        yet"."""
        config = product_config.load()
        week = context.partition_key
        data = gather_report(warehouse, config, Path(outputs.path), week)
        files, charts = write_report(data, outputs.folder("reports") / week)
        context.log.info(f"report of week {week} written to {files.folder}")
        metadata: dict[str, Any] = {
            "report_html": MetadataValue.path(str(files.html)),
            "report_markdown": MetadataValue.path(str(files.markdown)),
            "open_report": MetadataValue.url(files.html.as_uri()),
            # Without the file links of report.md: the UI shows the charts below instead.
            "summary": MetadataValue.md(render_markdown(data)),
            "review_items": MetadataValue.json(data.review),
            "sections_without_data": MetadataValue.json(data.missing),
        }
        for name, png in charts.items():
            metadata[f"{name}_chart"] = png_markdown(png, name)
            metadata[f"{name}_chart_file"] = MetadataValue.path(str(files.charts[name]))
        return MaterializeResult(metadata=metadata)

    @asset(
        name="report_deliveries",
        group_name=GROUP,
        kinds={"slack", "email", "table"},
        partitions_def=partitions,
        deps=[weekly_report],
        metadata=table_definition_metadata(REPORT_DELIVERIES),
    )
    def report_deliveries(
        context: AssetExecutionContext,
        config: DeliveryConfig,
        warehouse: WarehouseResource,
        product_config: ProductConfigResource,
        outputs: OutputDirResource,
        slack: SlackResource,
        email: EmailResource,
    ) -> MaterializeResult:
        """The week's report sent once to the configured Slack channel (Block Kit summary,
        charts uploaded in its thread) and email recipients (text, HTML, inline charts).

        The ledger `report_deliveries` keeps one row per (week, channel, recipient): a sent row
        is not sent again unless run config says `force: true`. Without credentials
        (SLACK_BOT_TOKEN, SMTP_HOST) the exact messages go to `<output>/outbox/<week>/`.
        A failed channel does not stop the other; the asset then fails, naming it, and the
        next run retries just what is missing."""
        week = context.partition_key
        folder = outputs.folder("reports") / week
        if not (folder / "report.json").exists():
            raise Failure(f"no report for week {week}: materialize weekly_report first")
        data, charts = load_report(folder)
        result = deliver_report(
            warehouse,
            data,
            charts,
            product_config.load().report,
            slack=slack,
            email=email,
            outbox_root=outputs.folder("outbox"),
            force=config.force,
            log=context.log.warning,
        )
        for line in delivery_lines(result.sent, result.outbox, result.skipped):
            context.log.info(line)
        metadata: dict[str, Any] = {
            "sent": MetadataValue.json(result.sent),
            "outbox": MetadataValue.json(result.outbox),
            "already_sent": MetadataValue.json(result.skipped),
            "failed": MetadataValue.json(result.failed),
            "outbox_files": MetadataValue.json([str(p) for p in result.outbox_files]),
            "ledger": MetadataValue.md(
                result.rows[
                    ["channel", "recipient", "status", "attempts", "provider_id", "last_error"]
                ].to_markdown(index=False)
                if len(result.rows)
                else "_no recipients configured_"
            ),
        }
        if result.outbox:
            context.log.warning(
                f"no credentials for {', '.join(sorted({k.split(':')[0] for k in result.outbox}))}:"
                f" messages written to {outputs.folder('outbox') / week} instead of sent"
            )
        if result.failed:
            raise Failure(
                description="delivery failed for "
                + "; ".join(f"{key}: {error}" for key, error in result.failed.items())
                + " (the next run retries only these)",
                metadata=metadata,
            )
        return MaterializeResult(metadata=metadata)

    return [weekly_report, report_deliveries]


def delivery_lines(sent: list[str], outbox: list[str], skipped: list[str]) -> list[str]:
    return [
        f"{label}: {', '.join(keys)}"
        for label, keys in (
            ("sent", sent),
            ("written to the outbox (no credentials)", outbox),
            ("already sent, not sent again", skipped),
        )
        if keys
    ]


def model_run_lines(models_dir: Path) -> list[str]:
    """Without an accepted model: the report's model sections say "Not enough data yet", and
    this line says what would unlock them."""
    if ModelStore(models_dir).current_version() is not None:
        return []
    return [f"  model sections:     {NOT_ENOUGH_DATA}: {model_unlock_reason(models_dir)}"]


def add_reporting(defs: Definitions, partitions: WeeklyPartitionsDefinition) -> Definitions:
    """`defs` plus the reporting assets, depending on the report inputs `defs` defines."""
    reporting = build_reporting_assets(partitions, list(defs.assets or []))
    return Definitions.merge(defs, Definitions(assets=reporting))


def watermark_week(partitions: object, span: tuple[str, str] | None) -> str | None:
    """For weekly partitions: the week holding the last day of the data's daily range (the
    watermark), kept within the defined weeks; None for any other partitioning."""
    if not isinstance(partitions, WeeklyPartitionsDefinition):
        return None
    keys = partitions.get_partition_keys()
    if not keys:
        return None
    if span is None:
        return keys[-1]
    last = date.fromisoformat(span[1])
    monday = (last - timedelta(days=last.weekday())).isoformat()
    return min(max(monday, keys[0]), keys[-1])


def report_run_lines(output_dir: Path, warehouse: WarehouseResource, week: str) -> list[str]:
    """Summary lines of `onboarding-pipeline run`: the report files, what would unlock the
    model sections when no model is accepted, and where deliveries went."""
    folder = output_dir / "reports" / week
    html = folder / "report.html"
    unlock = model_run_lines(output_dir / "models")
    if not html.exists():
        return [f"  weekly report:      not written for week {week}", *unlock]
    charts = sorted(path.name for path in folder.glob("*.png"))
    lines = [
        f"  weekly report:      {html} (week {week}; also report.md"
        + (f", {', '.join(charts)})" if charts else ")"),
        *unlock,
    ]
    ledger = warehouse.table(REPORT_DELIVERIES.name)
    rows = warehouse.execute(ledger.filter(ledger.report_week == week))
    if rows.empty:
        lines.append("  deliveries:         none recorded (no recipients or channel configured)")
    for (channel, status), group in rows.groupby(["channel", "status"]):
        where = {
            "outbox": f"written to the outbox {group.outbox_path.iloc[0]} (no credentials)",
            "sent": "sent",
            "failed": "FAILED, retried on the next run",
            "posted": "text posted, charts not uploaded; retried on the next run",
        }.get(status, status)
        lines.append(f"  {channel + ' delivery:':<20}{where}: {', '.join(group.recipient)}")
    return lines

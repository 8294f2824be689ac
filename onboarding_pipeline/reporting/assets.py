"""Reporting assets: the weekly report and its deliveries (group `reporting`, weekly partitions)."""

import os
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
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
from onboarding_pipeline.reporting.notion import NotionResource, notion_resource_from_env
from onboarding_pipeline.reporting.report import (
    NOT_ENOUGH_DATA,
    ReportData,
    existing_tables,
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
    "step_experiments",
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

    # Send again to recipients whose ledger row says `sent` (e.g. after fixing the report),
    # and deliver a week other than the one that just ended (a backfill, or the week still
    # running). Once per run: the step and run retries of a forced run do not send again what
    # its first attempt sent.
    force: bool = False


# The wall clock that decides which week is delivered, as ISO-8601 (naive = UTC). Only to
# rehearse or test the delivery of a given week; unset = the real clock.
ENV_DELIVERY_CLOCK = "ONBOARDING_DELIVERY_CLOCK"


def delivery_clock() -> datetime:
    """Now (UTC) as deliveries see it: `ONBOARDING_DELIVERY_CLOCK` when set, else the clock.

    Deliberately not the data's watermark (nor `as_of`): a fresh warehouse loaded with an old
    export, or a backfill that stops at an old day, has its watermark in an old week, and that
    week must not go to stakeholders as if it were this week's."""
    pinned = os.environ.get(ENV_DELIVERY_CLOCK, "").strip()
    if not pinned:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(pinned)
    except ValueError:
        raise ValueError(
            f"{ENV_DELIVERY_CLOCK}={pinned!r} is not an ISO-8601 time (e.g. 2026-11-02T09:00Z)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def data_watermark(warehouse: WarehouseResource, config: ProductConfig) -> datetime | None:
    """The data's "now": the configured `as_of`, else the latest accepted event (None: no
    events yet)."""
    if config.as_of is not None:
        return config.as_of
    if "raw_events" not in existing_tables(warehouse):
        return None
    latest = warehouse.execute(warehouse.table("raw_events").timestamp.max())
    if latest is None or latest != latest:  # None or NaT
        return None
    return pd.Timestamp(latest).to_pydatetime().astimezone(UTC)


def _monday(moment: datetime) -> date:
    day = moment.astimezone(UTC).date()
    return day - timedelta(days=day.weekday())


def deliverable_week(now: datetime | None = None) -> str:
    """The one week a run delivers without `force`: the Monday-to-Sunday week (UTC) that
    ended last by the wall clock (what the Monday schedule reports)."""
    return (_monday(now or delivery_clock()) - timedelta(days=7)).isoformat()


def undeliverable_reason(week: str, now: datetime | None = None) -> str | None:
    """Why week `week`'s report is not delivered, None when it is: only the week that just
    ended by the wall clock (`now`, default `delivery_clock()`) is. An older week is a
    backfill; the week still running would go out half-counted and then count as sent."""
    now = now or delivery_clock()
    due = deliverable_week(now)
    if week == due:
        return None
    clock = (
        f"by the clock ({now.astimezone(UTC):%Y-%m-%d %H:%M} UTC) the week that just ended is {due}"
    )
    if week < due:
        kind = f"week {week} is a backfill"
    elif week == _monday(now).isoformat():
        kind = f"week {week} has not ended yet"
    else:
        kind = f"week {week} begins in the future"
    return (
        f"{kind}: {clock}, the only week delivered without run config `force: true` "
        "(which delivers it anyway)"
    )


def backfill_note(week: str, watermark: datetime | None, now: datetime | None = None) -> str | None:
    """What the report of week `week` says about itself (None for the week delivered): that
    its tables are newer than the week (the data's watermark is in a later week), and that
    it is not delivered (by the wall clock, `now`)."""
    notes = []
    if watermark is not None and date.fromisoformat(week) < _monday(watermark) - timedelta(days=7):
        notes.append(
            "Backfill of an earlier week: every section shows the warehouse tables as they are "
            f"now (the data's watermark, {watermark.astimezone(UTC):%Y-%m-%d %H:%M} UTC), not as "
            f"they were at the end of the week of {week}."
        )
    if undeliverable_reason(week, now):
        notes.append(
            f"This report is not delivered: by the clock the week that just ended is "
            f"{deliverable_week(now)}, the only week delivered unless a run forces it."
        )
    return " ".join(notes) or None


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
        data.state_note = backfill_note(week, data_watermark(warehouse, config), delivery_clock())
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
            "backfill": MetadataValue.text(data.state_note or "no: the current week"),
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
        notion: NotionResource,
    ) -> MaterializeResult:
        """The week's report sent once to the configured Slack channel (Block Kit summary,
        charts uploaded in its thread), each email recipient (a message of their own: text,
        HTML, inline charts) and the Notion database (a page per week), if configured.

        Only the week that just ended by the wall clock (UTC; `ONBOARDING_DELIVERY_CLOCK`
        pins it) is delivered, whatever the data's watermark: a backfill of an older week, or
        the week still running, renders but sends nothing (unless run config says
        `force: true`). The ledger `report_deliveries` keeps one row per
        (week, channel, recipient): `sending` is recorded before a message leaves, `sent` once
        the service accepted it, and a sent row is not sent again unless `force: true` (once
        per run: the step and run retries of a forced run do not resend what it sent).
        Without credentials (SLACK_BOT_TOKEN, SMTP_HOST, NOTION_TOKEN) the exact messages go
        to `<output>/outbox/<week>/`. A failed channel does not stop the others; the asset
        then fails, naming it, and the next run retries just what is missing."""
        week = context.partition_key
        folder = outputs.folder("reports") / week
        if not (folder / "report.json").exists():
            raise Failure(f"no report for week {week}: materialize weekly_report first")
        product = product_config.load()
        reason = undeliverable_reason(week, delivery_clock())
        if reason and not config.force:
            context.log.info(f"not delivered: {reason}")
            return MaterializeResult(
                metadata={
                    "not_delivered": MetadataValue.text(reason),
                    "sent": MetadataValue.json([]),
                }
            )
        data, charts = load_report(folder)
        result = deliver_report(
            warehouse,
            data,
            charts,
            product.report,
            slack=slack,
            email=email,
            notion=notion,
            outbox_root=outputs.folder("outbox"),
            force=config.force,
            # The root run: a run retry (or re-execution) of a forced run is the same delivery.
            run_id=context.run.root_run_id or context.run_id,
            log=context.log.warning,
        )
        for line in delivery_lines(result.sent, result.outbox, result.skipped):
            context.log.info(line)
        if result.recovered:
            context.log.info(
                "found delivered by an interrupted earlier attempt (already sent, not sent "
                "again): " + ", ".join(result.recovered)
            )
        metadata: dict[str, Any] = {
            "sent": MetadataValue.json(result.sent),
            "outbox": MetadataValue.json(result.outbox),
            "already_sent": MetadataValue.json(result.skipped),
            "recovered": MetadataValue.json(result.recovered),
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
    resources = {} if "notion" in (defs.resources or {}) else {"notion": notion_resource_from_env()}
    return Definitions.merge(defs, Definitions(assets=reporting, resources=resources))


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


DELIVERY_OUTCOMES = ("sent", "already_sent", "outbox", "failed", "recovered")


def delivery_outcome(result: Any) -> dict[str, list[str]] | None:
    """What the `report_deliveries` step of a run did (its metadata lists: `sent`,
    `already_sent`, `outbox`, `failed`, `recovered`), from the run's result
    (`execute_in_process`); None when the step did not materialize in it."""
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        if materialization.asset_key != AssetKey("report_deliveries"):
            continue
        metadata = materialization.metadata
        return {
            name: list(metadata[name].value) if name in metadata else []
            for name in DELIVERY_OUTCOMES
        }
    return None


def report_run_lines(
    output_dir: Path,
    warehouse: WarehouseResource,
    week: str,
    delivery: dict[str, list[str]] | None = None,
) -> list[str]:
    """Summary lines of `onboarding-pipeline run`: the report files, what would unlock the
    model sections when no model is accepted, and where deliveries went.

    `delivery` (`delivery_outcome` of this run) tells the ledger's `sent` rows this run sent
    from those it found already sent (by an earlier or a concurrent run); without it every
    `sent` row reads "sent"."""
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
        note = ReportData.from_json((folder / "report.json").read_text()).state_note
        lines.append(
            f"  deliveries:         none: {note}"
            if note
            else "  deliveries:         none recorded (no recipients or channel configured)"
        )
        return lines
    if delivery is not None:
        # `sent` in the ledger but not by this run: an earlier or a concurrent run sent it.
        sent_now = set(delivery.get("sent", []))
        rows["status"] = [
            "already sent"
            if status == "sent" and f"{channel}:{recipient}" not in sent_now
            else status
            for channel, recipient, status in zip(
                rows.channel, rows.recipient, rows.status, strict=True
            )
        ]
    for (channel, status), group in rows.groupby(["channel", "status"]):
        # One file per email recipient: name their folder.
        files = sorted({str(path) for path in group.outbox_path.dropna()})
        shown = files[0] if len(files) == 1 else f"{Path(files[0]).parent if files else '-'}/"
        where = {
            "outbox": f"written to the outbox {shown} (no credentials)",
            "sent": "sent",
            "already sent": "already sent (by an earlier or concurrent run), not sent again",
            "failed": "FAILED, retried on the next run",
            "posted": "text posted, charts not uploaded; retried on the next run",
            "sending": "interrupted, outcome unknown; checked before any resend on the next run",
        }.get(status, status)
        lines.append(f"  {channel + ' delivery:':<20}{where}: {', '.join(group.recipient)}")
    return lines

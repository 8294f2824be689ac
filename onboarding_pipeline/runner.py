"""Materialize the whole asset graph in process, asset by asset, over every partition."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dagster import AssetKey, DagsterInstance, DailyPartitionsDefinition, Definitions

from onboarding_pipeline.activation.model import ModelStore
from onboarding_pipeline.code_location import build_definitions
from onboarding_pipeline.config import load_config
from onboarding_pipeline.connectors.base import ConnectorSource
from onboarding_pipeline.engagement.assets import run_summary_lines
from onboarding_pipeline.ingestion.load import event_date_span
from onboarding_pipeline.ingestion.sources import FileSource
from onboarding_pipeline.reporting.assets import report_run_lines, watermark_week
from onboarding_pipeline.settings import Settings
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.tables import (
    ACTIVATION_SCORES,
    CRITICAL_PATH,
    QUARANTINE,
    RAW_EVENTS,
    RAW_USERS,
    SESSIONS,
    TABLES,
)

TABLE_NAMES = [*TABLES, "user_features"]

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

_INSTANCE_YAML = """\
# Local Dagster instance of `onboarding-pipeline run` and `dagster dev` (SQLite).
telemetry:
  enabled: false
nux:
  enabled: false
# One event-log database instead of one file per run: a run over ~150 daily partitions
# writes hundreds of events, and opening the per-run file for each one made it 2-3x slower.
event_log_storage:
  module: dagster._core.storage.event_log
  class: ConsolidatedSqliteEventLogStorage
  config:
    base_dir: {history}
# The embedded DuckDB file takes one writing process: runs launched by `dagster dev`'s
# schedules and sensors queue up instead of failing on its lock.
concurrency:
  runs:
    max_concurrent_runs: 1
"""


# Progress lines come from this module; Dagster's own console log would drown them.
_QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class RunSummary:
    settings: Settings
    dagster_home: Path
    partition_range: tuple[str, str] | None
    users: int = 0
    events: int = 0
    sessions: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    model: str = "-"
    users_scored: int = 0
    events_by_class: dict[str, list[str]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    report_lines: list[str] = field(default_factory=list)
    engagement_lines: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        quarantined = sum(self.quarantined_by_reason.values())
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.quarantined_by_reason.items()))
        span = (
            f"{self.partition_range[0]}..{self.partition_range[1]}" if self.partition_range else "-"
        )
        status = f"{len(self.failures)} asset(s) failed" if self.failures else "Done"
        return [
            f"{status} in {self.seconds:.1f} s over partitions {span}.",
            f"  users ingested:     {self.users}",
            f"  events ingested:    {self.events}",
            f"  rows quarantined:   {quarantined}" + (f" ({reasons})" if reasons else ""),
            f"  sessions:           {self.sessions}",
            f"  activation model:   {self.model}",
            f"  users scored:       {self.users_scored} (still onboarding)",
            *[
                f"  {kind + ':':<20}{', '.join(names) or '-'}"
                for kind, names in self.events_by_class.items()
            ],
            *self.engagement_lines,
            "Outputs:",
            f"  warehouse:          {self.settings.warehouse_url} (schema onboarding)",
            "  tables:             onboarding." + ", ".join(TABLE_NAMES),
            f"  models and charts:  {self.settings.output_dir / 'models'}, "
            f"{self.settings.output_dir / 'charts'}",
            *self.report_lines,
            f"  output directory:   {self.settings.output_dir}",
            f"  Dagster run history: DAGSTER_HOME={self.dagster_home}",
            *[f"FAILED {name}: {text}" for name, text in self.failures.items()],
        ]


def local_instance(output_dir: Path) -> tuple[DagsterInstance, Path]:
    """`$DAGSTER_HOME` if set, else a SQLite instance under the output directory."""
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        return DagsterInstance.get(), home
    home = output_dir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(_INSTANCE_YAML.format(history=json.dumps(str(home / "history"))))
    return DagsterInstance.from_config(str(home)), home


def data_partition_range(settings: Settings, defs: Definitions) -> tuple[str, str] | None:
    """The daily partitions the input's events span, within the configured partitions."""
    keys = _partition_keys(defs)
    if not keys:
        return None
    if isinstance((defs.resources or {}).get("source"), ConnectorSource):
        # Events arrive during the run (source_sync): every configured day may hold some.
        return keys[0], keys[-1]
    config = load_config(settings.config_path)
    files = FileSource(data_dir=str(settings.data_dir)).read_events(config.column_mapping.events)
    span = event_date_span(files, config)
    if span is None:
        return keys[0], keys[0]
    first, last = max(span[0].isoformat(), keys[0]), min(span[1].isoformat(), keys[-1])
    return (first, last) if first <= last else (keys[0], keys[0])


def _partition_keys(defs: Definitions) -> list[str]:
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        partitions = defs.resolve_assets_def(key).partitions_def
        if isinstance(partitions, DailyPartitionsDefinition):
            return list(partitions.get_partition_keys())
    return []


def run_pipeline(
    settings: Settings,
    *,
    partition_range: tuple[str, str] | None = None,
    echo: Callable[[str], None] = print,
) -> RunSummary:
    """Materialize every asset in dependency order.

    Like a Dagster run, a failure (or a failed blocking check) skips only what depends on it;
    the summary lists both, and the caller decides the exit status.
    """
    started = time.monotonic()
    defs = build_definitions(settings)
    instance, home = local_instance(settings.output_dir)
    span = partition_range or data_partition_range(settings, defs)
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    keys = list(graph.toposorted_asset_keys)
    failures: dict[str, str] = {}
    skipped: set[AssetKey] = set()
    report_week: str | None = None
    try:
        for index, key in enumerate(keys, start=1):
            label = key.to_user_string()
            if any(parent in skipped for parent in graph.get(key).parent_keys):
                skipped.add(key)
                echo(f"[{index}/{len(keys)}] {label} skipped: an upstream asset failed")
                continue
            partitions_def = defs.resolve_assets_def(key).partitions_def
            # Weekly assets (the report) run for the week holding the data's watermark.
            week = watermark_week(partitions_def, span)
            if week:
                report_week = week
            tags = (
                {RANGE_START_TAG: span[0], RANGE_END_TAG: span[1]}
                if partitions_def is not None and span and not week
                else {}
            )
            scope = f" ({tags[RANGE_START_TAG]}..{tags[RANGE_END_TAG]})" if tags else ""
            scope = f" (week {week})" if week else scope
            echo(f"[{index}/{len(keys)}] {label}{scope} ...")
            step_started = time.monotonic()
            result = job.execute_in_process(
                instance=instance,
                asset_selection=[key],
                tags=tags,
                partition_key=week,
                raise_on_error=False,
                run_config=_QUIET_CONSOLE,
            )
            if not result.success:
                failures[label] = _failure_text(result)
                skipped.add(key)
                echo(f"      FAILED: {failures[label]}")
                continue
            echo(f"      done in {time.monotonic() - step_started:.1f} s")
    finally:
        instance.dispose()
    summary = summarize(settings, home, span)
    summary.failures = failures
    if report_week:
        warehouse = WarehouseResource(url=settings.warehouse_url)
        try:
            summary.report_lines = report_run_lines(settings.output_dir, warehouse, report_week)
        finally:
            warehouse.close()
    summary.seconds = time.monotonic() - started
    return summary


def summarize(settings: Settings, home: Path, span: tuple[str, str] | None) -> RunSummary:
    warehouse = WarehouseResource(url=settings.warehouse_url)
    try:
        quarantine = warehouse.table(QUARANTINE.name)
        reasons = warehouse.execute(quarantine.group_by("reason").agg(rows=quarantine.count()))
        paths = warehouse.table(CRITICAL_PATH.name)
        overall = warehouse.execute(paths.filter(paths.segment_type == "overall"))
        scores = warehouse.table(ACTIVATION_SCORES.name)
        return RunSummary(
            settings=settings,
            dagster_home=home,
            partition_range=span,
            users=int(warehouse.execute(warehouse.table(RAW_USERS.name).count())),
            events=int(warehouse.execute(warehouse.table(RAW_EVENTS.name).count())),
            sessions=int(warehouse.execute(warehouse.table(SESSIONS.name).count())),
            quarantined_by_reason={row.reason: int(row.rows) for row in reasons.itertuples()},
            model=_current_model(settings.output_dir / "models"),
            users_scored=int(
                warehouse.execute(scores.filter(scores.population == "onboarding").count())
            ),
            events_by_class={
                kind: sorted(overall.event_name[overall.classification == kind])
                for kind in ("driver", "vanity", "blocker")
            },
            engagement_lines=run_summary_lines(warehouse),
        )
    finally:
        warehouse.close()


def _current_model(folder: Path) -> str:
    store = ModelStore(folder)
    version = store.current_version()
    if version is None:
        return "none accepted yet"
    metrics = json.loads((folder / f"{version}.json").read_text())
    low, high = metrics["roc_auc_ci"]
    return f"{version}, ROC AUC {metrics['roc_auc']:.3f} (95% CI {low:.3f}-{high:.3f})"


def _failure_text(result: object) -> str:
    lines = []
    for event in result.all_events:  # type: ignore[attr-defined]
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            # Dagster wraps the real exception; its cause names the file, row or setting.
            while error.cause is not None:
                error = error.cause
            lines.append(error.message.strip())
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                lines.append(
                    f"check {evaluation.check_name} failed: {evaluation.description or ''} "
                    f"{ {k: v.value for k, v in evaluation.metadata.items()} }"
                )
    return "\n".join(lines) or "see the Dagster run log"

"""Materialize the whole asset graph in process, asset by asset, over the data's partitions."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    PartitionKeyRange,
    TimeWindowPartitionsDefinition,
)
from filelock import FileLock

from onboarding_pipeline.activation.model import ModelStore
from onboarding_pipeline.code_location import build_definitions
from onboarding_pipeline.config import load_config
from onboarding_pipeline.connectors.base import ConnectorSource
from onboarding_pipeline.engagement.assets import run_summary_lines
from onboarding_pipeline.engagement.scoring import NO_ACCEPTED_MODEL, model_unlock_reason
from onboarding_pipeline.ingestion.load import event_date_span, unread_files_warning
from onboarding_pipeline.ingestion.sources import FileSource
from onboarding_pipeline.orchestration.jobs import REPORT_GROUPS
from onboarding_pipeline.partitions import EVENTS_ASSET, partition_key_of
from onboarding_pipeline.reporting.assets import (
    delivery_outcome,
    report_run_lines,
    watermark_week,
)
from onboarding_pipeline.settings import (
    ENV_CONFIG,
    ENV_DATA_DIR,
    ENV_OUTPUT_DIR,
    ENV_WAREHOUSE_URL,
    Settings,
    default_warehouse_url,
)
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

EVENTS_KEY = AssetKey(EVENTS_ASSET)
T = TypeVar("T")

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

_INSTANCE_YAML = """\
# Local Dagster instance of `onboarding-pipeline run` and `dagster dev` (SQLite).
telemetry:
  enabled: false
nux:
  enabled: false
# One event-log database instead of one file per run (a run over a range writes two events per
# partition and asset), kept open and synced lazily: ~11 ms per partition instead of ~40 ms.
event_log_storage:
  module: onboarding_pipeline.local_instance
  class: LocalSqliteEventLogStorage
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
    report_file: Path | None = None
    notes: list[str] = field(default_factory=list)

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
            *self.notes,
            "Outputs:",
            f"  warehouse:          {self.settings.warehouse_url} (schema onboarding)",
            "  tables:             onboarding." + ", ".join(TABLE_NAMES),
            f"  models and charts:  {self.settings.output_dir / 'models'}, "
            f"{self.settings.output_dir / 'charts'}",
            *self.report_lines,
            f"  output directory:   {self.settings.output_dir}",
            f"  Dagster run history: DAGSTER_HOME={self.dagster_home}",
            *[f"FAILED {name}: {text}" for name, text in self.failures.items()],
            *self.next_steps(),
        ]

    def next_steps(self) -> list[str]:
        """What to open next: the report, and the UI on this run's instance and settings."""
        report = (
            f"  open the report:    {self.report_file}"
            if self.report_file and self.report_file.exists()
            else "  the weekly report was not written (see FAILED above)"
        )
        return ["Next:", report, f"  browse in Dagster:  {dagster_dev_command(self)}"]


def dagster_dev_command(summary: RunSummary) -> str:
    """`dagster dev` on the instance and the settings of this run, ready to paste."""
    defaults = Settings.defaults()
    settings = summary.settings
    env = {"DAGSTER_HOME": str(summary.dagster_home)}
    if settings.data_dir != defaults.data_dir:
        env[ENV_DATA_DIR] = str(settings.data_dir)
    if settings.config_path != settings.data_dir / "onboarding.yaml":
        env[ENV_CONFIG] = str(settings.config_path)
    if settings.output_dir != defaults.output_dir:
        env[ENV_OUTPUT_DIR] = str(settings.output_dir)
    if settings.warehouse_url != default_warehouse_url(settings.output_dir):
        env[ENV_WAREHOUSE_URL] = settings.warehouse_url
    dagster = Path(sys.executable).parent / "dagster"
    program = str(dagster) if dagster.exists() else "dagster"
    assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    return f"{assignments} {shlex.quote(program)} dev -m onboarding_pipeline.definitions"


def local_instance(output_dir: Path) -> tuple[DagsterInstance, Path]:
    """`$DAGSTER_HOME` if set, else a SQLite instance under the output directory.

    Made under a file lock in the instance's folder: Dagster creates its SQLite databases
    (tables, alembic stamp) on first open without guarding against another process doing the
    same, so two runs starting at once on a fresh output directory failed ("table
    alembic_version already exists") or left a database with two alembic heads. The second
    run waits for the first to finish creating them, then opens what is there."""
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        with _instance_lock(home):
            return DagsterInstance.get(), home
    home = output_dir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    wanted = _INSTANCE_YAML.format(history=json.dumps(str(home / "history")))
    with _instance_lock(home):
        # Written when missing, and brought up to date while it is still the one written here.
        if not config.exists() or (
            config.read_text().startswith(_INSTANCE_YAML.splitlines()[0])
            and config.read_text() != wanted
        ):
            config.write_text(wanted)
        return DagsterInstance.from_config(str(home)), home


# Creating the databases of a fresh instance takes a second or two; a run that waits this long
# is stuck behind something else and says so.
INSTANCE_LOCK_TIMEOUT_SECONDS = 120.0


def _instance_lock(home: Path) -> FileLock:
    return FileLock(home / ".instance.lock", timeout=INSTANCE_LOCK_TIMEOUT_SECONDS)


def event_partitions_of(defs: Definitions) -> TimeWindowPartitionsDefinition | None:
    """The partitions of `raw_events` (and `sessions`): daily, weekly or monthly by config."""
    if not defs.resolve_asset_graph().has(EVENTS_KEY):
        return None
    partitions = defs.resolve_assets_def(EVENTS_KEY).partitions_def
    return partitions if isinstance(partitions, TimeWindowPartitionsDefinition) else None


def data_day_span(settings: Settings, defs: Definitions) -> tuple[date, date] | None:
    """First and last day with plausible events in the input files (None with a connector,
    whose events arrive during the run, or without events)."""
    if isinstance((defs.resources or {}).get("source"), ConnectorSource):
        return None
    config = load_config(settings.config_path)
    files = FileSource(data_dir=str(settings.data_dir)).read_events(config.column_mapping.events)
    return event_date_span(files, config)


def partition_range_for_days(
    partitions: TimeWindowPartitionsDefinition, first: date, last: date
) -> tuple[str, str] | None:
    """The keys of the partitions holding `first` and `last`, clipped to the defined ones."""
    keys = partitions.get_partition_keys()
    if not keys:
        return None
    low = max(partition_key_of(partitions, first), keys[0])
    high = min(partition_key_of(partitions, last), keys[-1])
    return (low, high) if low <= high else (keys[0], keys[0])


def data_partition_range(settings: Settings, defs: Definitions) -> tuple[str, str] | None:
    """The event partitions the input's events span, within the configured partitions."""
    return _data_range(settings, defs)[0]


def _data_range(
    settings: Settings, defs: Definitions
) -> tuple[tuple[str, str] | None, date | None]:
    """The partition range of the input's events and their last day (one read of the files)."""
    partitions = event_partitions_of(defs)
    keys = partitions.get_partition_keys() if partitions else []
    if partitions is None or not keys:
        return None, None
    if isinstance((defs.resources or {}).get("source"), ConnectorSource):
        # Events arrive during the run (source_sync): every configured day may hold some.
        return (keys[0], keys[-1]), None
    days = data_day_span(settings, defs)
    if days is None:
        return (keys[0], keys[0]), None
    return partition_range_for_days(partitions, *days), days[1]


def run_span(
    settings: Settings, start: date | None, end: date | None
) -> tuple[tuple[str, str] | None, date | None]:
    """The partition range and report day of `run --start/--end` (days; either may be None,
    then the data's first or last day stands in). Nothing given: (None, None), the default."""
    if start is None and end is None:
        return None, None
    defs = build_definitions(settings)
    partitions = event_partitions_of(defs)
    keys = partitions.get_partition_keys() if partitions else []
    if partitions is None or not keys:
        return None, end
    days = data_day_span(settings, defs)
    first = start or (days[0] if days else partitions.start.date())
    last = end or (days[1] if days else last_day_of(partitions, keys[-1]))
    return partition_range_for_days(partitions, first, max(first, last)), last


def last_day_of(partitions: TimeWindowPartitionsDefinition, key: str) -> date:
    """The last day of partition `key` that has begun (the current partition ends later)."""
    end = min(partitions.time_window_for_partition_key(key).end, datetime.now(UTC))
    return (end - timedelta(microseconds=1)).date()


def run_pipeline(
    settings: Settings,
    *,
    partition_range: tuple[str, str] | None = None,
    report_day: date | None = None,
    echo: Callable[[str], None] = print,
) -> RunSummary:
    """Materialize every asset in dependency order.

    Partitioned assets run once over `partition_range` (default: the partitions the input's
    events span): their single-run backfill policy makes a range one run. The weekly report
    runs for the week holding `report_day` (default: the data's last day, or the range's).
    Like a Dagster run, a failure (or a failed blocking check) skips only what depends on it;
    the summary lists both, and the caller decides the exit status.
    """
    started = time.monotonic()
    defs = build_definitions(settings)
    instance, home = local_instance(settings.output_dir)
    partitions = event_partitions_of(defs)
    span = partition_range
    if span is None:
        span, last_day = _data_range(settings, defs)
        report_day = report_day or last_day
    if span is not None and partitions is not None:
        report_day = report_day or last_day_of(partitions, span[1])
        _warn_if_many_partitions(partitions, span, echo)
    report_span = (span[0], report_day.isoformat()) if span and report_day else span
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    keys = list(graph.toposorted_asset_keys)
    failures: dict[str, str] = {}
    skipped: set[AssetKey] = set()
    report_week: str | None = None
    warnings: list[str] = []
    # What this run's delivery step did: "sent" vs found already sent by another run.
    delivery: dict[str, list[str]] | None = None
    try:
        for index, key in enumerate(keys, start=1):
            label = key.to_user_string()
            if any(parent in skipped for parent in graph.get(key).parent_keys):
                skipped.add(key)
                echo(f"[{index}/{len(keys)}] {label} skipped: an upstream asset failed")
                continue
            partitions_def = defs.resolve_assets_def(key).partitions_def
            # Reporting assets run for the week holding the data's watermark (event partitions
            # may be weekly too: the group, not the partition type, tells them apart).
            week = (
                watermark_week(partitions_def, report_span)
                if graph.get(key).group_name in REPORT_GROUPS
                else None
            )
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
            for warning in _warnings_of(result):  # once, not once per partition
                if warning not in warnings:
                    warnings.append(warning)
            if key == AssetKey("report_deliveries"):
                delivery = delivery_outcome(result)
            if not result.success:
                failures[label] = failure_text(result)
                skipped.add(key)
                echo(f"      FAILED: {failures[label]}")
                continue
            echo(f"      done in {time.monotonic() - step_started:.1f} s")
    finally:
        instance.dispose()
    summary = summarize(settings, home, span)
    summary.failures = failures
    source = (defs.resources or {}).get("source")
    if isinstance(source, FileSource):
        # Said in the summary too: a compressed export left unread is easy to miss otherwise.
        unread = source.unread_files()
        if unread and unread_files_warning(unread) not in warnings:
            warnings.append(unread_files_warning(unread))
    # Skipped empty files, removed files whose rows were deleted, renamed headers, ...: said
    # in the summary, not only in the assets' metadata.
    summary.notes += [f"  warning: {warning}" for warning in warnings]
    if report_week:
        reported: str = report_week
        warehouse = WarehouseResource(url=settings.warehouse_url)
        summary.report_file = settings.output_dir / "reports" / reported / "report.html"
        try:
            summary.report_lines = _guarded(
                "report summary",
                lambda: report_run_lines(settings.output_dir, warehouse, reported, delivery),
                [],
                summary.notes,
            )
        finally:
            warehouse.close()
    summary.seconds = time.monotonic() - started
    return summary


# Above this many partitions in one run, Dagster's per-partition bookkeeping (one planned and
# one materialization event per partition and asset) outweighs the warehouse work.
MANY_PARTITIONS = 1000


def _warn_if_many_partitions(
    partitions: TimeWindowPartitionsDefinition,
    span: tuple[str, str],
    echo: Callable[[str], None],
) -> None:
    count = len(partitions.get_partition_keys_in_range(PartitionKeyRange(*span)))
    if count > MANY_PARTITIONS:
        echo(
            f"note: this run covers {count} partitions; Dagster records each one for raw_events "
            "and sessions (about 10 ms apiece on the local instance). For a long history set "
            "`partitions: monthly` (or weekly) in onboarding.yaml: the same tables, far fewer "
            "partitions."
        )


def summarize(settings: Settings, home: Path, span: tuple[str, str] | None) -> RunSummary:
    warehouse = WarehouseResource(url=settings.warehouse_url)
    notes: list[str] = []
    try:
        quarantine = warehouse.table(QUARANTINE.name)
        reasons = warehouse.execute(quarantine.group_by("reason").agg(rows=quarantine.count()))
        paths = warehouse.table(CRITICAL_PATH.name)
        # The main landmark (the observation horizon), as the asset's metadata and the report.
        main = load_config(settings.config_path).observation_hours
        overall = warehouse.execute(
            paths.filter((paths.segment_type == "overall") & (paths.landmark_hours == main))
        )
        scores = warehouse.table(ACTIVATION_SCORES.name)
        return RunSummary(
            settings=settings,
            dagster_home=home,
            partition_range=span,
            users=int(warehouse.execute(warehouse.table(RAW_USERS.name).count())),
            events=int(warehouse.execute(warehouse.table(RAW_EVENTS.name).count())),
            sessions=int(warehouse.execute(warehouse.table(SESSIONS.name).count())),
            quarantined_by_reason={row.reason: int(row.rows) for row in reasons.itertuples()},
            model=_guarded(
                "activation model",
                lambda: _current_model(settings.output_dir / "models"),
                "-",
                notes,
            ),
            users_scored=int(
                warehouse.execute(scores.filter(scores.population == "onboarding").count())
            ),
            # One name per class (the table has a row per landmark and event).
            events_by_class={
                kind: sorted(overall.event_name[overall.classification == kind])
                for kind in ("driver", "prerequisite", "vanity", "blocker")
            },
            engagement_lines=_guarded(
                "engagement summary", lambda: run_summary_lines(warehouse), [], notes
            ),
            notes=notes,
        )
    finally:
        warehouse.close()


def _guarded(what: str, compute: Callable[[], T], fallback: T, notes: list[str]) -> T:
    """`compute()`, or `fallback` and a note: a summary section must never hide the run."""
    try:
        return compute()
    except Exception as error:
        notes.append(f"  {what} unavailable: {type(error).__name__}: {error}")
        return fallback


def _current_model(folder: Path) -> str:
    store = ModelStore(folder)
    version = store.current_version()
    if version is None:
        # Why, from the latest training attempt (what would unlock it), when there was one.
        reason = model_unlock_reason(folder).removeprefix(f"{NO_ACCEPTED_MODEL}: ")
        return f"none accepted yet: {reason}"
    metrics = json.loads((folder / f"{version}.json").read_text())
    low, high = metrics["roc_auc_ci"]
    return f"{version}, ROC AUC {metrics['roc_auc']:.3f} (95% CI {low:.3f}-{high:.3f})"


def _warnings_of(result: object) -> list[str]:
    """The warnings the run's assets put in their metadata: ingestion's `warnings` (a
    markdown list) and the config checks' `config_warnings` (a JSON list)."""
    found = []
    for event in result.get_asset_materialization_events():  # type: ignore[attr-defined]
        metadata = event.materialization.metadata
        if "warnings" in metadata:
            text = str(metadata["warnings"].value)
            found += [line.removeprefix("- ") for line in text.splitlines() if line]
        if "config_warnings" in metadata:
            found += [f"onboarding.yaml: {w}" for w in metadata["config_warnings"].value or []]
    return found


# Errors that say what the user must fix (file, row, key): shown without their class path.
USER_ERRORS = {"ConfigError", "ConfigDataError", "InputError", "ModelRefused"}


def failure_text(result: object) -> str:
    lines = []
    for event in result.all_events:  # type: ignore[attr-defined]
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            # Dagster wraps the real exception; its cause names the file, row or setting.
            while error.cause is not None:
                error = error.cause
            # A failed blocking check is said below, by the check itself.
            if error.cls_name == "DagsterAssetCheckFailedError":
                continue
            message = error.message.strip()
            if error.cls_name in USER_ERRORS:
                # A mistake in the input or the config: its words, not the class path.
                message = re.sub(rf"^[\w.]*\b{error.cls_name}: ", "", message)
            lines.append(message)
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                lines.append(
                    f"check {evaluation.check_name} failed: {evaluation.description or ''} "
                    f"{ {k: v.value for k, v in evaluation.metadata.items()} }"
                )
    return "\n".join(lines) or "see the Dagster run log"

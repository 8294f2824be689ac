"""The weekly report as plain data: gathered from warehouse tables and model files, rendered
to HTML (jinja2, autoescaped) and Markdown, with matplotlib charts. No Dagster here."""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from onboarding_pipeline.activation.critical_path import BEYOND_MAX_EVENTS
from onboarding_pipeline.activation.model import ModelStore
from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.engagement.scoring import model_unlock_reason, scoring_mode
from onboarding_pipeline.engagement.step_effects import confirmed_events
from onboarding_pipeline.warehouse import WarehouseResource

NOT_ENOUGH_DATA = "Not enough data yet"
DASH = "\u2013"  # shown for a missing number

KPI_LABELS = {
    "activation_rate": "Activation rate",
    "median_hours_to_value": "Median time to value",
    "p75_hours_to_value": "p75 time to value",
    "retention_rate": "Retention",
    "onboarding_completion_rate": "Onboarding completion",
}
# KPIs where a lower value is better (hours); every other KPI is a rate where higher is better.
LOWER_IS_BETTER = {"median_hours_to_value", "p75_hours_to_value"}
# Tables of the engagement domain; the report reads them when they exist.
ENGAGEMENT_TABLES = ("stalled_users", "health_scores", "intervention_queue")
EFFECTIVENESS_TABLE = "intervention_effectiveness"
STEP_EXPERIMENT_SHOWN = [
    "step",
    "step_events",
    "treated_users",
    "holdout_users",
    "step_itt",
    "step_effect",
    "ci_low",
    "ci_high",
    "evidence",
    "note",
]


@dataclass
class ReportData:
    """Everything the templates and the Slack summary show, as JSON-ready values.

    A section that lacks input is None and its reason is in `missing[section]`."""

    title: str
    week: str  # Monday of the report week (the partition key)
    week_end: str  # Sunday
    watermark: str | None  # latest accepted event ("now" of the data)
    generated_at: str  # in the configured time zone
    language: str
    signups: dict[str, int] | None = None  # this_week, previous_week
    kpis: list[dict[str, Any]] | None = None
    funnel: list[dict[str, Any]] | None = None
    worst_drop: dict[str, Any] | None = None
    critical_path: dict[str, list[dict[str, Any]]] | None = None
    critical_path_landmark_hours: int | None = None
    model: dict[str, Any] | None = None
    base_rate: list[dict[str, Any]] | None = None
    drift: dict[str, Any] | None = None
    at_risk: list[dict[str, Any]] | None = None
    queue: dict[str, Any] | None = None
    effectiveness: list[dict[str, Any]] | None = None
    follow_up_days: float | None = None  # the effectiveness outcome's follow-up
    step_experiments: list[dict[str, Any]] | None = None  # steps tested by the holdout
    # Set when users still onboarding have no activation probability: how they were judged
    # instead (health score and rules) and what would unlock the model.
    scoring_note: str | None = None
    review: list[dict[str, Any]] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    # Set for a week before the one that just ended (a backfill): which state the sections
    # show (today's tables, not that week's) and that the report is not delivered.
    state_note: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_json(cls, text: str) -> ReportData:
        return cls(**json.loads(text))


@dataclass
class ReportFiles:
    folder: Path
    html: Path
    markdown: Path
    data: Path
    charts: dict[str, Path]


def week_bounds(week: str) -> tuple[datetime, datetime]:
    """[Monday 00:00 UTC, next Monday) of a weekly partition key."""
    start = datetime.combine(date.fromisoformat(week), datetime.min.time(), tzinfo=UTC)
    return start, start + timedelta(days=7)


# ---------------------------------------------------------------- gather


def existing_tables(warehouse: WarehouseResource) -> set[str]:
    return set(warehouse.connect().list_tables(database=warehouse.schema_name))


def read_table(
    warehouse: WarehouseResource, name: str, columns: list[str], tables: set[str]
) -> pd.DataFrame | None:
    """The table as pandas if it exists, has rows and carries `columns`; else None."""
    if name not in tables:
        return None
    table = warehouse.table(name)
    if not set(columns) <= set(table.columns):
        return None
    frame = warehouse.execute(table.select(*columns))
    return frame if len(frame) else None


def gather_report(
    warehouse: WarehouseResource,
    config: ProductConfig,
    output_dir: Path,
    week: str,
    *,
    generated_at: datetime | None = None,
) -> ReportData:
    """Read every input of the report for `week` (a Monday); missing inputs become
    "not enough data yet" instead of errors, so a fresh install renders."""
    settings = config.report
    start, end = week_bounds(week)
    zone = ZoneInfo(settings.timezone)
    generated = (generated_at or datetime.now(UTC)).astimezone(zone)
    tables = existing_tables(warehouse)
    data = ReportData(
        title=settings.title,
        week=week,
        week_end=(start + timedelta(days=6)).date().isoformat(),
        watermark=None,
        generated_at=f"{generated:%Y-%m-%d %H:%M %Z}",
        language=settings.language,
    )
    missing = data.missing

    if "raw_events" in tables:
        events = warehouse.table("raw_events")
        watermark = config.as_of or warehouse.execute(events.timestamp.max())
        if watermark is not None and watermark == watermark:
            data.watermark = f"{pd.Timestamp(watermark).astimezone(zone):%Y-%m-%d %H:%M %Z}"
    if "raw_users" in tables:
        users = warehouse.table("raw_users")

        def signups(since: datetime, until: datetime) -> int:
            rows = users.filter((users.signup_at >= since) & (users.signup_at < until))
            return int(warehouse.execute(rows.count()))

        data.signups = {
            "this_week": signups(start, end),
            "previous_week": signups(start - timedelta(days=7), start),
        }

    kpis = read_table(
        warehouse,
        "onboarding_kpis",
        [
            "signup_week",
            "kpi",
            "value",
            "denominator",
            "eligible_users",
            "target",
            "ci_low",
            "ci_high",
        ],
        tables,
    )
    data.kpis, data.base_rate = _kpis(kpis, week)
    if not data.kpis:
        data.kpis = None
        missing["kpis"] = "no signup cohort up to this week has a measured KPI"

    funnel = read_table(
        warehouse,
        "funnel",
        [
            "segment_type",
            "step_index",
            "step",
            "users_entered",
            "users_reached",
            "conversion_from_start",
            "users_at_previous",
            "conversion_from_previous",
            "dropped",
            "drop_off_rate",
            "median_hours_from_previous",
        ],
        tables,
    )
    data.funnel, data.worst_drop = _funnel(funnel)
    if not data.funnel:
        data.funnel = None
        missing["funnel"] = "the funnel table is empty (no funnel_steps configured or no run yet)"

    paths = read_critical_path(warehouse, tables, config.observation_hours)
    experiments = read_table(
        warehouse,
        "step_experiments",
        STEP_EXPERIMENT_SHOWN,
        tables,
    )
    data.critical_path = _critical_path(
        paths,
        settings.top_events,
        confirmed_events(experiments) if experiments is not None else set(),
        alpha=config.critical_path.alpha,
    )
    if experiments is not None and len(experiments):
        data.step_experiments = _records(experiments)
    data.critical_path_landmark_hours = config.observation_hours
    if data.critical_path is None:
        missing["critical_path"] = (
            "no events have been judged yet (no closed-window users who had not activated by "
            f"hour {config.observation_hours})"
        )

    models = output_dir / "models"
    data.model = _model(models)
    if data.model is None:
        missing["model"] = model_unlock_reason(models)
    data.drift = _drift(data.base_rate, data.model)
    if not data.base_rate:
        data.base_rate = None
        missing["base_rate"] = "no signup cohort has a closed activation window yet"

    data.scoring_note = _scoring_note(warehouse, tables, models)
    data.at_risk = _at_risk(warehouse, tables)
    if data.at_risk is None:
        missing["at_risk"] = (
            "nobody is onboarding right now (every signup has activated or their window has closed)"
            if _nobody_onboarding(warehouse, tables)
            else "the engagement tables (stalled_users, health_scores) are empty or not built yet"
        )
    data.queue = _queue(warehouse, tables)
    if data.queue is None:
        missing["queue"] = "the intervention queue is empty or not built yet"
    effectiveness = read_table(
        warehouse,
        EFFECTIVENESS_TABLE,
        [
            "segment_type",
            "segment",
            "treated_users",
            "treated_rate",
            "holdout_users",
            "holdout_rate",
            "difference",
            "ci_low",
            "ci_high",
            "p_value",
            "adjusted_difference",
            "adjusted_ci_low",
            "adjusted_ci_high",
            "variance_reduction",
            "q_value",
        ],
        tables,
    )
    if effectiveness is not None:
        # Rows with an estimate only: the others lack users whose follow-up is over.
        effectiveness = effectiveness[effectiveness.difference.notna()]
    if effectiveness is None or effectiveness.empty:
        missing["effectiveness"] = (
            "no intervention has enough treated and holdout users whose follow-up "
            f"({config.interventions.follow_up_days:g} days after assignment) is over"
        )
    else:
        data.effectiveness = _records(effectiveness)
        data.follow_up_days = config.interventions.follow_up_days

    data.review = review_items(data, config)
    if not data.review:
        missing["review"] = (
            "no KPI misses its target and there are no funnel, critical-path or engagement findings"
        )
    return data


CRITICAL_PATH_SHOWN = [
    "segment_type",
    "event_name",
    "classification",
    "users_with_event",
    "activation_rate_with",
    "activation_rate_without",
    "lift",
]
# The effect the report ranks by, newest layout first: the total effect (adjusted for
# segments, engagement and earlier events), or the adjusted effect of older tables.
EFFECT_COLUMNS = (("total_effect", "total_q_value"), ("adjusted_effect", "adjusted_q_value"))


def read_critical_path(
    warehouse: WarehouseResource, tables: set[str], main_landmark: int
) -> pd.DataFrame | None:
    """The critical path at the main landmark (the observation horizon), with its effect as
    `adjusted_effect` / `adjusted_q_value`; None when empty or not built."""
    if "critical_path" not in tables:
        return None
    columns = set(warehouse.table("critical_path").columns)
    for effect, q_value in EFFECT_COLUMNS:
        if {effect, q_value} <= columns:
            break
    else:
        return None
    landmark = ["landmark_hours"] if "landmark_hours" in columns else []
    through = ["works_through"] if "works_through" in columns else []
    naive = [c for c in ("q_value", "note") if c in columns]
    frame = read_table(
        warehouse,
        "critical_path",
        [*CRITICAL_PATH_SHOWN, effect, q_value, *landmark, *through, *naive],
        tables,
    )
    if frame is None:
        return None
    if landmark:
        frame = frame[frame.landmark_hours == main_landmark].drop(columns="landmark_hours")
    frame = frame.rename(columns={effect: "adjusted_effect", q_value: "adjusted_q_value"})
    if "works_through" not in frame.columns:
        frame["works_through"] = None
    return frame if len(frame) else None


def _onboarding_scores(warehouse: WarehouseResource, tables: set[str]) -> pd.DataFrame | None:
    if "activation_scores" not in tables:
        return None
    scores = warehouse.table("activation_scores")
    if not {"population", "activation_probability"} <= set(scores.columns):
        return None
    rows = scores.filter(scores.population == "onboarding").select("activation_probability")
    return warehouse.execute(rows)


def _scoring_note(warehouse: WarehouseResource, tables: set[str], models: Path) -> str | None:
    """What stands in for the model when users still onboarding have no probability."""
    scores = _onboarding_scores(warehouse, tables)
    if scores is None or scoring_mode(scores) != "rules":
        return None
    return (
        f"No activation probabilities this week ({model_unlock_reason(models)}). Risk levels, "
        "intervention types and priorities come from the health score and days since signup."
    )


def _nobody_onboarding(warehouse: WarehouseResource, tables: set[str]) -> bool:
    scores = _onboarding_scores(warehouse, tables)
    built = "user_features" in tables
    return built and scores is not None and scoring_mode(scores) == "nobody_onboarding"


def clean_value(value: Any) -> Any:
    """JSON-ready scalars: NaN/NA/NaT -> None, numpy -> Python."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {str(key): clean_value(value) for key, value in row.items()}
        for row in frame.to_dict(orient="records")
    ]


def _kpis(
    kpis: pd.DataFrame | None, week: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per KPI: the newest measured signup cohort up to `week` vs the cohort before it, the
    all-signups value and the target; plus the activation-rate series (base rate per cohort)."""
    if kpis is None:
        return [], []
    cohorts = kpis[(kpis.signup_week != "all") & (kpis.signup_week <= week)]
    measured = cohorts[cohorts.value.notna()].sort_values("signup_week")
    overall = kpis[kpis.signup_week == "all"].set_index("kpi")
    rows = []
    for kpi in dict.fromkeys(kpis.kpi):
        series = measured[measured.kpi == kpi]
        if series.empty:
            continue
        this = series.iloc[-1]
        previous = series.iloc[-2] if len(series) > 1 else None
        target = clean_value(this.target)
        value = float(this.value)
        lower_better = kpi in LOWER_IS_BETTER
        row = {
            "kpi": kpi,
            "label": KPI_LABELS.get(kpi, kpi.replace("_", " ").capitalize()),
            "unit": "hours" if lower_better else "rate",
            "cohort": this.signup_week,
            "value": value,
            "users": int(this.eligible_users),
            "ci_low": clean_value(this.ci_low),
            "ci_high": clean_value(this.ci_high),
            "previous_cohort": None if previous is None else previous.signup_week,
            "previous_value": None if previous is None else float(previous.value),
            "change": None if previous is None else value - float(previous.value),
            "all_signups": clean_value(overall.value.get(kpi)) if kpi in overall.index else None,
            "target": target,
            "meets_target": None
            if target is None
            else (value <= target if lower_better else value >= target),
        }
        rows.append(row)
    rates = measured[measured.kpi == "activation_rate"].tail(12)
    base_rate = [
        {
            "cohort": row["signup_week"],
            "rate": float(row["value"]),
            "users": int(row["denominator"]),
            "ci_low": clean_value(row["ci_low"]),
            "ci_high": clean_value(row["ci_high"]),
        }
        for row in rates.to_dict(orient="records")
    ]
    return rows, base_rate


def _funnel(
    funnel: pd.DataFrame | None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    if funnel is None:
        return [], None
    overall = funnel[funnel.segment_type == "overall"].sort_values("step_index")
    rows = _records(overall.drop(columns=["segment_type"]))
    later = overall[
        (overall.step_index > 1)
        & (overall.users_at_previous > 0)
        & overall.drop_off_rate.notna()
        & overall.dropped.notna()
    ]
    worst = None
    if not later.empty:
        step = later.iloc[int(later.drop_off_rate.to_numpy().argmax())]
        index = int(step.step_index)
        previous = overall[overall.step_index == index - 1]
        worst = {
            "step": step.step,
            "from_step": previous.step.iloc[0] if len(previous) else None,
            "drop_off_rate": float(step.drop_off_rate),
            "dropped": int(step.dropped),
            "users_at_previous": int(step.users_at_previous),
        }
    return rows, worst


def _critical_path(
    paths: pd.DataFrame | None, top: int, confirmed: set[str], alpha: float = 0.05
) -> dict[str, list[dict[str, Any]]] | None:
    """The classes to show; each row's `evidence` is `experiment` when the holdout confirmed
    a step with its event (`step_experiments`), else `observational`."""
    if paths is None:
        return None
    overall = paths[paths.segment_type == "overall"]
    if overall.empty:
        return None
    overall = overall.assign(
        evidence=np.where(overall.event_name.isin(confirmed), "experiment", "observational")
    )
    shown = [
        "event_name",
        "users_with_event",
        "activation_rate_with",
        "activation_rate_without",
        "lift",
        "adjusted_effect",
        "adjusted_q_value",
        "works_through",
        "evidence",
    ]

    def pick(kind: str, by: str, ascending: bool) -> list[dict[str, Any]]:
        rows = overall[overall.classification == kind].sort_values(by, ascending=ascending)
        return _records(rows[shown].head(top))

    # Events beyond `max_events` are only screened (naive rates): the strongly associated
    # ones are listed apart, so a rare blocker left out of the model is not silently missing.
    empty = pd.Series(np.nan, index=overall.index)
    beyond = overall.get("note", empty).astype(str).str.startswith(BEYOND_MAX_EVENTS)
    naive_q = pd.to_numeric(overall.get("q_value", empty), errors="coerce")
    screened = overall[beyond & (naive_q < alpha)]
    with np.errstate(divide="ignore"):
        strength = np.abs(np.log(pd.to_numeric(screened.lift, errors="coerce").astype(float)))
    screened = screened.assign(_strength=strength).sort_values("_strength", ascending=False)
    return {
        "not_judged": _records(screened[[c for c in shown if c in screened]].head(top)),
        "drivers": pick("driver", "adjusted_effect", ascending=False),
        "prerequisites": pick("prerequisite", "adjusted_effect", ascending=False),
        "vanity": pick("vanity", "lift", ascending=False),
        "blockers": pick("blocker", "adjusted_effect", ascending=True),
    }


def _model(folder: Path) -> dict[str, Any] | None:
    pointer = folder / "current.json"
    if not pointer.exists():
        return None
    version = json.loads(pointer.read_text())["version"]
    metrics_file = folder / f"{version}.json"
    if not metrics_file.exists():
        return None
    metrics = json.loads(metrics_file.read_text())
    low, high = metrics.get("roc_auc_ci", [None, None])
    latest = ModelStore(folder).status()
    refused = latest.get("accepted") is False and latest.get("version") != version
    return {
        # The newest training attempt, when it was refused (this version stays in use).
        "latest_attempt": latest.get("reason") if refused else None,
        "version": version,
        "roc_auc": metrics.get("roc_auc"),
        "roc_auc_ci_low": low,
        "roc_auc_ci_high": high,
        "pr_auc": metrics.get("pr_auc"),
        "brier": metrics.get("brier"),
        "train_base_rate": metrics.get("train_base_rate"),
        "validation_base_rate": metrics.get("validation_base_rate"),
        "train_signups": metrics.get("train_signups"),
        "validation_signups": metrics.get("validation_signups"),
        "train_users": metrics.get("train_users"),
        "validation_users": metrics.get("validation_users"),
    }


def _drift(base_rate: list[dict[str, Any]], model: dict[str, Any] | None) -> dict[str, Any] | None:
    """The newest cohort's activation rate against the previous cohort and the rate the model
    was trained on; drift = the training rate lies outside the cohort's 95% interval."""
    if not base_rate:
        return None
    latest = base_rate[-1]
    previous = base_rate[-2] if len(base_rate) > 1 else None
    train = model.get("train_base_rate") if model else None
    low, high = latest["ci_low"], latest["ci_high"]
    drifted = train is not None and low is not None and not (low <= train <= high)
    return {
        "cohort": latest["cohort"],
        "rate": latest["rate"],
        "ci_low": low,
        "ci_high": high,
        "users": latest["users"],
        "previous_cohort": previous["cohort"] if previous else None,
        "previous_rate": previous["rate"] if previous else None,
        "train_base_rate": train,
        "drifted": drifted,
    }


def _at_risk(warehouse: WarehouseResource, tables: set[str]) -> list[dict[str, Any]] | None:
    """Stalled and high-risk users per owner and failure label."""
    stalled = read_table(
        warehouse, "stalled_users", ["user_id", "stalled", "failure_label"], tables
    )
    health = read_table(warehouse, "health_scores", ["user_id", "risk_level", "population"], tables)
    if health is not None:
        # Back-test rows score past users as of their early horizon: not at risk today.
        health = health[health.population == "onboarding"]
    else:
        health = read_table(warehouse, "health_scores", ["user_id", "risk_level"], tables)
    if stalled is None and health is None:
        return None
    frames = []
    if stalled is not None:
        stalled = stalled[stalled.stalled.fillna(False).astype(bool)]
        frames.append(
            stalled.assign(is_stalled=True, is_at_risk=False)[
                ["user_id", "failure_label", "is_stalled", "is_at_risk"]
            ]
        )
    if health is not None:
        risky = health[health.risk_level == "high"]
        frames.append(
            risky.assign(failure_label=None, is_stalled=False, is_at_risk=True)[
                ["user_id", "failure_label", "is_stalled", "is_at_risk"]
            ]
        )
    people = pd.concat(frames, ignore_index=True)
    people = people.groupby("user_id", as_index=False).agg(
        failure_label=("failure_label", "first"),
        is_stalled=("is_stalled", "max"),
        is_at_risk=("is_at_risk", "max"),
    )
    queue = read_table(warehouse, "intervention_queue", ["user_id", "owner"], tables)
    owners = (
        queue.drop_duplicates("user_id").set_index("user_id").owner
        if queue is not None
        else pd.Series(dtype="object")
    )
    people["owner"] = people.user_id.map(owners).fillna("unassigned")
    people["failure_label"] = people.failure_label.fillna("not stalled")
    if people.empty:
        return None
    grouped = (
        people.groupby(["owner", "failure_label"], as_index=False)
        .agg(
            stalled=("is_stalled", "sum"), at_risk=("is_at_risk", "sum"), users=("user_id", "count")
        )
        .sort_values(["users", "owner"], ascending=[False, True])
    )
    return _records(grouped)


def _queue(warehouse: WarehouseResource, tables: set[str]) -> dict[str, Any] | None:
    queue = read_table(
        warehouse,
        "intervention_queue",
        ["user_id", "intervention_type", "channel", "owner", "holdout"],
        tables,
    )
    if queue is None:
        return None
    by_type = (
        queue.groupby(["intervention_type", "channel"], as_index=False)
        .agg(users=("user_id", "count"), holdout=("holdout", "sum"))
        .sort_values("users", ascending=False)
    )
    # Workloads: treated rows only (a held-out user is in nobody's queue of work).
    treated = queue[~queue.holdout.fillna(False).astype(bool)]
    by_owner = (
        treated.groupby("owner", as_index=False)
        .agg(users=("user_id", "count"))
        .sort_values("users", ascending=False)
    )
    return {
        "users": len(queue),
        "holdout": int(queue.holdout.fillna(False).astype(bool).sum()),
        "by_type": _records(by_type),
        "by_owner": _records(by_owner),
    }


# ---------------------------------------------------------------- weekly review


def review_items(data: ReportData, config: ProductConfig) -> list[dict[str, Any]]:
    """The 1-3 issues for the weekly review: every candidate gets a severity in [0, 1] from
    the data (relative KPI shortfall, drop-off rate, lost activation, share of stalled users);
    the most severe per area are kept, so one area cannot fill the whole agenda. A KPI that
    misses its target comes first (it is what the review is for), then by severity."""
    owners = config.report.owners
    candidates: list[dict[str, Any]] = []
    for kpi in data.kpis or []:
        if kpi["meets_target"] is False and kpi["target"]:
            value, target = kpi["value"], kpi["target"]
            shortfall = abs(value - target) / target
            candidates.append(
                {
                    "area": "kpis",
                    "severity": min(1.0, shortfall),
                    "title": f"{kpi['label']} misses its target",
                    "evidence": f"{kpi['label']} of the {kpi['cohort']} signup cohort is "
                    f"{fmt_kpi(value, kpi['unit'])} against a target of "
                    f"{fmt_kpi(target, kpi['unit'])} ({kpi['users']:,} users"
                    + (
                        f"; previous cohort {fmt_kpi(kpi['previous_value'], kpi['unit'])}"
                        if kpi["previous_value"] is not None
                        else ""
                    )
                    + ").",
                    "owner": owners.kpis,
                }
            )
    if data.worst_drop:
        drop = data.worst_drop
        candidates.append(
            {
                "area": "funnel",
                "severity": drop["drop_off_rate"],
                "title": f"Biggest funnel leak: {drop['from_step']} → {drop['step']}",
                "evidence": f"{fmt_rate(drop['drop_off_rate'])} of the "
                f"{drop['users_at_previous']:,} users who reached {drop['from_step']} never "
                f"reached {drop['step']} within the activation window ({drop['dropped']:,} users).",
                "owner": owners.funnel,
            }
        )
    blockers = (data.critical_path or {}).get("blockers") or []
    if blockers:
        worst = blockers[0]
        with_, without = worst["activation_rate_with"], worst["activation_rate_without"]
        loss = (without - with_) / without if with_ is not None and without else 0.0
        candidates.append(
            {
                "area": "critical_path",
                "severity": max(0.0, min(1.0, loss)),
                "title": f"Strongest blocker: {worst['event_name']}",
                "evidence": f"Users who hit {worst['event_name']} early activate at "
                f"{fmt_rate(with_)} vs {fmt_rate(without)} without it "
                f"({worst['users_with_event']:,} users; adjusted effect "
                f"{fmt_num(worst['adjusted_effect'])}, q = {fmt_num(worst['adjusted_q_value'])}"
                "): an association, not proof of cause; an experiment that removes it would "
                "show how much activation it costs.",
                "owner": owners.critical_path,
            }
        )
    if data.drift and data.drift["drifted"]:
        drift = data.drift
        candidates.append(
            {
                "area": "model",
                "severity": min(1.0, abs(drift["rate"] - drift["train_base_rate"]) * 2),
                "title": "Activation base rate drifted from the model's training data",
                "evidence": f"The {drift['cohort']} cohort activates at {fmt_rate(drift['rate'])} "
                f"(95% CI {fmt_rate(drift['ci_low'])} to {fmt_rate(drift['ci_high'])}); the "
                f"model was trained at {fmt_rate(drift['train_base_rate'])}.",
                "owner": owners.model,
            }
        )
    stalled = [row for row in data.at_risk or [] if row["stalled"]]
    total = sum(row["stalled"] for row in stalled)
    # A named failure label points at a fix; "other" does not.
    stalled = [row for row in stalled if row["failure_label"] != "other"]
    if stalled:
        by_label: dict[str, int] = {}
        for row in stalled:
            by_label[row["failure_label"]] = by_label.get(row["failure_label"], 0) + row["stalled"]
        label, count = max(by_label.items(), key=lambda item: item[1])
        # The queue owner (a team) holding most of those users goes into the evidence.
        holders = [row for row in stalled if row["failure_label"] == label]
        team = max(holders, key=lambda row: row["stalled"])["owner"]
        candidates.append(
            {
                "area": "engagement",
                "severity": count / total,
                "title": f"Most stalled users fail with {label.replace('_', ' ')}",
                "evidence": f"{count:,} of {total:,} stalled users ({fmt_rate(count / total)}) "
                f"carry the failure label {label}"
                + (f"; most are queued to {team}." if team != "unassigned" else "."),
                "owner": owners.engagement,
            }
        )
    best: dict[str, dict[str, Any]] = {}
    for item in candidates:
        if item["area"] not in best or item["severity"] > best[item["area"]]["severity"]:
            best[item["area"]] = item
    ranked = sorted(
        best.values(), key=lambda item: (item["area"] == "kpis", item["severity"]), reverse=True
    )
    return ranked[: config.report.review_items]


# ---------------------------------------------------------------- charts


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    _pyplot().close(figure)
    return buffer.getvalue()


def funnel_png(funnel: list[dict[str, Any]]) -> bytes:
    """Users reaching each step, labelled with conversion from start."""
    plt = _pyplot()
    steps = [row["step"] for row in funnel][::-1]
    reached = [row["users_reached"] for row in funnel][::-1]
    rates = [row["conversion_from_start"] or 0.0 for row in funnel][::-1]
    figure, axis = plt.subplots(figsize=(6.5, 0.5 * len(funnel) + 1.3), dpi=100)
    axis.barh(steps, reached, color="#4c78a8")
    for y, (count, rate) in enumerate(zip(reached, rates, strict=True)):
        axis.text(count, y, f" {count:,} ({rate:.0%})", va="center")
    axis.set_xlim(0, max(reached) * 1.3 if reached and max(reached) else 1)
    axis.set_xlabel("users reaching the step within the activation window")
    axis.set_title("Onboarding funnel")
    return _png(figure)


def base_rate_png(base_rate: list[dict[str, Any]], train_rate: float | None) -> bytes:
    """Activation rate per signup cohort with its 95% interval and the model's training rate."""
    plt = _pyplot()
    cohorts = [row["cohort"] for row in base_rate]
    rates = [min(max(row["rate"], 0.0), 1.0) for row in base_rate]
    low, high = [], []
    for rate, row in zip(rates, base_rate, strict=True):
        # Bounds clipped to [0, 1] and to the rate: a Wilson bound of -1e-17 (float rounding
        # at a rate of 0 or 1) would be a negative error bar, which matplotlib rejects.
        ci_low = rate if row["ci_low"] is None else min(max(row["ci_low"], 0.0), rate)
        ci_high = rate if row["ci_high"] is None else max(min(row["ci_high"], 1.0), rate)
        low.append(rate - ci_low)
        high.append(ci_high - rate)
    figure, axis = plt.subplots(figsize=(6.5, 3.2), dpi=100)
    axis.errorbar(cohorts, rates, yerr=[low, high], fmt="o-", color="#4c78a8", capsize=3)
    if train_rate is not None:
        axis.axhline(train_rate, color="#e45756", linestyle="--", label="model training rate")
        axis.legend(loc="best")
    axis.set_ylim(0, 1)
    axis.set_ylabel("activation rate")
    axis.set_title("Activation base rate by signup week")
    axis.tick_params(axis="x", rotation=45)
    return _png(figure)


def build_charts(data: ReportData) -> dict[str, bytes]:
    charts = {}
    if data.funnel:
        charts["funnel"] = funnel_png(data.funnel)
    if data.base_rate:
        train = data.model.get("train_base_rate") if data.model else None
        charts["base_rate"] = base_rate_png(data.base_rate, train)
    return charts


# ---------------------------------------------------------------- render


def fmt_rate(value: float | None) -> str:
    return DASH if value is None else f"{value:.1%}"


def fmt_num(value: float | None, digits: int = 3) -> str:
    return (
        DASH
        if value is None
        else f"{value:.{digits}g}"
        if abs(value) < 1e-3
        else f"{value:.{digits}f}"
    )


def fmt_kpi(value: float | None, unit: str) -> str:
    if value is None:
        return DASH
    return f"{value:.0f} h" if unit == "hours" else fmt_rate(value)


def fmt_change(value: float | None, unit: str) -> str:
    if value is None:
        return DASH
    return f"{value:+.0f} h" if unit == "hours" else f"{value * 100:+.1f} pp"


def md_cell(value: Any) -> str:
    """Text safe inside a Markdown table cell: no pipes or line breaks from the data."""
    return (
        str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")
    )


def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("onboarding_pipeline.reporting", "templates"),
        # Everything from data is escaped in HTML; Markdown is plain text (cells via md_cell).
        autoescape=select_autoescape(enabled_extensions=("html",), disabled_extensions=("md",)),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        rate=fmt_rate, num=fmt_num, kpi=fmt_kpi, change=fmt_change, cell=md_cell
    )
    return environment


def render_html(
    data: ReportData, charts: dict[str, bytes], images: Literal["data", "cid"] = "data"
) -> str:
    """The HTML page; charts as data: URIs (file, browser) or `cid:` references (email)."""
    if images == "data":
        sources = {
            name: "data:image/png;base64," + base64.b64encode(png).decode()
            for name, png in charts.items()
        }
    else:
        sources = {name: f"cid:{content_id(name)}" for name in charts}
    return (
        _environment()
        .get_template("report.html")
        .render(report=data, charts=sources, not_enough=NOT_ENOUGH_DATA)
    )


def render_markdown(data: ReportData, chart_files: dict[str, str] | None = None) -> str:
    return (
        _environment()
        .get_template("report.md")
        .render(report=data, charts=chart_files or {}, not_enough=NOT_ENOUGH_DATA)
    )


def content_id(chart: str) -> str:
    return f"{chart}-chart@onboarding-pipeline"


def write_report(data: ReportData, folder: Path) -> tuple[ReportFiles, dict[str, bytes]]:
    """Write `report.html`, `report.md`, `report.json` and the chart PNGs into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    charts = build_charts(data)
    chart_files = {}
    for name, png in charts.items():
        path = folder / f"{name}.png"
        path.write_bytes(png)
        chart_files[name] = path
    html = folder / "report.html"
    html.write_text(render_html(data, charts), encoding="utf-8")
    markdown = folder / "report.md"
    markdown.write_text(
        render_markdown(data, {name: path.name for name, path in chart_files.items()}),
        encoding="utf-8",
    )
    data_file = folder / "report.json"
    data_file.write_text(data.to_json(), encoding="utf-8")
    return ReportFiles(folder, html, markdown, data_file, chart_files), charts


def load_report(folder: Path) -> tuple[ReportData, dict[str, bytes]]:
    """A written report and its charts, as the delivery step reads them."""
    data = ReportData.from_json((folder / "report.json").read_text(encoding="utf-8"))
    charts = {path.stem: path.read_bytes() for path in sorted(folder.glob("*.png"))}
    return data, charts

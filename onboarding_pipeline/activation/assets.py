"""Activation assets: features, model (with its quality gate), scores, critical path."""

import base64
from collections.abc import Iterator, Sequence
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from onboarding_pipeline.activation.critical_path import critical_path as judge_events
from onboarding_pipeline.activation.critical_path import landmark_summary, screen_unjudged
from onboarding_pipeline.activation.features import (
    SEGMENT_COLUMNS,
    build_features,
    count_true,
    leakage_violations,
    now_of,
)
from onboarding_pipeline.activation.friction import friction_clusters as cluster_friction
from onboarding_pipeline.activation.funnel import build_funnel
from onboarding_pipeline.activation.kpis import onboarding_kpis as onboarding_kpis_table
from onboarding_pipeline.activation.kpis import retention_activity
from onboarding_pipeline.activation.landmarks import (
    Buckets,
    hour_buckets,
    load_buckets,
    scoring_ages,
)
from onboarding_pipeline.activation.model import (
    ActivationModel,
    ModelRefused,
    ModelStore,
    calibration_chart,
    in_flight,
    judge,
    landmark_frame,
    train_activation_model,
    training_users,
)
from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.config.data_checks import (
    config_event_warnings,
    event_name_counts,
    require_config_events,
)
from onboarding_pipeline.resources import OutputDirResource, ProductConfigResource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.metadata import preview, table_definition_metadata
from onboarding_pipeline.warehouse.tables import (
    ACTIVATION_SCORES,
    CRITICAL_PATH,
    LANDMARK_POPULATIONS,
    RAW_EVENTS,
    RAW_USERS,
    SESSIONS,
)

USER_FEATURES = "user_features"


# What the model, the scores, the critical path and the landmark table read of each user
# (behaviour comes from the hour buckets): a fifth of the table's columns.
OUTCOME_COLUMNS = (
    "user_id",
    "signup_at",
    *SEGMENT_COLUMNS,
    "first_aha_at",
    "activated",
    "window_closed",
    "activation_at",
    "label",
    "terminated_at",
)


def load_features(warehouse: WarehouseResource, columns: Sequence[str] = ()) -> pd.DataFrame:
    """`user_features` (only `columns`, if given), one row per user, ordered by user id."""
    # Ordered by user: engines return rows in any order, and the model's row order must not
    # depend on it (the same data gives the same model version on DuckDB and PostgreSQL).
    # Sorted in Arrow (by code point, whatever the engine's collation): an ORDER BY made
    # the engine sort every wide row and took twice as long as the read itself.
    table = warehouse.table(USER_FEATURES)
    if columns:
        table = table.select(*columns)
    frame = warehouse.to_pyarrow(table).sort_by("user_id").to_pandas()
    frame.index = pd.Index(frame.user_id.to_numpy())  # look-ups by user id; column kept
    return frame


def feature_events(features: pd.DataFrame | ir.Table) -> list[str]:
    """The modelled events, from the `n_<event>` columns of a frame or of the table."""
    return [c.removeprefix("n_") for c in features.columns if c.startswith("n_")]


def png_markdown(png: bytes, title: str) -> MetadataValue:
    encoded = base64.b64encode(png).decode()
    return MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")


def first_hours_of(
    warehouse: WarehouseResource,
    features: pd.DataFrame,
    positions: np.ndarray,
    names: list[str],
    config: ProductConfig,
    max_hours: int,
) -> pd.DataFrame:
    """`position, event_name, first_hour` of `names` (hours from signup, below `max_hours`)
    for the users at `positions` of `features`: what the screen of events beyond
    `max_events` needs, one row per user and event."""
    if not names or not len(positions):
        return pd.DataFrame({"position": [], "event_name": [], "first_hour": []})
    picked = features.iloc[positions]
    people = ibis.memtable(
        pa.table(
            {
                "user_id": pa.array(picked.user_id.astype(str).tolist(), pa.string()),
                "signup_at": pa.array(picked.signup_at, pa.timestamp("us", tz="UTC")),
                "position": pa.array(np.asarray(positions, dtype=np.int64), pa.int64()),
            }
        )
    )
    events = warehouse.table(RAW_EVENTS.name)
    event_hours, _ = hour_buckets(
        events.filter(events.event_name.isin(names)),
        warehouse.table(SESSIONS.name),
        people,
        config,
        max_hours,
    )
    first = event_hours.group_by("position", "event_name").agg(first_hour=event_hours.hour.min())
    return warehouse.execute(first)


def user_buckets(
    warehouse: WarehouseResource,
    config: ProductConfig,
    features: pd.DataFrame,
    positions: np.ndarray,
    max_hours: int,
) -> Buckets:
    """Hour buckets of the users at `positions` of `features` (the rest stay empty)."""
    picked = features.iloc[positions]
    people = ibis.memtable(
        pa.table(
            {
                "user_id": pa.array(picked.user_id.astype(str).tolist(), pa.string()),
                "signup_at": pa.array(picked.signup_at, pa.timestamp("us", tz="UTC")),
                # Buckets come back keyed by position in `features`, not by user id.
                "position": pa.array(np.asarray(positions, dtype=np.int64), pa.int64()),
            }
        )
    )
    return load_buckets(
        warehouse,
        warehouse.table(RAW_EVENTS.name),
        warehouse.table(SESSIONS.name),
        people,
        features.user_id,
        feature_events(warehouse.table(USER_FEATURES)),
        config,
        max_hours,
    )


def behaviour_columns(features: ir.Table) -> list[str]:
    """The early-behaviour columns of `user_features` (all after the outcome columns)."""
    columns = list(features.columns)
    return columns[columns.index("activated_in_horizon") + 1 :]


def closed_positions(features: pd.DataFrame) -> np.ndarray:
    return np.flatnonzero(
        features.window_closed.to_numpy(dtype=bool) & features.label.notna().to_numpy()
    )


@asset(
    group_name="activation",
    kinds={"ibis", "table"},
    deps=[RAW_USERS.name, RAW_EVENTS.name, SESSIONS.name],
    metadata={"dagster/table_name": f"onboarding.{USER_FEATURES}"},
    check_specs=[AssetCheckSpec("features_leakage_free", asset=USER_FEATURES, blocking=True)],
)
def user_features(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    product_config: ProductConfigResource,
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """One row per user: outcome (label only once the window has closed) and early behaviour.

    Early behaviour = events in the first `observation_hours` after signup, the same span for
    everyone and never cut at activation (aha events excluded): per-event counts and hours to
    first occurrence (events chosen from data), sessions, active days, onboarding steps,
    invites, time to first key action, segment attributes. `activated_in_horizon` flags the
    users who activated inside it: they are reported apart, not judged with the rest.
    """
    config = product_config.load()
    # A misspelt aha event or funnel step would otherwise fail later with unrelated errors.
    events = warehouse.table(RAW_EVENTS.name)
    observed = warehouse.execute(event_name_counts(events))
    span = warehouse.execute(
        events.aggregate(first=events.timestamp.min(), last=events.timestamp.max())
    )
    first, last = span["first"].iloc[0], span["last"].iloc[0]
    data_days = (last - first).total_seconds() / 86400 if len(observed) else None
    counts_by_name = dict(zip(observed.event_name, observed.events, strict=True))
    not_yet = require_config_events(
        config,
        counts_by_name,
        source=product_config.path,
        data_days=data_days,
    )
    config_warnings = [
        f"{problem.message()} ({data_days:.1f} days of data, younger than the activation "
        "window: fine in a product's first days, a typo if it stays so)"
        for problem in not_yet
    ]
    # Funnel steps and terminal events nobody has logged (yet) are legal: said, not fatal.
    config_warnings += [
        problem.message()
        for problem in config_event_warnings(
            config, counts_by_name, ("funnel_steps", "terminal_events")
        )
    ]
    for warning in config_warnings:
        context.log.warning(warning)
    table, chosen, now = build_features(
        warehouse.table(RAW_USERS.name),
        warehouse.table(RAW_EVENTS.name),
        warehouse.table(SESSIONS.name),
        config,
        warehouse.connect(),
        stage=warehouse.temp_table,
    )
    stored = warehouse.replace_table(USER_FEATURES, table)
    counts = warehouse.execute(
        stored.aggregate(
            users=stored.count(),
            closed_window=count_true(stored.window_closed),
            activated=count_true(stored.label == 1),
            in_horizon=count_true(stored.activated_in_horizon),
            open_window=count_true(stored.label.isnull()),
        )
    ).iloc[0]
    context.log.info(f"features for {int(counts['users'])} users; now = {now:%Y-%m-%d %H:%M}")
    yield MaterializeResult(
        metadata={
            "dagster/row_count": int(counts["users"]),
            "users_with_closed_window": int(counts["closed_window"]),
            "users_activated": int(counts["activated"]),
            "users_activated_in_horizon": int(counts["in_horizon"]),
            "users_still_onboarding": int(counts["open_window"]),
            "observation_hours": config.observation_hours,
            **({"config_warnings": MetadataValue.json(config_warnings)} if config_warnings else {}),
            "landmark_hours": MetadataValue.json(config.landmarks()),
            "now": now.isoformat(),
            "feature_events": MetadataValue.json(chosen),
            "preview": preview(
                warehouse, stored.select("user_id", "label", *behaviour_columns(stored)[:6])
            ),
        }
    )
    problems = leakage_violations(
        warehouse.execute(stored),
        config.observation_hours,
        [*config.aha_events, *config.terminal_events],
    )
    yield AssetCheckResult(
        check_name="features_leakage_free",
        passed=not problems,
        metadata=problems,
        description=None
        if not problems
        else "features read behaviour the outcome could have shaped; see the counts",
    )


@asset(
    group_name="activation",
    kinds={"scikit-learn"},
    deps=[user_features],
    check_specs=[
        AssetCheckSpec("model_quality_acceptable", asset="activation_model", blocking=True)
    ],
)
def activation_model(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    product_config: ProductConfigResource,
    outputs: OutputDirResource,
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """Stacked landmark model: P(activate before the window closes | not activated by age t,
    behaviour up to t), one calibrated gradient-boosting model with the age as an input.

    Trained on closed windows only, one row per user and scoring age at which they had not
    activated yet; the newest closed cohorts validate. Saved per version (content-addressed)
    under `<output>/models`; a version becomes current only if its check passes: ROC AUC on the
    landmark population above `model.min_roc_auc`, expected activation inside the observed
    interval in every age band, and not more than `model.max_auc_drop` below the previous
    version on the same validation rows. A refused or impossible model is a warning, not a
    failure: scores, health and the queue go on with the current model or with rules.
    """
    config = product_config.load()
    features = load_features(warehouse, OUTCOME_COLUMNS).reset_index(drop=True)
    store = ModelStore(outputs.folder("models"))
    landmarks = config.landmarks()
    ages = scoring_ages(landmarks, config.activation_window_days)
    try:
        train_positions, valid_positions = training_users(features, config.model)
        buckets = user_buckets(
            warehouse,
            config,
            features,
            np.concatenate([train_positions, valid_positions]),
            config.activation_window_days * 24,
        )
        model = train_activation_model(
            features,
            buckets,
            config.model,
            ages=ages,
            main_landmark=float(config.observation_hours),
            age_bands=[0.0, *[float(h) for h in landmarks]],
        )
    except ModelRefused as refused:
        reason = str(refused)
        store.record_status({"accepted": False, "reason": reason, "version": None})
        context.log.warning(f"no activation model: {reason}")
        yield MaterializeResult(
            metadata={
                "status": "not trained",
                "reason": reason,
                "current_version": store.current_version() or "none",
            }
        )
        yield AssetCheckResult(
            check_name="model_quality_acceptable",
            passed=False,
            severity=AssetCheckSeverity.WARN,
            description=f"no model trained: {reason}",
            metadata={"reason": reason},
        )
        return
    previous = store.load_current_or_none()
    passed, verdict = judge(model, previous, config.model)
    path = store.save(model)
    if passed:
        store.promote(model.version)
    reason = "; ".join(verdict["reasons"])
    store.record_status({"accepted": passed, "reason": reason, "version": model.version})
    png = calibration_chart(model.metrics)
    chart = outputs.folder("charts") / f"calibration-{model.version}.png"
    chart.write_bytes(png)
    metrics = model.metrics
    context.log.info(f"{model.version}: ROC AUC {metrics['roc_auc']:.3f}, accepted={passed}")
    yield MaterializeResult(
        metadata={
            "status": "accepted" if passed else "refused",
            "model_version": model.version,
            "landmark_hours": config.observation_hours,
            "roc_auc": round(metrics["roc_auc"], 4),
            "roc_auc_95ci": MetadataValue.json([round(v, 4) for v in metrics["roc_auc_ci"]]),
            "pr_auc": round(metrics["pr_auc"], 4),
            "brier": round(metrics["brier"], 4),
            "train_users": metrics["train_users"],
            "train_rows": metrics["train_rows"],
            "validation_users": metrics["validation_users"],
            "landmark_population_validation": metrics["landmark_population_validation"],
            "train_base_rate": round(metrics["train_base_rate"], 4),
            "validation_base_rate": round(metrics["validation_base_rate"], 4),
            "train_signups": metrics["train_signups"],
            "validation_signups": metrics["validation_signups"],
            "calibration": metrics["calibration"],
            "scoring_ages_hours": MetadataValue.json(metrics["scoring_ages_hours"]),
            "reliability_by_age": MetadataValue.md(
                pd.DataFrame(metrics["reliability_by_age"]).to_markdown(index=False)
            ),
            "dropped_columns": MetadataValue.json(metrics["dropped_columns"]),
            "top_features": MetadataValue.json(metrics["top_features"]),
            "calibration_chart": png_markdown(png, "calibration"),
            "calibration_chart_file": MetadataValue.path(str(chart)),
            "model_file": MetadataValue.path(str(path)),
            "accepted_as_current": passed,
        }
    )
    current = store.current_version()
    yield AssetCheckResult(
        check_name="model_quality_acceptable",
        passed=passed,
        # A refused model is never used (only accepted versions become current), so a refusal
        # warns instead of stopping the scores, health and queue downstream.
        severity=AssetCheckSeverity.WARN,
        metadata={k: v for k, v in verdict.items() if k != "reasons"} | {"reasons": reason},
        description=None
        if passed
        else f"model {model.version} refused ({reason}); the current model stays {current}",
    )


def score_in_flight(
    model: ActivationModel | None,
    features: pd.DataFrame,
    buckets: Buckets,
    positions: np.ndarray,
    ages: np.ndarray,
) -> np.ndarray:
    """Probabilities of the users at `positions`, each at their own age (NaN without a model)."""
    if model is None or not len(positions):
        return np.full(len(positions), np.nan)
    return model.predict(landmark_frame(features, buckets, positions, ages))


@asset(
    group_name="activation",
    kinds={"scikit-learn", "table"},
    deps=[activation_model, user_features],
    metadata=table_definition_metadata(ACTIVATION_SCORES),
)
def activation_scores(
    warehouse: WarehouseResource,
    product_config: ProductConfigResource,
    outputs: OutputDirResource,
) -> MaterializeResult:
    """Every user still onboarding (window open, not activated), scored at their current age:
    P(activate before the window closes | not activated yet, behaviour so far), from the
    current model; plus the model's validation predictions at the main landmark. Without an
    accepted model the rows are still there, with no probability and the reason."""
    config = product_config.load()
    features = load_features(warehouse, OUTCOME_COLUMNS).reset_index(drop=True)
    store = ModelStore(outputs.folder("models"))
    model = store.load_current_or_none()
    now = pd.Timestamp(
        now_of(
            warehouse.table(RAW_EVENTS.name),
            config,
            warehouse.connect(),
            warehouse.table(RAW_USERS.name),
        )
    )
    positions, ages = in_flight(features, now)
    buckets = user_buckets(
        warehouse, config, features, positions, config.activation_window_days * 24
    )
    probabilities = score_in_flight(model, features, buckets, positions, ages)
    status = "model" if model is not None else "no_accepted_model"
    scored = pd.DataFrame(
        {
            "user_id": features.user_id.iloc[positions].to_numpy(),
            "activation_probability": probabilities,
            "model_version": model.version if model is not None else None,
            "population": "onboarding",
            "age_hours": ages,
            "label": np.nan,
            "horizon_complete": ages >= config.observation_hours,
            "scoring_status": status,
        }
    )
    parts = [scored]
    if model is not None:
        validation = model.validation.assign(
            population="validation",
            horizon_complete=True,
            model_version=model.version,
            scoring_status=status,
        )
        parts.append(validation[scored.columns])
    table = pd.concat(parts, ignore_index=True)
    table["model_version"] = table.model_version.astype(object)
    table["scored_at"] = now
    warehouse.replace_all(ACTIVATION_SCORES.name, table_to_arrow(table, ACTIVATION_SCORES.schema))
    why = store.status().get("reason") or "no activation model has been trained yet"
    metadata: dict[str, Any] = {
        "dagster/row_count": len(table),
        "users_scored": len(scored),
        "scoring_status": status,
        "model_version": model.version if model is not None else "none",
    }
    if model is None:
        metadata["what_would_unlock_scores"] = why
    else:
        bands = pd.cut(
            scored.age_hours,
            [0, *config.landmarks(), config.activation_window_days * 24],
            right=False,
        )
        by_age = scored.groupby(bands, observed=True).activation_probability.agg(["count", "mean"])
        metadata["mean_probability_by_age"] = MetadataValue.md(
            by_age.round(4).reset_index().astype(str).to_markdown(index=False)
            if len(by_age)
            else "_nobody onboarding_"
        )
        metadata["preview"] = MetadataValue.md(
            scored.sort_values("activation_probability").head(10).to_markdown(index=False)
        )
    metadata["still_in_observation_horizon"] = int((~scored.horizon_complete).sum())
    return MaterializeResult(metadata=metadata)


def event_first_seen(warehouse: WarehouseResource, names: list[str]) -> dict[str, pd.Timestamp]:
    """When each event was first logged by anyone (its tracking start)."""
    if not names:
        return {}
    events = warehouse.table(RAW_EVENTS.name)
    events = events.filter(events.event_name.isin(names))
    frame = warehouse.execute(events.group_by("event_name").agg(first=events.timestamp.min()))
    return {row.event_name: pd.Timestamp(row.first) for row in frame.itertuples()}


@asset(
    group_name="activation",
    kinds={"statsmodels", "table"},
    deps=[user_features],
    metadata=table_definition_metadata(CRITICAL_PATH),
)
def critical_path(
    warehouse: WarehouseResource, product_config: ProductConfigResource
) -> MaterializeResult:
    """Which early steps go with later activation, per landmark population (closed windows,
    not activated by the landmark): drivers, prerequisites (and the step they work through),
    vanity events, blockers, no effect, inconclusive.

    Naive rates (Haldane odds ratio with interval, Fisher p, BH q), a total effect (adjusted
    for segments, engagement so far and earlier events) and a direct effect (also holding every
    other event fixed) from Firth logistic regression, E-values, and the best "at least n times
    within d days" rule by phi; overall at every landmark, per segment at the main one.
    Association, not cause: an experiment is what proves cause.
    """
    config = product_config.load()
    features = load_features(warehouse, OUTCOME_COLUMNS).reset_index(drop=True)
    names = feature_events(warehouse.table(USER_FEATURES))
    landmarks = config.landmarks()
    positions = closed_positions(features)
    buckets = user_buckets(warehouse, config, features, positions, max(landmarks))
    beyond = _events_beyond(warehouse, config, names)
    screened = screen_unjudged(
        features,
        first_hours_of(warehouse, features, positions, beyond, config, max(landmarks)),
        landmarks,
        config.critical_path,
    )
    result = judge_events(
        features,
        buckets,
        event_first_seen(warehouse, names),
        landmarks,
        config.observation_hours,
        config.critical_path,
        screened=screened,
    )
    warehouse.replace_all(CRITICAL_PATH.name, table_to_arrow(result, CRITICAL_PATH.schema))
    overall = result[
        (result.segment_type == "overall") & (result.landmark_hours == config.observation_hours)
    ]
    by_class = {
        kind: sorted(overall.event_name[overall.classification == kind])
        for kind in ("driver", "prerequisite", "vanity", "blocker", "no_effect", "inconclusive")
    }
    shown = ["event_name", "classification", "lift", "total_effect", "total_q_value"]
    shown += ["direct_effect", "works_through", "e_value", "note"]
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(result),
            "landmark_hours": MetadataValue.json(landmarks),
            "main_landmark_hours": config.observation_hours,
            "drivers": MetadataValue.json(by_class["driver"]),
            "prerequisites": MetadataValue.json(by_class["prerequisite"]),
            "vanity": MetadataValue.json(by_class["vanity"]),
            "blockers": MetadataValue.json(by_class["blocker"]),
            "no_effect": MetadataValue.json(by_class["no_effect"]),
            "inconclusive": MetadataValue.json(by_class["inconclusive"]),
            "events_beyond_max_events": MetadataValue.json(beyond),
            "overall": MetadataValue.md(
                overall[shown].round(3).to_markdown(index=False)
                if len(overall)
                else "_no closed-window users not activated by the landmark yet_"
            ),
        }
    )


def _events_beyond(
    warehouse: WarehouseResource, config: ProductConfig, chosen: list[str]
) -> list[str]:
    """Events seen in the data but not modelled (beyond `critical_path.max_events`, or with
    fewer than `critical_path.min_users` users), so nobody wonders where they went."""
    events = warehouse.table(RAW_EVENTS.name)
    names = warehouse.execute(events.select("event_name").distinct()).event_name
    skipped = set(names) - set(chosen) - set(config.aha_events) - set(config.terminal_events)
    return sorted(str(name) for name in skipped if name is not None)


@asset(
    group_name="activation",
    kinds={"pandas", "table"},
    deps=[user_features],
    metadata=table_definition_metadata(LANDMARK_POPULATIONS),
)
def landmark_populations(
    warehouse: WarehouseResource, product_config: ProductConfigResource
) -> MaterializeResult:
    """Per landmark of the ladder: the closed-window users who activated before it (how many,
    how fast, which early events they share), reported apart, and the population left for the
    model and the critical path, with its activation rate."""
    config = product_config.load()
    features = load_features(warehouse, OUTCOME_COLUMNS).reset_index(drop=True)
    landmarks = config.landmarks()
    buckets = user_buckets(warehouse, config, features, closed_positions(features), max(landmarks))
    table = landmark_summary(features, buckets, landmarks)
    warehouse.replace_all(
        LANDMARK_POPULATIONS.name, table_to_arrow(table, LANDMARK_POPULATIONS.schema)
    )
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "landmarks": MetadataValue.md(
                table.drop(columns="shared_events_early_activators")
                .round(3)
                .to_markdown(index=False)
                if len(table)
                else "_no users_"
            ),
        }
    )


def table_to_arrow(frame: pd.DataFrame, schema: ibis.Schema | None = None) -> pa.Table:
    """Arrow with a type for every column: an empty or all-missing column becomes text (the
    warehouse cannot store a column of type NULL), or the type `schema` gives it."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for index, column in enumerate(table.schema):
        if schema is not None and column.name in schema:
            wanted = schema[column.name].to_pyarrow()
            if column.type != wanted:
                table = table.set_column(index, column.name, table[column.name].cast(wanted))
        elif pa.types.is_null(column.type):
            table = table.set_column(index, column.name, table[column.name].cast(pa.string()))
    return table


def first_occurrences(warehouse: WarehouseResource, names: list[str]) -> pd.DataFrame:
    """`user_id, event_name, first_at` for the funnel steps and aha events."""
    events = warehouse.table(RAW_EVENTS.name)
    events = events.filter(events.event_name.isin(names))
    return warehouse.execute(
        events.group_by("user_id", "event_name").agg(first_at=events.timestamp.min())
    )


@asset(group_name="activation", kinds={"pandas", "table"}, deps=[user_features])
def funnel(
    warehouse: WarehouseResource, product_config: ProductConfigResource
) -> MaterializeResult:
    """The configured onboarding steps in order within the activation window, on closed
    windows only: users per step, conversion from start and from the previous step (each with
    its denominator), drop-off and median hours between steps; overall, by role, company
    size, plan and signup week. A last step that is an aha event is activation as the
    `activation_rate` KPI counts it."""
    config = product_config.load()
    features = load_features(warehouse, OUTCOME_COLUMNS)
    now = now_of(
        warehouse.table(RAW_EVENTS.name),
        config,
        warehouse.connect(),
        warehouse.table(RAW_USERS.name),
    )
    steps = list(config.funnel_steps)
    firsts = first_occurrences(warehouse, [*steps, *config.aha_events, *config.terminal_events])
    table = build_funnel(
        features,
        firsts,
        steps,
        config.activation_window_days,
        pd.Timestamp(now),
        config.aha_events,
        terminal_events=config.terminal_events,
    )
    warehouse.replace_table("funnel", ibis.memtable(table_to_arrow(table)))
    overall = table[table.segment_type == "overall"]
    shown = [
        "step",
        "users_entered",
        "users_reached",
        "conversion_from_start",
        "users_at_previous",
        "conversion_from_previous",
    ]
    empty = (
        "_no funnel_steps configured_"
        if not steps
        else "_no closed activation window yet: the funnel counts closed windows only_"
    )
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "closed_window_users": int(overall.users_entered.max()) if len(overall) else 0,
            "overall": MetadataValue.md(
                overall[[*shown, "dropped", "median_hours_from_previous"]]
                .round(3)
                .to_markdown(index=False)
            )
            if len(overall)
            else empty,
            "chart": png_markdown(funnel_chart(overall), "funnel") if len(overall) else empty,
        }
    )


@asset(group_name="activation", kinds={"pandas", "table"}, deps=[user_features])
def onboarding_kpis(
    warehouse: WarehouseResource, product_config: ProductConfigResource
) -> MaterializeResult:
    """Activation rate, time to first value (median, p75), tiered activation, retention and
    onboarding completion per signup week, with counts, Wilson intervals and targets."""
    config = product_config.load()
    features = load_features(warehouse, OUTCOME_COLUMNS)
    events = warehouse.table(RAW_EVENTS.name)
    now = now_of(events, config, warehouse.connect(), warehouse.table(RAW_USERS.name))
    steps = [s for s in config.funnel_steps if s not in config.aha_events]
    firsts = first_occurrences(
        warehouse, [*config.funnel_steps, *config.aha_events, *config.terminal_events]
    )
    activity = warehouse.execute(
        retention_activity(
            events, warehouse.table(RAW_USERS.name), config.retention_days, config.terminal_events
        )
    )
    table = onboarding_kpis_table(
        features,
        firsts,
        activity,
        window_days=config.activation_window_days,
        tiers_days=list(config.activation_tiers_days),
        retention_days=config.retention_days,
        onboarding_steps=steps,
        targets=config.kpi_targets,
        watermark=pd.Timestamp(now),
        terminal_events=config.terminal_events,
    )
    # Nullable boolean: None where no target is set (a column of only None has no type).
    table = table.assign(meets_target=table.meets_target.astype("boolean"))
    warehouse.replace_table("onboarding_kpis", ibis.memtable(table_to_arrow(table)))
    overall = table[table.signup_week == "all"]
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "all_signups": MetadataValue.md(
                overall[["kpi", "value", "numerator", "denominator", "ci_low", "ci_high", "target"]]
                .round(3)
                .to_markdown(index=False)
            ),
        }
    )


@asset(group_name="activation", kinds={"scikit-learn", "table"}, deps=[user_features])
def friction_clusters(
    warehouse: WarehouseResource, product_config: ProductConfigResource
) -> MaterializeResult:
    """Users who dropped off, clustered by early behaviour into a few archetypes, each in
    words (distinguishing events, the step where it stalls) with a recommended fix."""
    config = product_config.load()
    counts = [f"n_{name}" for name in feature_events(warehouse.table(USER_FEATURES))]
    features = load_features(warehouse, [*OUTCOME_COLUMNS, *counts])
    steps = list(config.funnel_steps)
    firsts = first_occurrences(warehouse, [*steps, *config.aha_events])
    early = features[[c for c in features.columns if c.startswith("n_")]]
    clusters, members = cluster_friction(
        features,
        early,
        firsts,
        steps,
        max_clusters=config.friction.max_clusters,
        fixes=dict(config.friction.fixes),
        window_days=config.activation_window_days,
    )
    warehouse.replace_table("friction_clusters", ibis.memtable(table_to_arrow(clusters)))
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(clusters),
            "dropped_users_clustered": len(members),
            "archetypes": MetadataValue.md(
                clusters[
                    ["cluster_id", "users", "description", "stalls_at", "recommended_fix"]
                ].to_markdown(index=False)
            )
            if len(clusters)
            else "_fewer than 20 dropped users_",
        }
    )


def funnel_chart(overall: pd.DataFrame) -> bytes:
    """Horizontal bars: users reaching each step, labelled with conversion from start."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 0.5 * len(overall) + 1.2), dpi=100)
    axis.barh(overall.step[::-1], overall.users_reached[::-1], color="#4c78a8")
    for y, (reached, rate) in enumerate(
        zip(overall.users_reached[::-1], overall.conversion_from_start[::-1], strict=True)
    ):
        axis.text(reached, y, f" {reached:,} ({rate:.0%})", va="center")
    axis.set_xlabel("users reaching the step within the activation window")
    axis.set_title("Onboarding funnel")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()

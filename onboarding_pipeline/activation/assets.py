"""Activation assets: features, model (with its quality gate), scores, critical path."""

import base64
from collections.abc import Iterator

import ibis
import pandas as pd
import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from onboarding_pipeline.activation.critical_path import critical_path as judge_events
from onboarding_pipeline.activation.features import (
    build_features,
    count_true,
    daily_early_counts,
    leakage_violations,
    now_of,
)
from onboarding_pipeline.activation.friction import friction_clusters as cluster_friction
from onboarding_pipeline.activation.funnel import build_funnel
from onboarding_pipeline.activation.kpis import onboarding_kpis as onboarding_kpis_table
from onboarding_pipeline.activation.model import (
    ModelStore,
    calibration_chart,
    judge,
    train_activation_model,
)
from onboarding_pipeline.resources import OutputDirResource, ProductConfigResource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.metadata import preview, table_definition_metadata
from onboarding_pipeline.warehouse.tables import (
    ACTIVATION_SCORES,
    CRITICAL_PATH,
    RAW_EVENTS,
    RAW_USERS,
    SESSIONS,
)

USER_FEATURES = "user_features"


def load_features(warehouse: WarehouseResource) -> pd.DataFrame:
    frame = warehouse.execute(warehouse.table(USER_FEATURES))
    frame.index = pd.Index(frame.user_id.to_numpy())  # look-ups by user id; column kept
    return frame


def feature_events(features: pd.DataFrame) -> list[str]:
    return [c.removeprefix("n_") for c in features.columns if c.startswith("n_")]


def png_markdown(png: bytes, title: str) -> MetadataValue:
    encoded = base64.b64encode(png).decode()
    return MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")


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

    Early behaviour = events in the first `observation_hours` after signup and before the
    user's activation moment, aha events excluded: per-event counts and hours to first
    occurrence (events chosen from data), sessions, active days, onboarding steps, invites,
    time to first key action, segment attributes.
    """
    config = product_config.load()
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
            open_window=count_true(stored.label.isnull()),
        )
    ).iloc[0]
    context.log.info(f"features for {int(counts['users'])} users; now = {now:%Y-%m-%d %H:%M}")
    yield MaterializeResult(
        metadata={
            "dagster/row_count": int(counts["users"]),
            "users_with_closed_window": int(counts["closed_window"]),
            "users_activated": int(counts["activated"]),
            "users_still_onboarding": int(counts["open_window"]),
            "now": now.isoformat(),
            "feature_events": MetadataValue.json(chosen),
            "preview": preview(
                warehouse, stored.select("user_id", "label", *stored.columns[13:20])
            ),
        }
    )
    problems = leakage_violations(warehouse.execute(stored), config.observation_hours)
    yield AssetCheckResult(
        check_name="features_leakage_free", passed=not problems, metadata=problems
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
    """Calibrated gradient boosting that predicts activation from early behaviour.

    Trained on closed windows only; the newest closed cohorts validate. Saved per version
    (content-addressed) under `<output>/models`; a version becomes current only if its check
    passes: ROC AUC above `model.min_roc_auc` and not more than `model.max_auc_drop` below
    the previous version on the same validation users.
    """
    config = product_config.load()
    features = load_features(warehouse)
    model = train_activation_model(features, config.model)
    store = ModelStore(outputs.folder("models"))
    previous_version = store.current_version()
    previous = store.load(previous_version) if previous_version else None
    passed, verdict = judge(model, previous, features, config.model)
    path = store.save(model)
    if passed:
        store.promote(model.version)
    png = calibration_chart(model.metrics)
    chart = outputs.folder("charts") / f"calibration-{model.version}.png"
    chart.write_bytes(png)
    metrics = model.metrics
    context.log.info(f"{model.version}: ROC AUC {metrics['roc_auc']:.3f}, accepted={passed}")
    yield MaterializeResult(
        metadata={
            "model_version": model.version,
            "roc_auc": round(metrics["roc_auc"], 4),
            "roc_auc_95ci": MetadataValue.json([round(v, 4) for v in metrics["roc_auc_ci"]]),
            "pr_auc": round(metrics["pr_auc"], 4),
            "brier": round(metrics["brier"], 4),
            "train_users": metrics["train_users"],
            "validation_users": metrics["validation_users"],
            "train_base_rate": round(metrics["train_base_rate"], 4),
            "validation_base_rate": round(metrics["validation_base_rate"], 4),
            "train_signups": metrics["train_signups"],
            "validation_signups": metrics["validation_signups"],
            "calibration": metrics["calibration"],
            "top_features": MetadataValue.json(metrics["top_features"]),
            "calibration_chart": png_markdown(png, "calibration"),
            "calibration_chart_file": MetadataValue.path(str(chart)),
            "model_file": MetadataValue.path(str(path)),
            "accepted_as_current": passed,
        }
    )
    yield AssetCheckResult(
        check_name="model_quality_acceptable",
        passed=passed,
        metadata=verdict,
        description=None
        if passed
        else f"model {model.version} rejected; the current model stays {previous_version}",
    )


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
    """Activation probability of every user still in onboarding (window open, not yet
    activated) from the current model, plus the model's validation predictions."""
    config = product_config.load()
    features = load_features(warehouse)
    model = ModelStore(outputs.folder("models")).load_current()
    now = now_of(warehouse.table(RAW_EVENTS.name), config, warehouse.connect())
    onboarding = features[features.label.isna()]
    scored = pd.DataFrame(
        {
            "user_id": onboarding.user_id.to_numpy(),
            "activation_probability": model.predict(onboarding) if len(onboarding) else [],
            "population": "onboarding",
            "label": float("nan"),
            "horizon_complete": onboarding.horizon_complete.to_numpy(),
        }
    )
    validation = model.validation.assign(population="validation", horizon_complete=True)
    table = pd.concat([scored, validation[scored.columns]], ignore_index=True)
    table["model_version"] = model.version
    table["scored_at"] = pd.Timestamp(now)
    warehouse.replace_all(ACTIVATION_SCORES.name, table_to_arrow(table))
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "users_scored": len(scored),
            "model_version": model.version,
            "mean_probability_onboarding": float(scored.activation_probability.mean())
            if len(scored)
            else 0.0,
            "still_in_observation_horizon": int((~scored.horizon_complete).sum()),
            "preview": MetadataValue.md(
                scored.sort_values("activation_probability").head(10).to_markdown(index=False)
            ),
        }
    )


@asset(
    group_name="activation",
    kinds={"statsmodels", "table"},
    deps=[user_features],
    metadata=table_definition_metadata(CRITICAL_PATH),
)
def critical_path(
    warehouse: WarehouseResource, product_config: ProductConfigResource
) -> MaterializeResult:
    """Which early events drive activation, which are vanity, which block it.

    Naive association (rates with/without, lift, odds ratio with CI, Fisher p, BH q) and the
    adjusted effect from a logistic regression holding the other events, sessions and segment
    fixed; best "at least n times within d days" rule; overall and per segment.
    """
    config = product_config.load()
    features = load_features(warehouse)
    names = feature_events(features)
    events = warehouse.table(RAW_EVENTS.name)
    now = now_of(events, config, warehouse.connect())
    daily = warehouse.execute(
        daily_early_counts(warehouse.table(RAW_USERS.name), events, config, now, names)
    )
    result = judge_events(features.reset_index(drop=True), names, daily, config.critical_path)
    warehouse.replace_all(CRITICAL_PATH.name, table_to_arrow(result))
    overall = result[result.segment_type == "overall"]
    by_class = {
        kind: sorted(overall.event_name[overall.classification == kind])
        for kind in ("driver", "vanity", "blocker")
    }
    shown = ["event_name", "classification", "lift", "adjusted_effect", "adjusted_q_value"]
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(result),
            "drivers": MetadataValue.json(by_class["driver"]),
            "vanity": MetadataValue.json(by_class["vanity"]),
            "blockers": MetadataValue.json(by_class["blocker"]),
            "overall": MetadataValue.md(overall[shown].round(3).to_markdown(index=False)),
        }
    )


def table_to_arrow(frame: pd.DataFrame) -> pa.Table:
    """Arrow with a type for every column: an empty or all-missing column becomes text
    (the warehouse cannot store a column of type NULL)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for index, column in enumerate(table.schema):
        if pa.types.is_null(column.type):
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
    """The configured onboarding steps in order within the activation window: users per step,
    conversion from start and from the previous step, drop-off (closed windows only) and
    median hours between steps; overall, by role, company size, plan and signup week."""
    config = product_config.load()
    features = load_features(warehouse)
    now = now_of(warehouse.table(RAW_EVENTS.name), config, warehouse.connect())
    steps = list(config.funnel_steps)
    firsts = first_occurrences(warehouse, [*steps, *config.aha_events])
    table = build_funnel(features, firsts, steps, config.activation_window_days, pd.Timestamp(now))
    warehouse.replace_table("funnel", ibis.memtable(table_to_arrow(table)))
    overall = table[table.segment_type == "overall"]
    shown = ["step", "users_reached", "conversion_from_start", "conversion_from_previous"]
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "overall": MetadataValue.md(
                overall[[*shown, "dropped", "median_hours_from_previous"]]
                .round(3)
                .to_markdown(index=False)
            )
            if len(overall)
            else "_no funnel_steps configured_",
            "chart": png_markdown(funnel_chart(overall), "funnel")
            if len(overall)
            else "_no funnel_steps configured_",
        }
    )


@asset(group_name="activation", kinds={"pandas", "table"}, deps=[user_features])
def onboarding_kpis(
    warehouse: WarehouseResource, product_config: ProductConfigResource
) -> MaterializeResult:
    """Activation rate, time to first value (median, p75), tiered activation, retention and
    onboarding completion per signup week, with counts, Wilson intervals and targets."""
    config = product_config.load()
    features = load_features(warehouse)
    events = warehouse.table(RAW_EVENTS.name)
    now = now_of(events, config, warehouse.connect())
    steps = [s for s in config.funnel_steps if s not in config.aha_events]
    firsts = first_occurrences(warehouse, [*config.funnel_steps, *config.aha_events])
    activity = warehouse.execute(
        events.select("user_id", day=events.timestamp.truncate("D")).distinct()
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
    features = load_features(warehouse)
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

"""Engagement assets: milestone progress, health scores, stalls, the intervention queue with
its ledger and holdout, measured effectiveness, and LLM-written nudges."""

import os
from collections.abc import Iterator
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

import ibis
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    EnvVar,
    MaterializeResult,
    MetadataValue,
    asset,
)

from onboarding_pipeline.activation.assets import USER_FEATURES, table_to_arrow
from onboarding_pipeline.activation.features import now_of
from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.config.data_checks import config_event_warnings, event_name_counts
from onboarding_pipeline.config.engagement import OnboardingPath
from onboarding_pipeline.engagement.activity import (
    BACKTEST,
    ONBOARDING,
    Activity,
    activity_expressions,
    early_event_reach,
    people,
)
from onboarding_pipeline.engagement.effectiveness import (
    compare_arms,
    final_outcomes,
    first_assignments,
    measured_uplift,
    sample_ratio_p_value,
)
from onboarding_pipeline.engagement.health import (
    COMPONENTS,
    adoption_events,
    backtest,
    health_components,
    health_score,
    risk_level,
)
from onboarding_pipeline.engagement.nudge_writer import (
    AnthropicResource,
    NudgeRequest,
    run_usage,
    write_nudges,
)
from onboarding_pipeline.engagement.paths import (
    PathChoice,
    assign_paths,
    choose_paths,
    needs_derived_paths,
    next_milestones,
)
from onboarding_pipeline.engagement.paths import (
    milestone_progress as progress_of,
)
from onboarding_pipeline.engagement.queue import build_queue, text_or_none
from onboarding_pipeline.engagement.scoring import model_unlock_reason, scoring_mode
from onboarding_pipeline.engagement.stalls import detect_stalls
from onboarding_pipeline.engagement.step_effects import step_experiments as estimate_step_effects
from onboarding_pipeline.engagement.timeline import user_timeline_rows
from onboarding_pipeline.resources import OutputDirResource, ProductConfigResource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.metadata import table_definition_metadata
from onboarding_pipeline.warehouse.tables import (
    ACTIVATION_SCORES,
    HEALTH_SCORES,
    INTERVENTION_EFFECTIVENESS,
    INTERVENTION_LEDGER,
    INTERVENTION_QUEUE,
    MILESTONE_PROGRESS,
    NUDGES,
    RAW_EVENTS,
    RAW_USERS,
    SESSIONS,
    STALLED_USERS,
    STEP_EXPERIMENTS,
    USER_TIMELINES,
)

GROUP = "engagement"
LEDGER_KEYS = ["queued_on", "user_id", "experiment"]


def engagement_now(warehouse: WarehouseResource, config: ProductConfig) -> datetime:
    """The data's "now" (`as_of`, else the latest event); with no event at all yet (zero rows
    are a normal state) the latest signup, else the first partition day: nobody has done
    anything, so no answer depends on it."""
    events = warehouse.table(RAW_EVENTS.name)
    if config.as_of is None and int(warehouse.execute(events.count())) == 0:
        users = warehouse.table(RAW_USERS.name)
        latest = warehouse.execute(users.signup_at.max())
        if latest is not None and latest == latest:
            return pd.Timestamp(latest).to_pydatetime()
        return datetime.combine(config.partitions_start_date, time(), UTC)
    return now_of(events, config, warehouse.connect())


def load_activity(
    warehouse: WarehouseResource,
    config: ProductConfig,
    paths: dict[str, OnboardingPath],
    populations: tuple[str, ...] = (ONBOARDING, BACKTEST),
) -> tuple[Activity, datetime]:
    """Users of `populations` with their path, and what they did up to their cutoff."""
    events = warehouse.table(RAW_EVENTS.name)
    now = engagement_now(warehouse, config)
    who = people(
        warehouse.table(USER_FEATURES),
        warehouse.table(RAW_USERS.name),
        now,
        config.observation_hours,
    )
    who = who.filter(who.population.isin(list(populations)))
    users_expr, by_event_expr = activity_expressions(who, events, warehouse.table(SESSIONS.name))
    users = warehouse.execute(users_expr)
    users["path"] = assign_paths(users, list(config.segments), paths)
    return Activity(users, warehouse.execute(by_event_expr)), now


def engagement_paths(warehouse: WarehouseResource, config: ProductConfig) -> PathChoice:
    """The configured paths, or defaults from the funnel steps or from the data (the same
    in every engagement asset of a run: derived from the same tables)."""
    if not needs_derived_paths(config):
        return choose_paths(config, None, 0)
    features = warehouse.table(USER_FEATURES)
    reach = warehouse.execute(
        early_event_reach(features, warehouse.table(RAW_EVENTS.name), config.observation_hours)
    )
    return choose_paths(config, reach, int(warehouse.execute(features.count())))


def path_metadata(context: AssetExecutionContext, choice: PathChoice) -> dict[str, Any]:
    """Where the paths came from; a derived default is also a warning in the log."""
    if choice.source in ("data", "aha_only") and choice.note:
        context.log.warning(choice.note)
    metadata: dict[str, Any] = {"paths_source": choice.source}
    if choice.note:
        metadata["paths_note"] = MetadataValue.md(choice.note)
    if choice.source != "configured":
        metadata["default_path_milestones"] = MetadataValue.json(
            [m.name for p in choice.paths.values() for m in p.milestones]
        )
    return metadata


def config_warnings_metadata(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    config: ProductConfig,
    prefixes: tuple[str, ...],
) -> dict[str, Any]:
    """Configured event names under `prefixes` that never occur in raw_events: a warning
    in the log and the metadata, naming the key, the value and the closest observed names.
    Defaults nobody wrote are listed apart (a feature without data, not a typo)."""
    frame = warehouse.execute(event_name_counts(warehouse.table(RAW_EVENTS.name)))
    observed = {str(n): int(c) for n, c in zip(frame.event_name, frame.events, strict=True)}
    found = config_event_warnings(config, observed, prefixes, include_notes=True)
    warnings = [p.message() for p in found if p.severity == "warning"]
    notes = [p.message() for p in found if p.severity == "note"]
    for message in warnings:
        context.log.warning(f"onboarding.yaml: {message}")
    metadata: dict[str, Any] = {"config_warnings": MetadataValue.json(warnings)}
    if notes:
        metadata["default_events_not_in_data"] = MetadataValue.json(notes)
    return metadata


def onboarding_scores(warehouse: WarehouseResource) -> pd.DataFrame:
    scores = warehouse.table(ACTIVATION_SCORES.name)
    return warehouse.execute(scores.filter(scores.population == ONBOARDING))


def scoring_metadata(
    context: AssetExecutionContext, scores: pd.DataFrame, models_dir: Path
) -> dict[str, Any]:
    """Whether users were judged with the model's probability or by rules, and why."""
    mode = scoring_mode(scores)
    metadata: dict[str, Any] = {"scoring": mode}
    if mode == "rules":
        reason = model_unlock_reason(models_dir)
        context.log.warning(f"no activation probabilities ({reason}): health and rules only")
        metadata["what_would_unlock_the_model"] = reason
    return metadata


def markdown(frame: pd.DataFrame, empty: str = "_no rows_") -> MetadataValue:
    return MetadataValue.md(frame.to_markdown(index=False) if len(frame) else empty)


def counts(series: pd.Series) -> MetadataValue:
    return MetadataValue.json({str(k): int(v) for k, v in series.value_counts().items()})


@asset(
    group_name=GROUP,
    kinds={"pandas", "table"},
    deps=[USER_FEATURES, RAW_USERS.name, RAW_EVENTS.name],
    metadata=table_definition_metadata(MILESTONE_PROGRESS),
)
def milestone_progress(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    product_config: ProductConfigResource,
) -> MaterializeResult:
    """Per user still onboarding: their path (first matching segment rule), which of its
    milestones are done and when (on time or late against the due day), and the next one.
    Without `paths` the path comes from `funnel_steps`, else from the most common early
    events in the data (metadata `paths_note` says which). Milestone events that never occur
    are warnings."""
    config = product_config.load()
    choice = engagement_paths(warehouse, config)
    activity, now = load_activity(warehouse, config, choice.paths, (ONBOARDING,))
    onboarding = activity.users
    progress = progress_of(onboarding, activity.by_event, choice.paths)
    warehouse.replace_all(
        MILESTONE_PROGRESS.name, table_to_arrow(progress, MILESTONE_PROGRESS.schema)
    )
    summary = next_milestones(progress) if len(progress) else pd.DataFrame()
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(progress),
            "users": len(onboarding),
            "users_by_path": counts(onboarding.path),
            "next_milestone": counts(summary.next_milestone_label.fillna("(all done)"))
            if len(summary)
            else MetadataValue.json({}),
            "now": now.isoformat(),
            "preview": markdown(progress.head(12)),
            **path_metadata(context, choice),
            **config_warnings_metadata(context, warehouse, config, ("paths.",)),
        }
    )


def health_table(
    activity: Activity,
    scores: pd.DataFrame,
    config: ProductConfig,
    now: datetime,
    paths: dict[str, OnboardingPath] | None = None,
) -> pd.DataFrame:
    """Health of both populations, each as of its own cutoff, with the model's probability
    (missing without an accepted model: the components never need it)."""
    paths = paths if paths is not None else config.onboarding_paths()
    users = activity.users
    progress = progress_of(users, activity.by_event, paths)
    table = health_components(users, activity.by_event, progress, config.health, paths)
    weights = config.health.weights.model_dump()
    table["health_score"] = health_score(table, weights)
    table["risk_level"] = risk_level(table.health_score.to_numpy(), config.health)
    probability = scores.drop_duplicates("user_id").set_index("user_id").activation_probability
    table["activation_probability"] = table.user_id.map(probability)
    table["path"] = users.path.to_numpy()
    table["population"] = users.population.to_numpy()
    table["as_of"] = users.cutoff.to_numpy()
    table["signup_at"] = users.signup_at.to_numpy()
    table["days_since_signup"] = (
        users.cutoff - users.signup_at
    ).dt.total_seconds().to_numpy() / 86400
    table["label"] = users.label.to_numpy()
    return table


@asset(
    group_name=GROUP,
    kinds={"scikit-learn", "table"},
    deps=[milestone_progress, "activation_scores", USER_FEATURES],
    metadata=table_definition_metadata(HEALTH_SCORES),
    check_specs=[AssetCheckSpec("health_scores_valid", asset="health_scores", blocking=True)],
)
def health_scores(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    product_config: ProductConfigResource,
    outputs: OutputDirResource,
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """Health 0-100 from activation speed, feature adoption, engagement frequency and
    milestone completion (configurable weights), the risk level, and the model's activation
    probability alongside.

    Back-test: the same score computed for closed-window users as of the end of their early
    horizon, against what happened next: ROC AUC of the health score and of the model's
    probability (on the same validation users), activation rate by risk level, and weights
    fitted from outcomes next to the configured ones. Without an accepted model the
    probability stays empty and the metadata says what would unlock it.
    """
    config = product_config.load()
    choice = engagement_paths(warehouse, config)
    activity, now = load_activity(warehouse, config, choice.paths)
    scores = warehouse.execute(warehouse.table(ACTIVATION_SCORES.name))
    table = health_table(activity, scores, config, now, choice.paths)
    warehouse.replace_all(HEALTH_SCORES.name, table_to_arrow(table, HEALTH_SCORES.schema))
    past = table[table.population == BACKTEST]
    result = backtest(past, config.health) if past.label.nunique() == 2 else None
    current = table[table.population == ONBOARDING]
    metadata: dict[str, Any] = {
        "dagster/row_count": len(table),
        "users_onboarding": len(current),
        "risk_levels_onboarding": counts(current.risk_level),
        "weights": MetadataValue.json(config.health.weights.model_dump()),
        "mean_components_onboarding": MetadataValue.json(
            {c: round(float(current[c].mean()), 3) for c in COMPONENTS} if len(current) else {}
        ),
        "adoption_events": MetadataValue.json(adoption_events(config.health, choice.paths)),
        "adoption_events_source": "health.adoption_events"
        if config.health.adoption_events
        else f"every milestone event of the paths ({choice.source})",
        **path_metadata(context, choice),
        **scoring_metadata(context, onboarding_scores(warehouse), Path(outputs.path) / "models"),
        **config_warnings_metadata(context, warehouse, config, ("health.",)),
    }
    if result is None:
        metadata["backtest"] = MetadataValue.md(
            "_not enough closed-window users with both outcomes yet_"
        )
    else:
        rates = result.pop("rates_by_risk")
        metadata["backtest"] = MetadataValue.json(result)
        metadata["backtest_activation_by_risk"] = markdown(rates.round(3))
        metadata["activation_rate_high_risk"] = result["activation_rate_high_risk"]
        metadata["activation_rate_other_risk"] = result["activation_rate_other"]
        metadata["health_auc"] = result["health_auc_all_closed"]["auc"]
        context.log.info(
            f"health back-test: AUC {result['health_auc_all_closed']['auc']}, activation "
            f"{result['activation_rate_high_risk']} (high risk) vs {result['activation_rate_other']}"
        )
    yield MaterializeResult(metadata=metadata)
    problems = {
        "scores_outside_0_100": int(((table.health_score < 0) | (table.health_score > 100)).sum()),
        "users_scored_twice": int(table.user_id.duplicated().sum()),
        "unknown_risk_level": int((~table.risk_level.isin(["high", "medium", "low"])).sum()),
    }
    problems = {k: v for k, v in problems.items() if v}
    yield AssetCheckResult(check_name="health_scores_valid", passed=not problems, metadata=problems)


@asset(
    group_name=GROUP,
    kinds={"pandas", "table"},
    deps=[milestone_progress, SESSIONS.name],
    metadata=table_definition_metadata(STALLED_USERS),
)
def stalled_users(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    product_config: ProductConfigResource,
) -> MaterializeResult:
    """Who is stalled (no engagement for `stall.inactive_hours`, or a started milestone not
    completed) and why: evidence (last event and its time, current step, days since signup)
    and one failure label (access block, invite failure, generic-tour trap, no-show, other).
    Invite and stall events that never occur are warnings. Nobody onboarding: no rows."""
    config = product_config.load()
    choice = engagement_paths(warehouse, config)
    paths = choice.paths
    activity, now = load_activity(warehouse, config, paths, (ONBOARDING,))
    onboarding = activity.users
    progress = warehouse.execute(warehouse.table(MILESTONE_PROGRESS.name))
    steps = next_milestones(progress) if len(progress) else _no_steps()
    core = [*adoption_events(config.health, paths)]
    core += [e for p in paths.values() for m in p.milestones for e in m.events]
    table = detect_stalls(
        onboarding,
        activity.by_event,
        steps,
        config.interventions,
        config.invite_events,
        list(dict.fromkeys(core)),
        now,
    )
    warehouse.replace_all(STALLED_USERS.name, table_to_arrow(table, STALLED_USERS.schema))
    stalled = table[table.stalled.astype(bool)]
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "stalled": len(stalled),
            "stalled_share": round(len(stalled) / len(table), 4) if len(table) else 0.0,
            "by_failure_label": counts(stalled.failure_label),
            "by_stall_kind": counts(stalled.stall_kind),
            "preview": markdown(
                stalled[["user_id", "failure_label", "current_step", "evidence"]].head(10),
                "_nobody stalled_" if len(table) else "_nobody onboarding_",
            ),
            **config_warnings_metadata(
                context, warehouse, config, ("invite_events.", "interventions.stall.")
            ),
        }
    )


def _no_steps() -> pd.DataFrame:
    return pd.DataFrame(
        columns=["user_id", "next_milestone", "next_milestone_label", "next_started_at"]
    )


def ledger_history(warehouse: WarehouseResource, experiment: str) -> pd.DataFrame:
    ledger = warehouse.table(INTERVENTION_LEDGER.name)
    return warehouse.execute(ledger.filter(ledger.experiment == experiment))


def assignment_outcomes(
    warehouse: WarehouseResource, config: ProductConfig, now: datetime
) -> pd.DataFrame:
    """Each assigned user's first assignment, with the outcome at its fixed follow-up."""
    rules = config.interventions
    assignments = first_assignments(ledger_history(warehouse, rules.experiment))
    if assignments.empty:
        return assignments.assign(final=pd.Series(dtype=bool), activated=pd.Series(dtype=float))
    features = warehouse.table(USER_FEATURES)
    ledger = warehouse.table(INTERVENTION_LEDGER.name)
    assigned = ledger.filter(ledger.experiment == rules.experiment).select(
        _assigned_user=ledger.user_id
    )
    users = warehouse.execute(
        features.semi_join(assigned, features.user_id == assigned._assigned_user).select(
            "user_id", "signup_at", "activation_at"
        )
    )
    return final_outcomes(
        assignments,
        users,
        pd.Timestamp(now),
        rules.follow_up_days,
        config.activation_window_days,
    )


def effectiveness_of(outcomes: pd.DataFrame, config: ProductConfig) -> pd.DataFrame:
    rules = config.interventions
    return compare_arms(outcomes, alpha=rules.alpha, min_subgroup_users=rules.min_subgroup_users)


def record_outcomes(warehouse: WarehouseResource, config: ProductConfig) -> None:
    """Fill the outcome of ledger rows whose user's outcome is now known (never overwritten)."""
    features = warehouse.table(USER_FEATURES)
    ledger = warehouse.table(INTERVENTION_LEDGER.name)
    pending = ledger.filter(ledger.outcome.isnull()).select(_pending_user=ledger.user_id)
    known = features.filter(features.label.notnull())
    # Only users with an open ledger row: the join runs in the warehouse, not in pandas.
    known = known.semi_join(pending, known.user_id == pending._pending_user)
    frame = warehouse.execute(known.select("user_id", "label", "activation_at", "signup_at"))
    if frame.empty:
        return
    closed_at = frame.signup_at + pd.Timedelta(days=config.activation_window_days)
    outcomes = pd.DataFrame(
        {
            "user_id": frame.user_id.to_numpy(),
            "outcome": ["activated" if v == 1 else "not_activated" for v in frame.label],
            "outcome_at": frame.activation_at.where(frame.label == 1, closed_at),
        }
    )
    warehouse.update_where_null(
        INTERVENTION_LEDGER.name, table_to_arrow(outcomes), "user_id", ["outcome", "outcome_at"]
    )


@asset(
    group_name=GROUP,
    kinds={"pandas", "table"},
    deps=[health_scores, stalled_users, RAW_USERS.name],
    metadata=table_definition_metadata(INTERVENTION_QUEUE),
    check_specs=[
        AssetCheckSpec("queue_users_unique", asset="intervention_queue", blocking=True),
        AssetCheckSpec("holdout_share_as_configured", asset="intervention_queue"),
    ],
)
def intervention_queue(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    product_config: ProductConfigResource,
    outputs: OutputDirResource,
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """One row per user who needs action now: the next action, its type, channel, owner,
    escalation step, the evidence in words, a template message, holdout and priority.

    Also appends today's rows to `intervention_ledger` (append-only: a rerun of the day adds
    nothing) after filling the outcomes that became known; the ledger is what cooldown and
    escalation read on the next days. Without an accepted model the type and priority come
    from the health score and days since signup (metadata `scoring: rules`).
    """
    config = product_config.load()
    rules = config.interventions
    record_outcomes(warehouse, config)
    history = ledger_history(warehouse, rules.experiment)
    health = warehouse.table(HEALTH_SCORES.name)
    health = warehouse.execute(health.filter(health.population == ONBOARDING))
    warnings = []
    if len(health) and int(warehouse.execute(warehouse.table(RAW_EVENTS.name).count())) == 0:
        # Users but not one event: a broken export, far likelier than a product nobody
        # touched. Queueing would message every user; nobody is queued until events arrive.
        warnings.append(
            f"no events at all for {len(health)} users still onboarding: nobody is queued "
            "(an events export that is empty or was not read would otherwise message every "
            "user); check the events files"
        )
        context.log.warning(warnings[-1])
        health = health.iloc[0:0]
    stalls = warehouse.execute(warehouse.table(STALLED_USERS.name))
    raw = warehouse.table(RAW_USERS.name)
    names = warehouse.execute(raw.select("user_id", "first_name", "role", "company"))
    users = health.merge(
        stalls.drop(columns=["path", "days_since_signup"]), on="user_id", how="left"
    )
    users = users.merge(names, on="user_id", how="left")
    now = engagement_now(warehouse, config)
    effectiveness = effectiveness_of(assignment_outcomes(warehouse, config, now), config)
    uplift = measured_uplift(effectiveness, rules.alpha)
    paths = engagement_paths(warehouse, config).paths
    final = f"Reach the aha moment: {config.aha_events[0].replace('_', ' ')}"
    queue = build_queue(users, history, rules, paths, now, uplift, final, rules.nudges.language)
    warehouse.replace_all(INTERVENTION_QUEUE.name, table_to_arrow(queue, INTERVENTION_QUEUE.schema))
    entries = queue.assign(
        outcome=None, outcome_at=pd.Series(pd.NaT, index=queue.index, dtype="datetime64[ns, UTC]")
    )
    added = warehouse.insert_missing(
        INTERVENTION_LEDGER.name,
        table_to_arrow(entries, INTERVENTION_LEDGER.schema),
        LEDGER_KEYS,
    )
    context.log.info(f"{len(queue)} users queued; {added} new ledger rows")

    past = warehouse.table(HEALTH_SCORES.name)
    past = warehouse.execute(past.filter(past.population == BACKTEST).select("risk_level", "label"))
    high = past.risk_level == "high"
    yield MaterializeResult(
        metadata={
            "dagster/row_count": len(queue),
            "ledger_rows_added": added,
            **(
                {"warnings": MetadataValue.md("\n".join(f"- {w}" for w in warnings))}
                if warnings
                else {}
            ),
            "by_intervention_type": counts(queue.intervention_type),
            # Held-out rows have channel and owner `none`: no one acts on them.
            "by_channel": counts(queue.channel),
            "by_owner": counts(queue.owner[~queue.holdout.astype(bool)]),
            "by_failure_label": counts(queue.failure_label.fillna("not stalled")),
            "holdout_users": int(queue.holdout.sum()),
            "holdout_share": round(float(queue.holdout.mean()), 4) if len(queue) else 0.0,
            "high_risk_in_queue": int((queue.risk_level == "high").sum()),
            # Honest check of what "high risk" means: closed windows scored as of day 3.
            "backtest_activation_rate_high_risk": float(past.label[high].mean())
            if high.any()
            else None,
            "backtest_activation_rate_other": float(past.label[~high].mean())
            if (~high).any()
            else None,
            **scoring_metadata(
                context, onboarding_scores(warehouse), Path(outputs.path) / "models"
            ),
            "preview": markdown(
                queue[
                    ["user_id", "next_action", "intervention_type", "channel", "owner", "holdout"]
                ].head(10),
                "_nobody needs an intervention today_",
            ),
        }
    )
    duplicated = int(queue.user_id.duplicated().sum())
    yield AssetCheckResult(
        check_name="queue_users_unique",
        passed=duplicated == 0,
        metadata={"duplicated_users": duplicated},
    )
    # The holdout share of every user assigned so far should be a plausible draw at the
    # configured rate (the ledger now holds today's rows too).
    assigned = first_assignments(ledger_history(warehouse, rules.experiment))
    holdouts, total = int(assigned.holdout.sum()), len(assigned)
    p_value = sample_ratio_p_value(assigned, rules.holdout_fraction)
    yield AssetCheckResult(
        check_name="holdout_share_as_configured",
        passed=bool(p_value >= 0.001),
        severity=AssetCheckSeverity.WARN,
        description=None
        if p_value >= 0.001
        else (
            f"sample-ratio mismatch: {holdouts} of {total} assigned users are in the holdout, "
            f"not a plausible draw at interventions.holdout_fraction = {rules.holdout_fraction} "
            "(binomial p < 0.001); effectiveness read-outs are suspect until it is explained "
            "(a changed experiment name or fraction, or users dropped from one arm)"
        ),
        metadata={"holdout": holdouts, "assigned": total, "p_value": round(float(p_value), 4)},
    )


@asset(
    group_name=GROUP,
    kinds={"statsmodels", "table"},
    deps=[intervention_queue],
    metadata=table_definition_metadata(INTERVENTION_EFFECTIVENESS),
)
def intervention_effectiveness(
    warehouse: WarehouseResource, product_config: ProductConfigResource
) -> MaterializeResult:
    """Activation of treated vs holdout users at a fixed follow-up from their first
    assignment: the plain difference and the one adjusted for the activation probability at
    assignment (CUPAC), each with an anytime-valid 95% interval (valid however often it is
    read), overall and by intervention type and failure label (q-values over subgroups)."""
    config = product_config.load()
    rules = config.interventions
    outcomes = assignment_outcomes(warehouse, config, engagement_now(warehouse, config))
    table = effectiveness_of(outcomes, config)
    warehouse.replace_all(
        INTERVENTION_EFFECTIVENESS.name, table_to_arrow(table, INTERVENTION_EFFECTIVENESS.schema)
    )
    overall = table[table.segment_type == "overall"]
    final = int(outcomes.final.sum()) if len(outcomes) else 0
    shown = [
        "segment_type",
        "segment",
        "treated_users",
        "holdout_users",
        "difference",
        "ci_low",
        "ci_high",
        "adjusted_difference",
        "adjusted_ci_low",
        "adjusted_ci_high",
        "variance_reduction",
        "q_value",
        "note",
    ]
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "users_assigned": len(outcomes),
            "users_with_final_outcome": final,
            "users_pending": len(outcomes) - final,
            "follow_up_days": rules.follow_up_days,
            "sample_ratio_p_value": round(
                sample_ratio_p_value(outcomes, rules.holdout_fraction), 4
            ),
            "overall": markdown(
                overall[shown].round(4),
                "_not enough data yet: no assigned user's follow-up is over_",
            ),
            "by_segment": markdown(table[shown].round(4)),
        }
    )


def steps_done_in_follow_up(
    warehouse: WarehouseResource, outcomes: pd.DataFrame, step_events: dict[str, list[str]]
) -> pd.Series:
    """Per assigned user (index of `outcomes`): whether they did their target step's event
    between their assignment and the end of their follow-up. Joined in the warehouse."""
    wanted = outcomes[outcomes.final.astype(bool) & outcomes.target_step.notna()]
    pairs = [
        (user, event, start, end)
        for user, step, start, end in zip(
            wanted.user_id, wanted.target_step, wanted.queued_at, wanted.follow_up_end, strict=True
        )
        for event in step_events.get(step, [])
    ]
    done = pd.Series(False, index=outcomes.index)
    if not pairs:
        return done
    windows = ibis.memtable(
        pd.DataFrame(pairs, columns=["_user", "_event", "_start", "_end"]).astype(
            {"_start": "datetime64[us, UTC]", "_end": "datetime64[us, UTC]"}
        )
    )
    events = warehouse.table(RAW_EVENTS.name)
    hits = events.join(
        windows,
        (events.user_id == windows._user)
        & (events.event_name == windows._event)
        & (events.timestamp >= windows._start)
        & (events.timestamp <= windows._end),
    )
    users = set(warehouse.execute(hits.select("user_id").distinct()).user_id)
    return outcomes.user_id.isin(users)


@asset(
    group_name=GROUP,
    kinds={"numpy", "table"},
    deps=[intervention_effectiveness, RAW_EVENTS.name],
    metadata=table_definition_metadata(STEP_EXPERIMENTS),
)
def step_experiments(
    warehouse: WarehouseResource, product_config: ProductConfigResource
) -> MaterializeResult:
    """For each milestone the nudges pushed toward, the causal effect of doing it on
    activation: the randomized holdout as an instrument (ITT on activation over ITT on the
    step), at the effectiveness follow-up. A step whose anytime-valid confidence set lies above
    zero is `experiment` evidence; the weekly report marks the critical-path driver with its event."""
    config = product_config.load()
    outcomes = assignment_outcomes(warehouse, config, engagement_now(warehouse, config))
    step_events: dict[str, list[str]] = {}
    for path in engagement_paths(warehouse, config).paths.values():
        for milestone in path.milestones:
            step_events.setdefault(milestone.name, list(milestone.events))
    if len(outcomes) and "target_step" in outcomes:
        outcomes = outcomes.assign(
            did_step=steps_done_in_follow_up(warehouse, outcomes, step_events)
        )
    table = estimate_step_effects(
        outcomes,
        step_events,
        config.interventions.min_subgroup_users,
        alpha=config.interventions.alpha,
    )
    warehouse.replace_all(STEP_EXPERIMENTS.name, table_to_arrow(table, STEP_EXPERIMENTS.schema))
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "confirmed_steps": MetadataValue.json(
                sorted(table.step[table.evidence == "experiment"])
            ),
            "steps": markdown(
                table.round(4),
                "_not enough data yet: no nudged user's follow-up is over_",
            ),
        }
    )


def timelines_of(warehouse: WarehouseResource, config: ProductConfig, users: Any) -> pd.DataFrame:
    """The timeline rows of `users` (a table with `user_id`), on this config's paths."""
    return user_timeline_rows(
        warehouse,
        users,
        engagement_paths(warehouse, config).paths,
        config.aha_events,
        config.interventions.experiment,
        terminal_events=config.terminal_events,
    )


@asset(
    group_name=GROUP,
    kinds={"pandas", "table"},
    deps=[intervention_queue, "intervention_deliveries", RAW_EVENTS.name],
    metadata=table_definition_metadata(USER_TIMELINES),
)
def user_timelines(
    warehouse: WarehouseResource, product_config: ProductConfigResource
) -> MaterializeResult:
    """For every user the experiment assigned (treated or held out), how they moved, in
    order: signup, milestones, the stall labels and queue entries of each day, activation
    and the outcome. `onboarding-pipeline timeline USER_ID` prints the same for anyone."""
    config = product_config.load()
    ledger = warehouse.table(INTERVENTION_LEDGER.name)
    assigned = ledger.filter(ledger.experiment == config.interventions.experiment)
    rows = timelines_of(warehouse, config, assigned.select("user_id"))
    warehouse.replace_all(USER_TIMELINES.name, table_to_arrow(rows, USER_TIMELINES.schema))
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "users": int(rows.user_id.nunique()),
            "by_kind": counts(rows.kind),
            "preview": markdown(rows.head(12), "_nobody has been assigned yet_"),
        }
    )


@asset(
    group_name=GROUP,
    kinds={"anthropic", "table"},
    deps=[intervention_queue],
    metadata=table_definition_metadata(NUDGES),
)
def nudges(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    product_config: ProductConfigResource,
    outputs: OutputDirResource,
    anthropic: AnthropicResource,
) -> MaterializeResult:
    """The message for each treated queue row (holdout users get none), written by Claude
    through the Messages API with guardrails, cached per (user, next action, type, language),
    within a per-run call budget; a template where no key is set, the API keeps failing, or a
    reply is malformed or fails the output checks. `message_source` says which wrote each row,
    `note` why a template was used; the metadata has the run's tokens and estimated cost."""
    config = product_config.load()
    settings = config.interventions.nudges
    queue = warehouse.table(INTERVENTION_QUEUE.name)
    treated = warehouse.execute(queue.filter(~queue.holdout))
    raw = warehouse.table(RAW_USERS.name)
    names = warehouse.execute(raw.select("user_id", "first_name", "role", "company"))
    treated = treated.merge(names, on="user_id", how="left")
    requests = [
        NudgeRequest(
            user_id=row.user_id,
            first_name=text_or_none(row.first_name),
            role=text_or_none(row.role),
            company=text_or_none(row.company),
            next_action=row.next_action,
            intervention_type=row.intervention_type,
            channel=row.channel,
            language=settings.language,
            failure_label=text_or_none(row.failure_label),
        )
        for row in treated.itertuples()
    ]
    client = anthropic.client()
    results = write_nudges(requests, client, settings, outputs.folder("nudge_cache"))
    written_at = pd.Timestamp.now(tz="UTC")
    table = pd.DataFrame(
        {
            "user_id": [r.user_id for r in results],
            "next_action": [q.next_action for q in requests],
            "intervention_type": [q.intervention_type for q in requests],
            "channel": [q.channel for q in requests],
            "language": [r.language for r in results],
            "message": [r.message for r in results],
            "message_source": [r.message_source for r in results],
            "model": [r.model for r in results],
            "note": [r.note for r in results],
            "written_at": written_at,
        }
    )
    warehouse.replace_all(NUDGES.name, table_to_arrow(table, NUDGES.schema))
    if client is None:
        context.log.info("ANTHROPIC_API_KEY is not set: every nudge is a template message")
    usage = run_usage(results, settings.prices)
    metadata: dict[str, Any] = {
        "dagster/row_count": len(table),
        "by_source": counts(table.message_source),
        "template_reasons": counts(table.note.dropna().astype(str).str.slice(0, 120)),
        "model": settings.model,
        "llm_enabled": client is not None,
        "api_replies": usage.replies,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cost_basis": "estimate: the tokens the API reported times the list prices in "
        "interventions.nudges.prices (USD per million tokens; no batch or cache discounts)",
        "preview": markdown(table[["user_id", "message_source", "message"]].head(5)),
    }
    if usage.estimated_cost_usd is None:
        metadata["estimated_cost_usd_unknown"] = (
            f"no price for {', '.join(usage.unpriced_models)}: add it to "
            "interventions.nudges.prices"
        )
    else:
        metadata["estimated_cost_usd"] = MetadataValue.float(round(usage.estimated_cost_usd, 6))
    return MaterializeResult(metadata=metadata)


def anthropic_resource_from_env() -> AnthropicResource:
    """The Messages API resource: the key as an `EnvVar` when ANTHROPIC_API_KEY is set (never
    in run config or the UI), else none and template messages; ANTHROPIC_BASE_URL optional."""
    return AnthropicResource(
        api_key=EnvVar("ANTHROPIC_API_KEY") if os.environ.get("ANTHROPIC_API_KEY") else None,
        base_url=EnvVar("ANTHROPIC_BASE_URL") if os.environ.get("ANTHROPIC_BASE_URL") else None,
    )


ENGAGEMENT_ASSETS = [
    milestone_progress,
    health_scores,
    stalled_users,
    intervention_queue,
    intervention_effectiveness,
    step_experiments,
    user_timelines,
    nudges,
]


def run_summary_lines(warehouse: WarehouseResource) -> list[str]:
    """What `onboarding-pipeline run` prints about engagement."""
    health = warehouse.table(HEALTH_SCORES.name)
    current = warehouse.execute(health.filter(health.population == ONBOARDING).select("risk_level"))
    stalls = warehouse.execute(
        warehouse.table(STALLED_USERS.name).select("stalled", "failure_label")
    )
    queue = warehouse.execute(warehouse.table(INTERVENTION_QUEUE.name).select("holdout", "channel"))
    nudge_sources = warehouse.execute(warehouse.table(NUDGES.name).select("message_source"))
    mode = scoring_mode(onboarding_scores(warehouse))
    judged = {
        "model": "activation probabilities of the model, with health",
        "rules": "rules: health score and days since signup (no accepted activation model)",
        "nobody_onboarding": "nobody onboarding",
    }[mode]

    def spread(series: pd.Series) -> str:
        return ", ".join(f"{k}={v}" for k, v in series.value_counts().items()) or "-"

    return [
        f"  engagement judged:  {judged}",
        f"  health (onboarding): {len(current)} users ({spread(current.risk_level)} risk)",
        f"  stalled users:      {int(stalls.stalled.sum())} "
        f"({spread(stalls.failure_label.dropna())})",
        f"  intervention queue: {len(queue)} users, {int(queue.holdout.sum())} in holdout "
        f"({spread(queue.channel)})",
        f"  nudges written:     {len(nudge_sources)} ({spread(nudge_sources.message_source)})",
    ]

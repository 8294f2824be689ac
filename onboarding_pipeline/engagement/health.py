"""Health score 0-100 from four components, risk levels, and the back-test on outcomes.

Components, each in [0, 1] and measured up to the user's cutoff (now, or the end of the early
horizon for the back-test):
- activation_speed: 0.5 ** (hours to the first milestone event / `speed_half_life_hours`);
  0 when no milestone event yet;
- feature_adoption: share of the adoption events the user has used at least once;
- engagement_frequency: active days / days since signup (at least one day);
- milestone_completion: completed weight share of the user's path.
health_score = 100 * sum(weight * component) / sum(weight).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from onboarding_pipeline.config.engagement import HealthRules, OnboardingPath

COMPONENTS = (
    "activation_speed",
    "feature_adoption",
    "engagement_frequency",
    "milestone_completion",
)
RISK_LEVELS = ("high", "medium", "low")


def adoption_events(rules: HealthRules, paths: dict[str, OnboardingPath]) -> list[str]:
    if rules.adoption_events:
        return list(dict.fromkeys(rules.adoption_events))
    return list(dict.fromkeys(e for p in paths.values() for m in p.milestones for e in m.events))


def health_components(
    users: pd.DataFrame,
    by_event: pd.DataFrame,
    progress: pd.DataFrame,
    rules: HealthRules,
    paths: dict[str, OnboardingPath],
) -> pd.DataFrame:
    """The four components per user (`users`: user_id, signup_at, cutoff, active_days)."""
    frame = users[["user_id"]].copy()
    first_milestone = progress.groupby("user_id").completed_at.min()
    hours = (first_milestone.reindex(users.user_id).to_numpy() - users.signup_at.to_numpy()) / (
        np.timedelta64(1, "h")
    )
    speed = np.power(0.5, np.clip(hours.astype(float), 0, None) / rules.speed_half_life_hours)
    frame["activation_speed"] = np.nan_to_num(speed, nan=0.0)

    adopted = adoption_events(rules, paths)
    used = by_event[by_event.event_name.isin(adopted)].groupby("user_id").event_name.nunique()
    frame["feature_adoption"] = used.reindex(users.user_id).fillna(0).to_numpy() / len(adopted)

    elapsed_days = np.ceil((users.cutoff - users.signup_at).dt.total_seconds().to_numpy() / 86400)
    frame["engagement_frequency"] = np.clip(
        users.active_days.to_numpy() / np.maximum(elapsed_days, 1), 0, 1
    )

    weighted = progress.assign(done=progress.weight * progress.completed)
    sums = weighted.groupby("user_id")[["done", "weight"]].sum()
    completion = (sums.done / sums.weight).reindex(users.user_id).fillna(0)
    frame["milestone_completion"] = completion.to_numpy()
    return frame


def health_score(components: pd.DataFrame, weights: dict[str, float]) -> np.ndarray:
    total = sum(weights[c] for c in COMPONENTS)
    score = sum(weights[c] * components[c].to_numpy() for c in COMPONENTS) / total
    return np.round(100 * score, 2)


def risk_level(scores: np.ndarray, rules: HealthRules) -> np.ndarray:
    return np.select(
        [scores < rules.high_risk_below, scores < rules.medium_risk_below],
        ["high", "medium"],
        default="low",
    )


def auc_with_ci(y: Any, score: Any) -> dict[str, Any]:
    """ROC AUC with a 95% interval from the Hanley-McNeil standard error (cheap at any size,
    unlike a bootstrap); None when one class is missing."""
    y, score = np.asarray(y, dtype=float), np.asarray(score, dtype=float)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    if positives == 0 or negatives == 0:
        return {"auc": None, "ci": None, "users": len(y)}
    auc = float(roc_auc_score(y, score))
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)
    ) / (positives * negatives)
    half = 1.96 * float(np.sqrt(max(variance, 0.0)))
    return {
        "auc": round(auc, 4),
        "ci": [round(max(auc - half, 0.0), 4), round(min(auc + half, 1.0), 4)],
        "users": len(y),
    }


def rates_by_risk(backtest: pd.DataFrame) -> pd.DataFrame:
    """Activation rate per risk level (closed windows), with a Wilson 95% interval."""
    rows = []
    for level in RISK_LEVELS:
        labels = backtest.label[backtest.risk_level == level]
        users, activated = len(labels), int(labels.sum())
        low, high = proportion_confint(activated, max(users, 1), method="wilson")
        rows.append(
            {
                "risk_level": level,
                "users": users,
                "activated": activated,
                "activation_rate": activated / users if users else None,
                "ci_low": float(low) if users else None,
                "ci_high": float(high) if users else None,
            }
        )
    return pd.DataFrame(rows)


def backtest(backtest_users: pd.DataFrame, rules: HealthRules) -> dict[str, Any]:
    """How well the health score and the model rank eventual activation on closed windows.

    `backtest_users`: label, health_score, risk_level, the components, and
    `activation_probability` (out-of-sample, set only for the model's validation users).
    Both are compared on the same users too, so the weights are judged against the model.
    """
    y = backtest_users.label.to_numpy(dtype=float)
    result: dict[str, Any] = {"health_auc_all_closed": auc_with_ci(y, backtest_users.health_score)}
    scored = backtest_users[backtest_users.activation_probability.notna()]
    result["health_auc_validation_users"] = auc_with_ci(
        scored.label.to_numpy(dtype=float), scored.health_score.to_numpy()
    )
    result["model_auc_validation_users"] = auc_with_ci(
        scored.label.to_numpy(dtype=float), scored.activation_probability.to_numpy()
    )
    by_risk = rates_by_risk(backtest_users)
    result["rates_by_risk"] = by_risk
    high = backtest_users.risk_level == "high"
    result["activation_rate_high_risk"] = float(y[high].mean()) if high.any() else None
    result["activation_rate_other"] = float(y[~high].mean()) if (~high).any() else None
    if rules.fit_weights:
        result["fitted"] = fit_weights(backtest_users)
    return result


def fit_weights(backtest_users: pd.DataFrame, test_share: float = 0.25) -> dict[str, Any] | None:
    """Weights from outcomes: a logistic regression of activation on the components, fitted on
    the older closed-window signups and judged on the newest (time split, as the model is).

    Negative coefficients are set to 0 (a component cannot lower health); the weights are
    normalized to sum to 1 so they can be pasted into `health.weights`.
    """
    # By signup, then id: ties (date-only data) split the same way on every run.
    keys = ["signup_at", "user_id"] if "user_id" in backtest_users else ["signup_at"]
    ordered = backtest_users.sort_values(keys, kind="stable")
    cut = int(len(ordered) * (1 - test_share))
    train, test = ordered.iloc[:cut], ordered.iloc[cut:]
    if len(train) < 50 or train.label.nunique() < 2 or test.label.nunique() < 2:
        return None
    x = list(COMPONENTS)
    model = LogisticRegression(max_iter=1000).fit(train[x], train.label.astype(int))
    coef = np.clip(model.coef_[0], 0, None)
    if coef.sum() == 0:
        return None
    weights = {c: round(float(v / coef.sum()), 3) for c, v in zip(x, coef, strict=True)}
    y_test = test.label.to_numpy(dtype=float)
    fitted_score = health_score(test, weights)
    return {
        "weights": weights,
        "train_users": len(train),
        "test_users": len(test),
        "fitted_auc_test": auc_with_ci(y_test, fitted_score),
        "configured_auc_test": auc_with_ci(y_test, test.health_score.to_numpy()),
    }

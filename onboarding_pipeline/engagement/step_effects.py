"""Steps confirmed by experiment: the causal effect of doing a milestone on activation.

A nudge pushes a user toward one named milestone (`target_step`), and a randomized holdout
decides who is pushed. The assignment is then an instrument for doing the step: the effect of
the step on activation, among the users the nudge moves, is the intention-to-treat effect on
activation over the intention-to-treat effect on doing the step (the Wald estimator, i.e. two-
stage least squares with one instrument). Its interval comes from the robust (sandwich)
variance of that ratio. It needs a nudge that really moves the step: with a first-stage F
under `MIN_FIRST_STAGE_F` the ratio is unstable and no estimate is given (the row says why).

The outcome and the step are both read at the same fixed follow-up as effectiveness, and only
for users whose follow-up is over. Unlike the critical path (association), an estimate whose
interval lies above zero is evidence from an experiment: the critical path's driver with that
step's event is then marked `experiment`.

The interval is a one-look 95% interval (not anytime-valid): read it when the experiment ends,
not every week.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import norm

STEP_EXPERIMENT_COLUMNS = [
    "step",
    "step_events",
    "treated_users",
    "holdout_users",
    "treated_step_rate",
    "holdout_step_rate",
    "step_itt",  # effect of the nudge on doing the step
    "activation_itt",  # effect of the nudge on activation
    "first_stage_f",
    "step_effect",  # effect of doing the step on activation (IV)
    "ci_low",
    "ci_high",
    "evidence",  # experiment | not_confirmed | not_estimated
    "note",
]
# Staiger and Stock's rule of thumb: a weaker first stage biases the ratio towards the
# association and its interval is not to be trusted.
MIN_FIRST_STAGE_F = 10.0


def instrumental_effect(
    outcome: np.ndarray, took_step: np.ndarray, treated: np.ndarray, alpha: float = 0.05
) -> dict[str, float] | str:
    """The Wald / 2SLS estimate of the step's effect on the outcome with its robust interval,
    or why it cannot be made."""
    z = treated.astype(float)
    d = took_step.astype(float)
    y = outcome.astype(float)
    n = len(y)
    if n < 4 or z.min() == z.max():
        return "both arms are needed"
    zc = z - z.mean()
    first_stage = float(np.dot(zc, d - d.mean()))
    if first_stage == 0:
        return "the nudge did not change how many users did the step"
    # First stage: d on z with a robust standard error; F = t squared.
    step_itt = d[z == 1].mean() - d[z == 0].mean()
    step_residual = d - d.mean() - (first_stage / np.dot(zc, zc)) * zc
    step_se = math.sqrt(float(np.sum(zc**2 * step_residual**2))) / float(np.dot(zc, zc))
    first_f = (step_itt / step_se) ** 2 if step_se > 0 else math.inf
    activation_itt = y[z == 1].mean() - y[z == 0].mean()
    if first_f < MIN_FIRST_STAGE_F:
        return (
            f"the nudge barely moved the step (first-stage F {first_f:.1f} < "
            f"{MIN_FIRST_STAGE_F:g}): the ratio would be unstable"
        )
    effect = float(np.dot(zc, y - y.mean())) / first_stage
    residual = y - y.mean() - effect * (d - d.mean())
    se = math.sqrt(float(np.sum(zc**2 * residual**2))) / abs(first_stage)
    half = norm.ppf(1 - alpha / 2) * se
    return {
        "step_itt": float(step_itt),
        "activation_itt": float(activation_itt),
        "first_stage_f": float(first_f),
        "step_effect": effect,
        "ci_low": effect - half,
        "ci_high": effect + half,
    }


def step_experiments(
    outcomes: pd.DataFrame, step_events: dict[str, list[str]], min_users: int = 30
) -> pd.DataFrame:
    """One row per nudged step. `outcomes`: one row per assigned user with `target_step`,
    `holdout`, `final`, `activated` and `did_step` (the step done by the end of the
    follow-up)."""
    rows = []
    if outcomes.empty or "target_step" not in outcomes:
        return pd.DataFrame(columns=STEP_EXPERIMENT_COLUMNS)
    final = outcomes[outcomes.final.astype(bool) & outcomes.target_step.notna()]
    for step, part in final.groupby("target_step", sort=True):
        holdout = part.holdout.astype(bool).to_numpy()
        did = part.did_step.astype(float).to_numpy()
        row: dict[str, object] = {
            "step": step,
            "step_events": ", ".join(step_events.get(str(step), [])),
            "treated_users": int((~holdout).sum()),
            "holdout_users": int(holdout.sum()),
            "treated_step_rate": float(did[~holdout].mean()) if (~holdout).any() else None,
            "holdout_step_rate": float(did[holdout].mean()) if holdout.any() else None,
            "evidence": "not_estimated",
        }
        if min(row["treated_users"], row["holdout_users"]) < min_users:  # type: ignore[call-overload]
            row["note"] = (
                f"{row['treated_users']} treated and {row['holdout_users']} holdout users with a "
                f"final outcome: each arm needs {min_users} (interventions.min_subgroup_users)"
            )
            rows.append(row)
            continue
        estimate = instrumental_effect(part.activated.to_numpy(), did, ~holdout)
        if isinstance(estimate, str):
            row["note"] = estimate
        else:
            row.update(estimate)
            row["evidence"] = "experiment" if estimate["ci_low"] > 0 else "not_confirmed"
        rows.append(row)
    return pd.DataFrame(rows, columns=STEP_EXPERIMENT_COLUMNS)


def confirmed_events(table: pd.DataFrame) -> set[str]:
    """Event names of the steps an experiment confirmed (interval above zero)."""
    confirmed = table[table.evidence == "experiment"]
    return {name.strip() for events in confirmed.step_events.dropna() for name in events.split(",")}

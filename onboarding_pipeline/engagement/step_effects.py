"""Steps confirmed by experiment: the causal effect of doing a milestone on activation.

A nudge pushes a user toward one named milestone (`target_step`), and a randomized holdout
decides who is pushed. The assignment is then an instrument for doing the step: the effect of
the step on activation, among the users the nudge moves, is the intention-to-treat effect on
activation over the intention-to-treat effect on doing the step (the Wald estimator, i.e. two-
stage least squares with one instrument). The point estimate needs a nudge that really moves
the step: with a first-stage F under `MIN_FIRST_STAGE_F` the ratio is unstable and is not
given (the row says why).

The interval is **anytime-valid**, because the table is recomputed on every daily and weekly
run: a one-look 95% interval read that often confirmed a step without effect far more often
than 2.5% of the time (8.7% over ten reads). It is an Anderson-Rubin confidence set: an effect
`beta` is in the set when the anytime-valid test of the nudge's effect on `activated - beta x
did_step` (the confidence sequence of `effectiveness.anytime_valid_effect`, HC2 variance) does
not reject. Under the true `beta` that adjusted outcome does not depend on the arm, so the
chance that the set ever misses the truth, however often it is read, is at most alpha; and
unlike the ratio's own interval this holds however weak the nudge. Outcome and step are
binary, so the effect lies in [-1, 1] and the set is found over a fine grid there; it may be
the whole range (the data cannot tell yet) or touch one end, and `note` says so.

The outcome and the step are both read at the same fixed follow-up as effectiveness, and only
for users whose follow-up is over. Unlike the critical path (association), a step whose whole
set lies above zero is evidence from an experiment: the critical path's driver with that
step's event is then marked `experiment`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from onboarding_pipeline.engagement.effectiveness import confidence_sequence, outcomes_too_alike

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
# association, so no point estimate is given (the confidence set does not need it).
MIN_FIRST_STAGE_F = 10.0
# Effects tried when inverting the test: a binary step's effect on a binary outcome.
EFFECT_GRID = np.round(np.linspace(-1.0, 1.0, 2001), 3)


@dataclass(frozen=True)
class StepEffect:
    """The nudge's effects, the step's effect (None with a weak first stage) and its
    anytime-valid confidence set's bounds (None when no effect in [-1, 1] fits)."""

    step_itt: float
    activation_itt: float
    first_stage_f: float
    step_effect: float | None
    ci_low: float | None
    ci_high: float | None
    note: str | None


def anytime_valid_set(
    outcome: np.ndarray,
    took_step: np.ndarray,
    treated: np.ndarray,
    alpha: float,
    extra: float | None = None,
) -> tuple[float, float, bool] | None:
    """The effects in [-1, 1] the anytime-valid test does not reject: (low, high, whether it
    is one interval), or None if it rejects them all. `extra` is an effect to try besides the
    grid (the point estimate). A bound inside the range is the nearest rejected grid point,
    so the set reported is never narrower than the true one."""
    y, d, z = (np.asarray(a, dtype=float) for a in (outcome, took_step, treated))
    n = len(y)
    design = np.column_stack([np.ones(n), z])
    dof = n - 2
    bread = np.linalg.pinv(design.T @ design)
    # The regression of y - beta*d on (1, z) is linear in beta: its coefficient, residuals,
    # HC2 variance and residual variance follow from those of y and of d (as in
    # anytime_valid_effect, for every beta at once).
    coef_y, *_ = np.linalg.lstsq(design, y, rcond=None)
    coef_d, *_ = np.linalg.lstsq(design, d, rcond=None)
    res_y, res_d = y - design @ coef_y, d - design @ coef_d
    leverage = np.einsum("ij,jk,ik->i", design, bread, design)
    weight = (design @ bread)[:, 1] ** 2 / np.clip(1 - leverage, 1e-12, None)
    betas = EFFECT_GRID
    if extra is not None and -1 < extra < 1:
        betas = np.union1d(betas, [extra])
    difference = coef_y[1] - betas * coef_d[1]
    variance = (
        np.sum(weight * res_y**2)
        - 2 * betas * np.sum(weight * res_y * res_d)
        + betas**2 * np.sum(weight * res_d**2)
    )
    sigma2 = (
        np.sum(res_y**2) - 2 * betas * np.sum(res_y * res_d) + betas**2 * np.sum(res_d**2)
    ) / dof
    variance = np.where(variance > 0, variance, sigma2 * bread[1, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        unscaled = np.where(sigma2 > 0, variance / sigma2, bread[1, 1])
    _, p_value = confidence_sequence(difference, np.sqrt(variance), unscaled, dof, alpha)
    inside = np.flatnonzero(p_value >= alpha)
    if not len(inside):
        return None
    first, last = int(inside[0]), int(inside[-1])
    low = float(betas[first - 1]) if first > 0 else -1.0
    high = float(betas[last + 1]) if last < len(betas) - 1 else 1.0
    return low, high, last - first + 1 == len(inside)


def instrumental_effect(
    outcome: np.ndarray, took_step: np.ndarray, treated: np.ndarray, alpha: float = 0.05
) -> StepEffect | str:
    """The Wald / 2SLS estimate of the step's effect on the outcome with its anytime-valid
    confidence set, or why it cannot be made."""
    z = treated.astype(float)
    d = took_step.astype(float)
    y = outcome.astype(float)
    n = len(y)
    if n < 4 or z.min() == z.max():
        return "both arms are needed"
    if np.ptp(y) == 0:
        who = "activated" if y[0] else "did not activate"
        return f"every user {who}: there is no spread to estimate an effect from"
    zc = z - z.mean()
    first_stage = float(np.dot(zc, d - d.mean()))
    if first_stage == 0:
        return "the nudge did not change how many users did the step"
    # First stage: d on z with a robust standard error; F = t squared.
    step_itt = d[z == 1].mean() - d[z == 0].mean()
    step_residual = d - d.mean() - (first_stage / np.dot(zc, zc)) * zc
    step_se = math.sqrt(float(np.sum(zc**2 * step_residual**2))) / float(np.dot(zc, zc))
    first_f = (step_itt / step_se) ** 2 if step_se > 0 else math.inf
    step_itt, activation_itt = float(step_itt), float(y[z == 1].mean() - y[z == 0].mean())
    notes = []
    effect: float | None = float(np.dot(zc, y - y.mean())) / first_stage
    if first_f < MIN_FIRST_STAGE_F:
        notes.append(
            f"the nudge barely moved the step (first-stage F {first_f:.1f} < "
            f"{MIN_FIRST_STAGE_F:g}): no point estimate, the ratio would be unstable"
        )
    found = anytime_valid_set(y, d, z, alpha, extra=effect)
    if first_f < MIN_FIRST_STAGE_F:
        effect = None
    if found is None:
        notes.append(
            "no effect between -1 and +1 fits both arms: the nudge seems to act on activation "
            "other than through the step"
        )
        return StepEffect(
            step_itt, activation_itt, float(first_f), effect, None, None, "; ".join(notes)
        )
    low, high, one_interval = found
    if low <= -1 and high >= 1:
        notes.append(
            "the interval is the whole possible range (-1 to +1): the experiment cannot tell yet"
        )
    elif low <= -1 or high >= 1:
        end = "+1" if high >= 1 else "-1"
        notes.append(f"the interval reaches the end of the possible range ({end})")
    if not one_interval:
        notes.append("the confidence set is not one interval: ci_low to ci_high spans it")
    return StepEffect(
        step_itt=step_itt,
        activation_itt=activation_itt,
        first_stage_f=float(first_f),
        step_effect=effect,
        ci_low=low,
        ci_high=high,
        note="; ".join(notes) or None,
    )


def step_experiments(
    outcomes: pd.DataFrame,
    step_events: dict[str, list[str]],
    min_users: int = 30,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per nudged step. `outcomes`: one row per assigned user with `target_step`,
    `holdout`, `final`, `activated` and `did_step` (the step done by the end of the
    follow-up). `evidence` is `experiment` only when the whole confidence set is above 0."""
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
        too_alike = outcomes_too_alike(part.activated.to_numpy(dtype=float), holdout)
        if too_alike:
            row["note"] = too_alike
            rows.append(row)
            continue
        estimate = instrumental_effect(part.activated.to_numpy(), did, ~holdout, alpha)
        if isinstance(estimate, str):
            row["note"] = estimate
        else:
            row.update(asdict(estimate))
            if estimate.ci_low is not None:
                row["evidence"] = "experiment" if estimate.ci_low > 0 else "not_confirmed"
        rows.append(row)
    return pd.DataFrame(rows, columns=STEP_EXPERIMENT_COLUMNS)


def confirmed_events(table: pd.DataFrame) -> set[str]:
    """Event names of the steps an experiment confirmed (whole confidence set above zero)."""
    confirmed = table[table.evidence == "experiment"]
    return {name.strip() for events in confirmed.step_events.dropna() for name in events.split(",")}

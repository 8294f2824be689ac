"""Does intervening help? Treated vs holdout activation, from the randomized assignment.

Three rules keep the read-out honest when it is read every week:

- **A fixed follow-up for both arms.** Each user counts once, in the arm of their first
  assignment (intention to treat), and only once their follow-up is over: `follow_up_days`
  after that assignment, or the close of their activation window if sooner. The outcome is
  "activated by the end of the follow-up". Counting an activator as soon as they activate but
  a non-activator only when the window closes would bias every interim read-out upwards.
- **Regression adjustment (CUPAC).** Next to the plain difference, the treatment coefficient
  of a linear model that also holds the activation probability at assignment (and, overall,
  the intervention type) fixed: the same estimand, a smaller variance when the covariate
  predicts the outcome. `variance_reduction` says how much it bought. A covariate that adds
  no rank (a duplicate, a combination of others) is left out and `note` says so; covariates
  that determine the arm leave the row with the plain difference only.
- **Anytime-valid intervals.** Both intervals are confidence sequences for a coefficient of a
  linear model (Lindon, Ham, Tingley and Bojinov, "Anytime-valid linear models and regression
  adjusted causal inference in randomized experiments", 2024), with the coefficient's
  variance from the HC2 sandwich, since the arms' variances differ whenever the nudge moves
  the rate: the chance that one ever excludes the true effect, however often it is read, is
  at most alpha. They are wider than a one-look interval; that is the price of peeking.

Subgroup rows (intervention type, failure label) are estimated only with at least
`min_subgroup_users` in each arm, and their p-values get a Benjamini-Hochberg q-value.
Priorities use only the adjusted, final read-out of an intervention type that clears q < alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.stats import binomtest
from statsmodels.stats.multitest import multipletests

EFFECTIVENESS_COLUMNS = [
    "segment_type",
    "segment",
    "treated_users",
    "treated_activated",
    "treated_rate",
    "holdout_users",
    "holdout_activated",
    "holdout_rate",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "adjusted_difference",
    "adjusted_ci_low",
    "adjusted_ci_high",
    "adjusted_p_value",
    "variance_reduction",
    "q_value",
    "pending_users",
    "note",
]
# Scale of the normal mixture over the effect in the confidence sequence, in units of the
# outcome's residual spread: 1 spreads the mixture over effects of any plausible size for an
# activation rate. Smaller values tighten the sequence for small effects, widen it for large.
PRIOR_SCALE = 1.0
# Final users per arm before the overall row gets an estimate (subgroups: min_subgroup_users).
MIN_OVERALL_USERS = 10
# Activated and not activated final users each arm needs before an interval is given. An arm
# whose outcomes are all alike (a small holdout of a rare outcome: 0 of 53 activated) has a
# sandwich variance of 0, and the interval then ignores that arm's uncertainty: in worlds
# without effect (2 % activation, 5 % holdout) it excluded the truth at some weekly read in
# 25-49 % of them. Five of each is the usual floor for a normal approximation of a rate.
MIN_OUTCOMES_PER_ARM = 5


@dataclass(frozen=True)
class Effect:
    """A treatment coefficient with its anytime-valid interval and p-value."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    std_error: float
    dropped: int = 0  # covariates left out: they added nothing the others did not hold


def first_assignments(ledger: pd.DataFrame) -> pd.DataFrame:
    """The first ledger row of each user: their arm, when and how they were assigned."""
    if ledger.empty:
        return ledger
    ordered = ledger.sort_values(["queued_on", "queued_at"], kind="stable")
    first = ordered.groupby("user_id", as_index=False).first()
    outcome = ordered.dropna(subset=["outcome"]).groupby("user_id").outcome.last()
    first["outcome"] = first.user_id.map(outcome)
    return first


def final_outcomes(
    assignments: pd.DataFrame,
    users: pd.DataFrame,
    now: pd.Timestamp,
    follow_up_days: float,
    window_days: float,
) -> pd.DataFrame:
    """`assignments` with `follow_up_end`, `final` (the follow-up is over) and `activated`
    (1/0 once final, else missing). `users`: user_id, signup_at, activation_at."""
    frame = assignments.merge(
        users[["user_id", "signup_at", "activation_at"]], on="user_id", how="left"
    )
    follow_up = frame.queued_at + pd.Timedelta(days=follow_up_days)
    window_close = frame.signup_at + pd.Timedelta(days=window_days)
    frame["follow_up_end"] = follow_up.where(
        window_close.isna() | (follow_up <= window_close), window_close
    )
    frame["final"] = frame.follow_up_end <= now
    reached = frame.activation_at.notna() & (frame.activation_at <= frame.follow_up_end)
    frame["activated"] = reached.astype(float).where(frame.final)
    return frame


def confidence_sequence(
    difference: ArrayLike, std_error: ArrayLike, unscaled: ArrayLike, dof: int, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Radius and p-value of the confidence sequence for one coefficient (element-wise).

    `unscaled` is the coefficient's variance over the residual variance (1 / its
    information); the p-value is the inverse of the normal-mixture Bayes factor, so the
    sequence excludes a value exactly when the p-value of that value is below alpha."""
    difference, std_error = np.asarray(difference, float), np.asarray(std_error, float)
    # r shrinks as the information grows; the radius is where the Bayes factor reaches 1/alpha.
    r = PRIOR_SCALE / (PRIOR_SCALE + 1 / np.asarray(unscaled, float))
    c = (r * alpha**2) ** (1 / (dof + 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.where(c > r, std_error * np.sqrt(dof * (1 - c) / (c - r)), np.inf)
        t2 = np.where(difference == 0, 0.0, (difference / std_error) ** 2)
        # log((1 + t2/dof) / (1 + r t2/dof)), whose limit for an infinite t2 is -log(r).
        ratio = np.where(np.isinf(t2), -np.log(r), np.log1p(t2 / dof) - np.log1p(r * t2 / dof))
        log_bayes = 0.5 * np.log(r) + 0.5 * (dof + 1) * ratio
    return radius, np.minimum(1.0, np.exp(-log_bayes))


def anytime_valid_effect(
    outcome: np.ndarray, treated: np.ndarray, covariates: np.ndarray | None, alpha: float
) -> Effect | str:
    """The treatment coefficient of `outcome ~ 1 + treated + covariates` by least squares,
    with its confidence sequence; or why it cannot be estimated. Covariates that add nothing
    to the intercept and the covariates before them are left out (`Effect.dropped`)."""
    n = len(outcome)
    z = treated.astype(float)
    if n and z.min() == z.max():
        return "every user is in one arm: there is no comparison"
    kept, dropped = _independent_covariates(covariates, n)
    base = np.column_stack([np.ones(n), *kept])
    if np.linalg.matrix_rank(np.column_stack([base, z])) == base.shape[1]:
        # pinv would return some coefficient; none of them separates the arm from these.
        return (
            "the arm is a linear combination of the covariates (each arm has its own "
            "values): the adjusted difference cannot be separated from them"
        )
    design = np.column_stack([np.ones(n), z, *kept])
    dof = n - design.shape[1]
    if dof < 2:
        return f"{n} users: too few for a model with {design.shape[1]} terms"
    if np.ptp(outcome) == 0:
        return "every user had the same outcome: there is no spread to estimate an interval from"
    coefficients, *_ = np.linalg.lstsq(design, outcome, rcond=None)
    residuals = outcome - design @ coefficients
    sigma2 = float(residuals @ residuals) / dof
    bread = np.linalg.pinv(design.T @ design)
    # The arms' variances differ whenever the nudge moves the rate (0.3 vs 0.1 is not one
    # spread): a pooled variance would understate the small arm's, so the treatment
    # coefficient's variance is the HC2 sandwich (exact for a difference of two means), and
    # the sequence below uses it in place of sigma2 x (X'X)^-1.
    leverage = np.einsum("ij,jk,ik->i", design, bread, design)
    weights = residuals**2 / np.clip(1 - leverage, 1e-12, None)
    robust = bread @ (design.T * weights) @ design @ bread
    variance = float(robust[1, 1])
    if not variance > 0:
        variance = sigma2 * float(bread[1, 1])
    std_error = math.sqrt(variance)
    unscaled = variance / sigma2 if sigma2 > 0 else float(bread[1, 1])
    difference = float(coefficients[1])
    radius, p_value = confidence_sequence(difference, std_error, unscaled, dof, alpha)
    return Effect(
        difference=difference,
        ci_low=difference - float(radius),
        ci_high=difference + float(radius),
        p_value=float(p_value),
        std_error=std_error,
        dropped=dropped,
    )


def _independent_covariates(covariates: np.ndarray | None, n: int) -> tuple[list[np.ndarray], int]:
    """The centred covariate columns that add rank to the intercept and the columns kept before
    them, and how many non-constant ones were left out (a duplicate or a combination of
    others). Constant columns (no missing probability to flag) are dropped without a count."""
    if covariates is None or not covariates.size:
        return [], 0
    centred = covariates - covariates.mean(axis=0)
    kept: list[np.ndarray] = []
    collinear = 0
    for j in range(centred.shape[1]):
        column = centred[:, j]
        if column.std() == 0:
            continue
        candidate = np.column_stack([np.ones(n), *kept, column])
        if np.linalg.matrix_rank(candidate) == candidate.shape[1]:
            kept.append(column)
        else:
            collinear += 1
    return kept, collinear


def compare_arms(
    outcomes: pd.DataFrame, *, alpha: float = 0.05, min_subgroup_users: int = 30
) -> pd.DataFrame:
    """One row overall and one per intervention type and failure label: rates of the users
    whose follow-up is over, the plain and the adjusted difference, each with its interval.
    `outcomes` comes from `final_outcomes` (with holdout, intervention_type, failure_label and
    activation_probability at assignment)."""
    if outcomes.empty:
        return pd.DataFrame(columns=EFFECTIVENESS_COLUMNS)
    final = outcomes[outcomes.final.astype(bool)]
    pending = outcomes[~outcomes.final.astype(bool)]
    rows = []
    groupings: list[tuple[str, str | None]] = [
        ("overall", None),
        ("intervention_type", "intervention_type"),
        ("failure_label", "failure_label"),
    ]
    for segment_type, column in groupings:
        keys = _segments(outcomes, column)
        for segment in sorted(keys.unique()):
            part = final[keys.loc[final.index] == segment]
            waiting = int((keys.loc[pending.index] == segment).sum())
            # The interval's normal approximation needs some users in each arm even overall:
            # with a handful of holdout users its variance estimate is itself too noisy.
            minimum = MIN_OVERALL_USERS if column is None else min_subgroup_users
            rows.append(
                {
                    "segment_type": segment_type,
                    "segment": segment,
                    "pending_users": waiting,
                    **_arms(part, alpha, minimum, adjust_for_type=column is None),
                }
            )
    table = pd.DataFrame(rows, columns=EFFECTIVENESS_COLUMNS)
    subgroup = (table.segment_type != "overall") & table.adjusted_p_value.notna()
    table["q_value"] = table.adjusted_p_value.where(table.segment_type == "overall")
    if subgroup.any():
        table.loc[subgroup, "q_value"] = multipletests(
            table.loc[subgroup, "adjusted_p_value"].astype(float), method="fdr_bh"
        )[1]
    return table


def _segments(frame: pd.DataFrame, column: str | None) -> pd.Series:
    if column is None:
        return pd.Series("all", index=frame.index)
    return frame[column].fillna("none").astype(str)


def _arms(
    part: pd.DataFrame, alpha: float, minimum: int, *, adjust_for_type: bool
) -> dict[str, object]:
    activated = part.activated.to_numpy(dtype=float)
    holdout = part.holdout.astype(bool).to_numpy()
    n_t, n_h = int((~holdout).sum()), int(holdout.sum())
    a_t, a_h = int(activated[~holdout].sum()), int(activated[holdout].sum())
    result: dict[str, object] = {
        "treated_users": n_t,
        "treated_activated": a_t,
        "treated_rate": a_t / n_t if n_t else None,
        "holdout_users": n_h,
        "holdout_activated": a_h,
        "holdout_rate": a_h / n_h if n_h else None,
    }
    if min(n_t, n_h) < minimum:
        result["note"] = (
            "no user's follow-up is over yet"
            if n_t + n_h == 0
            else f"{n_t} treated and {n_h} holdout users with a final outcome: each arm needs "
            f"{minimum} (interventions.min_subgroup_users for subgroups)"
        )
        return result
    too_alike = outcomes_too_alike(activated, holdout)
    if too_alike:
        result["note"] = too_alike
        return result
    plain = anytime_valid_effect(activated, ~holdout, None, alpha)
    adjusted = anytime_valid_effect(activated, ~holdout, _covariates(part, adjust_for_type), alpha)
    if isinstance(plain, str):
        result["note"] = plain
        return result
    result.update(
        difference=plain.difference,
        ci_low=plain.ci_low,
        ci_high=plain.ci_high,
        p_value=plain.p_value,
    )
    if isinstance(adjusted, str):
        # The plain difference stands; only the adjustment is impossible.
        result["note"] = f"no adjusted difference: {adjusted}"
        return result
    if adjusted.dropped:
        result["note"] = (
            f"CUPAC left out {adjusted.dropped} covariate(s) that added nothing to the others "
            "(a duplicate or a combination of them)"
        )
    result.update(
        adjusted_difference=adjusted.difference,
        adjusted_ci_low=adjusted.ci_low,
        adjusted_ci_high=adjusted.ci_high,
        adjusted_p_value=adjusted.p_value,
        variance_reduction=1 - (adjusted.std_error / plain.std_error) ** 2,
    )
    return result


def outcomes_too_alike(activated: np.ndarray, holdout: np.ndarray) -> str | None:
    """Why the arms' outcomes cannot carry an interval yet (`MIN_OUTCOMES_PER_ARM`), or None."""
    short = []
    for name, arm in (("treated", ~holdout), ("holdout", holdout)):
        yes = int(activated[arm].sum())
        no = int(arm.sum()) - yes
        if min(yes, no) < MIN_OUTCOMES_PER_ARM:
            short.append(f"{name} {yes} activated, {no} not")
    if not short:
        return None
    if np.ptp(activated) == 0:
        return "every user had the same outcome: there is no spread to estimate an interval from"
    return (
        f"too few of each outcome for an interval ({'; '.join(short)}): each arm needs "
        f"{MIN_OUTCOMES_PER_ARM} activated and {MIN_OUTCOMES_PER_ARM} not activated final users"
    )


def _covariates(part: pd.DataFrame, with_type: bool) -> np.ndarray:
    """The activation probability at assignment (a missing one: the mean, and a flag), and,
    for the overall row, the intervention type: what the outcome is adjusted for."""
    columns = []
    if "activation_probability" in part:
        probability = pd.to_numeric(part.activation_probability, errors="coerce")
        missing = probability.isna()
        columns.append(probability.fillna(probability.mean() if (~missing).any() else 0.0))
        columns.append(missing.astype(float))
    if with_type:
        columns += [
            (part.intervention_type == kind).astype(float)
            for kind in sorted(part.intervention_type.dropna().unique())[1:]
        ]
    if not columns:
        return np.empty((len(part), 0))
    return np.column_stack([np.asarray(c, dtype=float) for c in columns])


def sample_ratio_p_value(assignments: pd.DataFrame, holdout_fraction: float) -> float:
    """Two-sided binomial test of the holdout share of every assigned user: a small value is a
    sample-ratio mismatch (the assignment is not what the experiment says)."""
    total = len(assignments)
    if not total or holdout_fraction <= 0:
        return 1.0
    held = int(assignments.holdout.astype(bool).sum())
    return float(binomtest(held, total, holdout_fraction).pvalue)


def measured_uplift(effectiveness: pd.DataFrame, alpha: float = 0.05) -> dict[str, float]:
    """Uplift per intervention type for priorities: the adjusted, final read-out, only where
    its anytime-valid interval excludes zero and it survives the subgroup correction."""
    if effectiveness.empty:
        return {}
    rows = effectiveness[
        (effectiveness.segment_type == "intervention_type")
        & (effectiveness.adjusted_ci_low > 0)
        & (effectiveness.q_value < alpha)
    ]
    return {
        str(segment): float(np.clip(difference, 0, 1))
        for segment, difference in zip(rows.segment, rows.adjusted_difference, strict=True)
    }

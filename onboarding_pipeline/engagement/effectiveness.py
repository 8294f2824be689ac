"""Does intervening help? Treated vs holdout activation, from the randomized assignment.

Each user counts once, in the arm of their first queue entry in the experiment (intention to
treat: a treated user whose message failed still counts as treated), and only once their
outcome is known (activated, or the window closed without it). The difference of rates has a
Newcombe 95% interval and a two-sided p-value (statsmodels), overall and by intervention type
and failure label.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

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
]


def first_assignments(ledger: pd.DataFrame) -> pd.DataFrame:
    """The first ledger row of each user (their arm), with the latest known outcome."""
    if ledger.empty:
        return ledger
    ordered = ledger.sort_values(["queued_on", "queued_at"], kind="stable")
    first = ordered.groupby("user_id", as_index=False).first()
    outcome = ordered.dropna(subset=["outcome"]).groupby("user_id").outcome.last()
    first["outcome"] = first.user_id.map(outcome)
    return first


def compare_arms(assignments: pd.DataFrame) -> pd.DataFrame:
    """`assignments`: one row per user with holdout, outcome (activated | not_activated |
    None), intervention_type, failure_label."""
    known = assignments[assignments.outcome.notna()] if len(assignments) else assignments
    rows = []
    groupings = [("overall", None), ("intervention_type", "intervention_type")]
    groupings.append(("failure_label", "failure_label"))
    for segment_type, column in groupings:
        if known.empty:
            break
        keys = known[column].fillna("none") if column else pd.Series("all", index=known.index)
        for segment, part in known.groupby(keys):
            rows.append({"segment_type": segment_type, "segment": segment, **_arms(part)})
    return pd.DataFrame(rows, columns=EFFECTIVENESS_COLUMNS)


def _arms(part: pd.DataFrame) -> dict[str, float | int | None]:
    activated = part.outcome == "activated"
    holdout = part.holdout.astype(bool)
    n_t, n_h = int((~holdout).sum()), int(holdout.sum())
    a_t, a_h = int((activated & ~holdout).sum()), int((activated & holdout).sum())
    result: dict[str, float | int | None] = {
        "treated_users": n_t,
        "treated_activated": a_t,
        "treated_rate": a_t / n_t if n_t else None,
        "holdout_users": n_h,
        "holdout_activated": a_h,
        "holdout_rate": a_h / n_h if n_h else None,
        "difference": None,
        "ci_low": None,
        "ci_high": None,
        "p_value": None,
    }
    if n_t and n_h:
        result["difference"] = a_t / n_t - a_h / n_h
        # statsmodels also reports ratios, which divide by zero when an arm has no successes.
        with np.errstate(divide="ignore", invalid="ignore"):
            low, high = confint_proportions_2indep(a_t, n_t, a_h, n_h, method="newcomb")
            result["ci_low"], result["ci_high"] = float(low), float(high)
            if 0 < a_t + a_h < n_t + n_h:
                test = test_proportions_2indep(a_t, n_t, a_h, n_h, method="score")
                result["p_value"] = float(test.pvalue)
            else:
                result["p_value"] = 1.0
    return result


def measured_uplift(effectiveness: pd.DataFrame) -> dict[str, float]:
    """Uplift per intervention type where the interval excludes zero (for priorities)."""
    if effectiveness.empty:
        return {}
    rows = effectiveness[
        (effectiveness.segment_type == "intervention_type") & (effectiveness.ci_low > 0)
    ]
    return {
        str(segment): float(np.clip(difference, 0, 1))
        for segment, difference in zip(rows.segment, rows.difference, strict=True)
    }

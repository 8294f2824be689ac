"""Which early events go with activation, and which of them still matter once the others,
engagement and segment are held fixed.

Naive association (lift, odds ratio with its interval, Fisher's exact test, Benjamini-Hochberg
q-values) is what PostHog-style correlation reports show. The adjusted effect comes from one
multivariable logistic regression per population, so an event that only rides along with
engaged users (vanity) is told apart from one that moves activation (driver).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.stats import chi2_contingency, fisher_exact
from statsmodels.stats.contingency_tables import Table2x2
from statsmodels.stats.multitest import multipletests

from onboarding_pipeline.config.product import CriticalPathRules
from onboarding_pipeline.warehouse.tables import CRITICAL_PATH

SEGMENT_TYPES = ("role", "plan", "company_size")
# Every segment attribute is held fixed in the adjusted model: leaving one out lets events
# that merely differ by segment pose as drivers.
ADJUST_FOR = ("role", "plan", "company_size", "use_case", "tech_savvy")
MIN_CELL = 5  # each of did/didn't x activated/not needs this many users for a stable estimate
# The output contract lives with the table definition.
COLUMNS = list(CRITICAL_PATH.schema.names)


def critical_path(
    features: pd.DataFrame,
    feature_events: list[str],
    daily_counts: pd.DataFrame,
    rules: CriticalPathRules,
) -> pd.DataFrame:
    """Judge every early event overall and within each segment of `SEGMENT_TYPES`.

    `features` holds one row per user with a known outcome (`label` 0/1), `n_<event>` and
    `hours_to_<event>` columns, `sessions` and the segment columns. `daily_counts` is
    `user_id, event_name, day, n`: how often each user did each event on day 0, 1, ... of
    the horizon (for the "at least n times within d days" thresholds).
    """
    known = features[features.label.notna()].reset_index(drop=True)
    if not feature_events or known.empty:
        return pd.DataFrame(columns=COLUMNS)
    # users x events x days, aligned with `known` once, then sliced per population.
    cumulative = _cumulative_daily_counts(daily_counts, known.user_id, feature_events)
    frames = [_judge(known, feature_events, cumulative, rules, "overall", "all")]
    for segment_type in SEGMENT_TYPES:
        for segment, members in known.groupby(segment_type, dropna=True):
            if len(members) >= 10 * rules.min_users:
                frames.append(
                    _judge(
                        members,
                        feature_events,
                        cumulative[members.index.to_numpy()],
                        rules,
                        segment_type,
                        str(segment),
                    )
                )
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def _judge(
    users: pd.DataFrame,
    events: list[str],
    cumulative: np.ndarray,
    rules: CriticalPathRules,
    segment_type: str,
    segment: str,
) -> pd.DataFrame:
    activated = users.label.to_numpy() == 1
    rows = []
    for position, event in enumerate(events):
        did = users[f"n_{event}"].to_numpy() > 0
        rows.append(_association(event, did, activated, rules))
        rows[-1].update(_threshold(cumulative[:, position, :], activated, rules))
        hours = users.loc[did & activated, f"hours_to_{event}"]
        rows[-1]["median_hours_to_event_activators"] = (
            float(hours.median()) if len(hours) else np.nan
        )
    table = pd.DataFrame(rows)
    table.insert(0, "segment", segment)
    table.insert(0, "segment_type", segment_type)
    tested = table.support_ok.to_numpy()
    table["q_value"] = _bh(table.p_value.to_numpy(), tested)

    exclude = segment_type if segment_type != "overall" else None
    adjusted = _adjusted_effects(users, table.event_name[tested].tolist(), activated, exclude)
    table = table.merge(adjusted, on="event_name", how="left")
    table["adjusted_q_value"] = _bh(table.adjusted_p_value.to_numpy(), tested)
    table["classification"] = [_classify(row, rules) for row in table.itertuples()]
    return table


def _association(
    event: str, did: np.ndarray, activated: np.ndarray, rules: CriticalPathRules
) -> dict[str, Any]:
    a = int((did & activated).sum())
    b = int((did & ~activated).sum())
    c = int((~did & activated).sum())
    d = int((~did & ~activated).sum())
    with_event, without_event = a + b, c + d
    rate_with = a / with_event if with_event else np.nan
    rate_without = c / without_event if without_event else np.nan
    notes = []
    if with_event < rules.min_users or without_event < rules.min_users:
        notes.append(f"fewer than {rules.min_users} users with or without the event")
    if min(a, b, c, d) < MIN_CELL:
        notes.append(f"a did/didn't x activated/not cell has fewer than {MIN_CELL} users")
    table = Table2x2(np.array([[a, b], [c, d]]), shift_zeros=True)
    ci_low, ci_high = table.oddsratio_confint(alpha=rules.alpha)
    return {
        "event_name": event,
        "users_with_event": with_event,
        "users_without_event": without_event,
        "activation_rate_with": rate_with,
        "activation_rate_without": rate_without,
        "lift": rate_with / rate_without if rate_without else np.nan,
        "odds_ratio": float(table.oddsratio),
        "ci_low": float(ci_low),
        "ci_high": float(ci_high),
        "p_value": _p_value(a, b, c, d),
        "support_ok": not notes,
        "note": "; ".join(notes),
    }


def _p_value(a: int, b: int, c: int, d: int) -> float:
    """Fisher's exact test when an expected count is small, else Pearson's chi-square
    (equivalent there, and Fisher's exact test gets slow on tables of 100,000 users)."""
    observed = np.array([[a, b], [c, d]])
    total = observed.sum()
    if total == 0 or observed.sum(axis=0).min() == 0 or observed.sum(axis=1).min() == 0:
        return float("nan")
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total
    if expected.min() < 5:
        return float(fisher_exact(observed)[1])
    return float(chi2_contingency(observed, correction=False)[1])


def _adjusted_effects(
    users: pd.DataFrame, events: list[str], activated: np.ndarray, exclude_segment: str | None
) -> pd.DataFrame:
    """Log-odds effect of each event with all other events, sessions and segment held fixed."""
    empty = pd.DataFrame(
        columns=[
            "event_name",
            "adjusted_effect",
            "adjusted_ci_low",
            "adjusted_ci_high",
            "adjusted_p_value",
        ]
    )
    if not events:
        return empty
    design = pd.DataFrame(
        {f"did::{e}": (users[f"n_{e}"].to_numpy() > 0).astype(float) for e in events},
        index=users.index,
    )
    design["log_sessions"] = np.log1p(users.sessions.to_numpy(dtype=float))
    for segment in ADJUST_FOR:
        if segment != exclude_segment and segment in users.columns:
            dummies = pd.get_dummies(users[segment], prefix=segment, drop_first=True, dtype=float)
            design = design.join(dummies)
    design = design.loc[:, design.std() > 0]
    design = sm.add_constant(design, has_constant="add")
    y = activated.astype(float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.Logit(y, design).fit(disp=0, maxiter=200)
        params, intervals, pvalues = fit.params, fit.conf_int(), fit.pvalues
    except (np.linalg.LinAlgError, ValueError, sm.tools.sm_exceptions.PerfectSeparationError):
        return empty
    rows = []
    for event in events:
        key = f"did::{event}"
        if key not in params.index:
            continue
        rows.append(
            {
                "event_name": event,
                "adjusted_effect": float(params[key]),
                "adjusted_ci_low": float(intervals.loc[key, 0]),
                "adjusted_ci_high": float(intervals.loc[key, 1]),
                "adjusted_p_value": float(pvalues[key]),
            }
        )
    return pd.DataFrame(rows) if rows else empty


def _threshold(
    counts: np.ndarray, activated: np.ndarray, rules: CriticalPathRules
) -> dict[str, Any]:
    """The "at least n times within d days" rule with the best F1 for activation.

    `counts[u, d]` is how often user u did the event by the end of day d of the horizon.
    """
    best: dict[str, Any] = {
        "best_threshold_n": np.nan,
        "best_threshold_days": np.nan,
        "threshold_precision": np.nan,
        "threshold_recall": np.nan,
    }
    positives = activated.sum()
    best_f1 = -1.0
    for day_index in range(counts.shape[1]):
        for times in (1, 2, 3, 5):
            chosen = counts[:, day_index] >= times
            if chosen.sum() < rules.min_users or positives == 0:
                continue
            precision = float((chosen & activated).sum() / chosen.sum())
            recall = float((chosen & activated).sum() / positives)
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            if f1 > best_f1:
                best_f1 = f1
                best = {
                    "best_threshold_n": times,
                    "best_threshold_days": day_index + 1,
                    "threshold_precision": precision,
                    "threshold_recall": recall,
                }
    return best


def _cumulative_daily_counts(
    daily_counts: pd.DataFrame, user_ids: pd.Series, events: list[str]
) -> np.ndarray:
    """`[user, event, day]`: times done by the end of that day, users in `user_ids` order."""
    days = max(int(daily_counts.day.max()) + 1, 1) if len(daily_counts) else 1
    cube = np.zeros((len(user_ids), len(events), days), dtype=np.int32)
    if daily_counts.empty:
        return cube
    user_position = pd.Index(user_ids).get_indexer(pd.Index(daily_counts.user_id))
    event_position = pd.Index(events).get_indexer(pd.Index(daily_counts.event_name))
    keep = (user_position >= 0) & (event_position >= 0) & (daily_counts.day.to_numpy() >= 0)
    np.add.at(
        cube,
        (user_position[keep], event_position[keep], daily_counts.day.to_numpy()[keep]),
        daily_counts.n.to_numpy()[keep],
    )
    return np.cumsum(cube, axis=2)


def _bh(p_values: np.ndarray, tested: np.ndarray) -> np.ndarray:
    q = np.full(len(p_values), np.nan)
    mask = tested & ~np.isnan(p_values)
    if mask.any():
        q[mask] = multipletests(p_values[mask], method="fdr_bh")[1]
    return q


def _classify(row: Any, rules: CriticalPathRules) -> str:
    if not row.support_ok:
        return "neutral"
    significant = (
        row.adjusted_q_value < rules.alpha
        if row.adjusted_q_value == row.adjusted_q_value
        else False
    )
    if significant and row.adjusted_effect > 0:
        return "driver"
    if significant and row.adjusted_effect < 0:
        return "blocker"
    if row.lift >= rules.vanity_min_lift and row.q_value < rules.alpha:
        return "vanity"
    return "neutral"

"""The activation model: one calibrated gradient-boosting model over landmark ages.

A user still onboarding at age t who has not activated is scored with
P(activate before the window closes | not activated by t, behaviour up to t). The model is a
stacked landmark model (van Houwelingen): every closed-window user contributes one row per
scoring age at which they had not activated yet, with their behaviour up to that age and the
age itself as an input. One model thus answers for every age, and a user at day 10 is compared
with users who were also still waiting at day 10, not with everyone at 72 h.

Trained only on users whose activation window has closed; the newest closed cohorts are held
out for validation (time split), so the reported quality is what scoring tomorrow's signups
will see. The headline ROC AUC is on the landmark population (validation users not activated by
`observation_hours`, read at that age). The model that scores is the booster recalibrated on
the validation cohort (it follows a drifting activation rate); its calibration is checked per
age band on cross-fitted probabilities (each half of the validation users recalibrated on the
other half), so what is judged is what scores, out of sample.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV, calibration_curve
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from statsmodels.stats.proportion import proportion_confint
from threadpoolctl import threadpool_limits

from onboarding_pipeline.activation.features import SEGMENT_COLUMNS
from onboarding_pipeline.activation.landmarks import (
    Buckets,
    expand_rows,
    left_by,
)
from onboarding_pipeline.config.product import ModelRules

# Training reads at most this many users (x their ages), validation this many: enough for a
# stable model, and bounded time and memory whatever the export's size.
MAX_TRAIN_USERS = 12_000
MAX_VALIDATION_USERS = 10_000
# Share of training users held out to stop boosting.
EARLY_STOPPING_FRACTION = 0.15
# A column needs this many training rows with a value: the booster bins on the rows it keeps
# after holding out EARLY_STOPPING_FRACTION, and a column with no value left there fails the
# fit (scikit-learn 1.9: "window shape cannot be larger than input array shape"). With 20
# rows, all of them held out has a chance of 0.15^20.
MIN_PRESENT_ROWS = 20


class ModelRefused(ValueError):
    """No model can be trained yet; the message says what would unlock it."""


@dataclass
class ActivationModel:
    """A fitted, calibrated model with everything needed to score and to judge it."""

    version: str
    estimator: Any
    feature_columns: list[str]
    categories: dict[str, list[str]]
    metrics: dict[str, Any] = field(default_factory=dict)
    # Validation users at the main landmark: probability, label, user_id (+ their features,
    # so a later version can be compared on the same rows).
    validation: pd.DataFrame = field(default_factory=pd.DataFrame)
    validation_features: pd.DataFrame = field(default_factory=pd.DataFrame)
    dropped_columns: dict[str, str] = field(default_factory=dict)

    def matrix(self, features: pd.DataFrame) -> pd.DataFrame:
        return model_matrix(features, self.feature_columns, self.categories)

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        if features.empty:
            return np.zeros(0)
        return np.asarray(self.estimator.predict_proba(self.matrix(features))[:, 1])


def model_matrix(
    features: pd.DataFrame, columns: list[str], categories: dict[str, list[str]]
) -> pd.DataFrame:
    """Numbers as floats; segments as stable integer codes (unknown or missing -> NaN).
    A column the frame lacks (an event no longer seen) is missing for everyone."""
    matrix = pd.DataFrame(index=features.index)
    for column in columns:
        if column not in features.columns:
            matrix[column] = np.nan
        elif column in categories:
            codes = pd.Categorical(features[column], categories=categories[column]).codes
            matrix[column] = np.where(codes < 0, np.nan, codes).astype(float)
        else:
            matrix[column] = pd.to_numeric(features[column], errors="coerce").astype(float)
    return matrix


class DecisionValues(ClassifierMixin, BaseEstimator):
    """A stand-in classifier whose decision value is its input's first column.

    Platt scaling (`CalibratedClassifierCV`) is fitted on these once the booster's decision
    values are computed: the same fit as calibrating the frozen booster itself, without the
    booster predicting the same rows again for every fold and half.
    """

    def fit(self, x: Any, y: np.ndarray) -> DecisionValues:
        self.classes_ = np.unique(y)
        return self

    def decision_function(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=float)[:, 0]

    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(self.classes_[(self.decision_function(x) > 0).astype(int)])


def platt_scaling(decision: np.ndarray, y: np.ndarray) -> CalibratedClassifierCV:
    """Platt scaling fitted on decision values (a column per row, as `DecisionValues` reads)."""
    frozen = FrozenEstimator(DecisionValues().fit(None, y))
    return CalibratedClassifierCV(frozen, method="sigmoid").fit(decision.reshape(-1, 1), y)


@dataclass
class Recalibrated:
    """The booster followed by its Platt scaling: what scores."""

    booster: HistGradientBoostingClassifier
    scaling: CalibratedClassifierCV

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        decision = self.booster.decision_function(x)
        return np.asarray(self.scaling.predict_proba(decision.reshape(-1, 1)))


def time_split(closed: pd.DataFrame, validation_fraction: float) -> tuple[pd.Index, pd.Index]:
    """Older signups train, the newest `validation_fraction` validate (no shuffling)."""
    ordered = closed[["signup_at", "user_id"]].sort_values(["signup_at", "user_id"])  # keys only
    cut = round(len(ordered) * (1 - validation_fraction))
    return ordered.index[:cut], ordered.index[cut:]


def landmark_frame(
    outcomes: pd.DataFrame, buckets: Buckets, positions: np.ndarray, ages: np.ndarray
) -> pd.DataFrame:
    """Rows (user position, age) -> user_id, age_hours, label, segments and behaviour so far."""
    behaviour = buckets.at(positions, ages)
    picked = outcomes.iloc[positions]
    frame = pd.DataFrame(
        {
            "user_id": picked.user_id.to_numpy(),
            "age_hours": ages,
            "label": picked.label.to_numpy(dtype=float),
        }
    )
    for column in SEGMENT_COLUMNS:
        if column in picked.columns:
            frame[column] = picked[column].to_numpy()
    return pd.concat([frame, behaviour.reset_index(drop=True)], axis=1)


def usable_columns(train: pd.DataFrame, candidates: list[str]) -> tuple[list[str], dict[str, str]]:
    """Columns with information in the training rows; the others with the reason."""
    keep, dropped = [], {}
    for column in candidates:
        values = train[column]
        present = int(values.notna().sum())
        if not present:
            dropped[column] = "missing for every training user (e.g. a newly tracked event)"
        elif present < MIN_PRESENT_ROWS:
            dropped[column] = (
                f"a value in only {present} training rows (at least {MIN_PRESENT_ROWS} needed)"
            )
        elif values.nunique(dropna=True) < 2 and not values.isna().any():
            dropped[column] = "the same value for every training user"
        else:
            keep.append(column)
    return keep, dropped


def refusal(closed_users: int, rules: ModelRules) -> str | None:
    if closed_users < rules.min_training_users:
        return (
            f"need {rules.min_training_users} users with a closed activation window, have "
            f"{closed_users}: lower `model.min_training_users` or wait for more signups"
        )
    return None


def training_users(
    outcomes: pd.DataFrame, rules: ModelRules, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in `outcomes`) of the training and validation users: closed windows, split
    by signup time, each capped (a seeded sample beyond the cap)."""
    outcomes = outcomes.reset_index(drop=True)
    closed_mask = outcomes.window_closed.to_numpy(dtype=bool) & outcomes.label.notna().to_numpy()
    closed = outcomes[closed_mask]
    reason = refusal(len(closed), rules)
    if reason:
        raise ModelRefused(reason)
    train_index, valid_index = time_split(closed, rules.validation_fraction)
    rng = np.random.default_rng(seed)
    return (
        _cap(np.asarray(train_index), MAX_TRAIN_USERS, rng),
        _cap(np.asarray(valid_index), MAX_VALIDATION_USERS, rng),
    )


def in_flight(outcomes: pd.DataFrame, now: pd.Timestamp) -> tuple[np.ndarray, np.ndarray]:
    """(positions, ages in hours) of the users still onboarding: window open, not activated,
    not gone (no terminal event)."""
    outcomes = outcomes.reset_index(drop=True)
    waiting = (
        outcomes.label.isna().to_numpy()
        & ~outcomes.activated.fillna(False).to_numpy(dtype=bool)
        & ~left_by(outcomes, np.inf)
    )
    positions = np.flatnonzero(waiting)
    ages = (now - outcomes.signup_at.iloc[positions]).dt.total_seconds().to_numpy() / 3600
    return positions, np.clip(ages, 0, None)


# One thread: results do not depend on the machine's core count (OpenMP sums in another
# order give another model), and boosting does not slow down tenfold when other processes
# share the cores.
@threadpool_limits.wrap(limits=1)
def train_activation_model(
    outcomes: pd.DataFrame,
    buckets: Buckets,
    rules: ModelRules,
    *,
    ages: list[float],
    main_landmark: float,
    age_bands: list[float],
    seed: int = 0,
) -> ActivationModel:
    """Fit on closed windows at every scoring age, validate on the newest closed cohorts.

    `outcomes` is one row per user (as in `user_features`), aligned with `buckets.user_ids`.
    Raises `ModelRefused` (with what would unlock it) when no honest model can be fitted.
    """
    outcomes = outcomes.reset_index(drop=True)
    train_positions, valid_positions = training_users(outcomes, rules, seed)
    eligible = np.zeros(len(outcomes), dtype=bool)
    eligible[train_positions] = True
    rows, row_ages = expand_rows(outcomes, ages, eligible=eligible)
    train = landmark_frame(outcomes, buckets, rows, row_ages)
    eligible[:] = False
    eligible[valid_positions] = True
    rows, row_ages = expand_rows(outcomes, ages, eligible=eligible)
    valid = landmark_frame(outcomes, buckets, rows, row_ages)
    if len(train) == 0 or len(valid) == 0:
        # Waiting would not help: more users of the same product activate just as early.
        raise ModelRefused(
            "no closed-window user was still waiting at any scoring age (from "
            f"{min(ages):g} h): everyone activated (or left) before it, so there is no one "
            "to learn from and no one a score would help"
        )
    if train.label.nunique() < 2 or valid.label.nunique() < 2:
        raise ModelRefused(
            "training and validation cohorts need both activated and other users: "
            f"{int(train.label.sum())} of {len(train)} training rows and "
            f"{int(valid.label.sum())} of {len(valid)} validation rows activated; "
            "wait for more closed windows"
        )

    candidates = [c for c in train.columns if c not in ("user_id", "label")]
    columns, dropped = usable_columns(train, candidates)
    categories = {
        c: sorted(train[c].dropna().astype(str).unique()) for c in SEGMENT_COLUMNS if c in columns
    }
    x_fit = model_matrix(train, columns, categories)
    y_fit = train.label.astype(int).to_numpy()
    # Early stopping on held-out *users*: a user's rows at other ages are near copies, so a
    # split by row would let the booster stop late, on rows it has all but seen.
    stop = _held_out_users(train.user_id, EARLY_STOPPING_FRACTION, seed)
    if len(set(y_fit[stop])) < 2 or len(set(y_fit[~stop])) < 2:
        stop = np.zeros(len(stop), dtype=bool)  # (the isin mask is read-only)
    booster = HistGradientBoostingClassifier(
        # Small, well-regularised trees: behaviour acts on activation mostly additively (with
        # the age); deeper trees fitted noise and lost 0.01-0.02 of AUC on planted worlds.
        learning_rate=0.06,
        max_iter=300,
        max_leaf_nodes=7,
        min_samples_leaf=200,
        l2_regularization=5.0,
        categorical_features=[c in categories for c in columns],
        early_stopping=bool(stop.any()),
        n_iter_no_change=10,
        random_state=seed,
    )
    if stop.any():
        booster.fit(x_fit[~stop], y_fit[~stop], X_val=x_fit[stop], y_val=y_fit[stop])
    else:
        booster.fit(x_fit, y_fit)
    # Platt scaling: strictly monotone, so the served scores rank users exactly as the booster
    # does (isotonic steps would tie them) and the reported AUC is the served model's.
    method = "sigmoid"
    x_valid = model_matrix(valid, columns, categories)
    y_valid = valid.label.astype(int).to_numpy()
    at_landmark = valid.age_hours.to_numpy() == main_landmark
    if len(set(y_valid[at_landmark])) < 2:
        raise ModelRefused(
            f"the landmark population at {main_landmark:g} h has validation users of one "
            "outcome only; wait for more closed windows"
        )
    # The booster predicts the validation rows once; every probability below derives from
    # these decision values (its own probability is their logistic function).
    decision = booster.decision_function(x_valid)
    ranking = expit(decision)
    # The deployed model is the booster recalibrated on the validation cohort (the newest
    # closed signups), so a drifting activation rate is followed as closely as known
    # outcomes allow. Its calibration is judged cross-fitted: each half of the validation
    # users is scored by a recalibration fitted on the other half, so the judged
    # probabilities are out of sample for every step, and a model that ranks well under a
    # drifting base rate is not refused for a shift that recalibration removes.
    probabilities = cross_fitted(decision, y_valid, valid.user_id, seed)
    # Ranking quality is the booster's own (recalibration is monotone).
    metrics = quality_metrics(y_valid[at_landmark], ranking[at_landmark], seed)
    metrics["brier_before_recalibration"] = metrics["brier"]
    metrics.update(calibration_metrics(y_valid[at_landmark], probabilities[at_landmark]))
    bands = reliability_by_age(valid, probabilities, age_bands)
    version = model_version(
        x_fit, y_fit, x_valid, y_valid, {**booster.get_params(), "ages": list(ages)}
    )
    metrics.update(
        landmark_hours=main_landmark,
        train_users=len(train_positions),
        train_rows=len(train),
        validation_users=len(valid_positions),
        validation_rows=len(valid),
        landmark_population_validation=int(at_landmark.sum()),
        train_base_rate=float(train.label[train.age_hours == main_landmark].mean()),
        calibration=method,
        scoring_ages_hours=[float(a) for a in ages],
        train_signups=_span(outcomes.signup_at.iloc[train_positions]),
        validation_signups=_span(outcomes.signup_at.iloc[valid_positions]),
        reliability_by_age=bands.to_dict(orient="records"),
        age_bands_miscalibrated=[
            row["age_band"] for row in bands.to_dict(orient="records") if not row["within_ci"]
        ],
        dropped_columns=dropped,
        top_features=top_features(booster, x_valid[at_landmark], y_valid[at_landmark], seed),
    )
    estimator = Recalibrated(booster, platt_scaling(decision, y_valid))
    landmark_rows = valid[at_landmark]
    validation = pd.DataFrame(
        {
            "user_id": landmark_rows.user_id.to_numpy(),
            "activation_probability": probabilities[at_landmark],
            "label": y_valid[at_landmark].astype(float),
            "age_hours": main_landmark,
        }
    )
    return ActivationModel(
        version,
        estimator,
        columns,
        categories,
        metrics,
        validation,
        landmark_rows.reset_index(drop=True),
        dropped,
    )


def _held_out_users(users: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """Rows of a seeded `fraction` of the distinct users (all of their ages together)."""
    distinct = users.unique()
    rng = np.random.default_rng([seed, 1])
    picked = set(rng.choice(distinct, round(len(distinct) * fraction), replace=False))
    return users.isin(picked).to_numpy()


def cross_fitted(
    decision: np.ndarray,
    y: np.ndarray,
    users: pd.Series,
    seed: int,
) -> np.ndarray:
    """Recalibrated probabilities for rows with booster decision values `decision`, each half
    of the users by a Platt scaling fitted on the other half (a user's rows at several ages
    stay together)."""
    distinct = users.unique()
    halves = np.random.default_rng(seed).permutation(len(distinct)) % 2
    half_of = pd.Series(halves, index=distinct).reindex(users.to_numpy()).to_numpy()
    out = expit(decision)
    for half in (0, 1):
        fit, score = half_of != half, half_of == half
        if len(set(y[fit])) < 2 or not score.any():
            continue  # too few users to recalibrate: judged as fitted
        scaling = platt_scaling(decision[fit], y[fit])
        out[score] = scaling.predict_proba(decision[score].reshape(-1, 1))[:, 1]
    return np.asarray(out)


def reliability_by_age(
    rows: pd.DataFrame, probabilities: np.ndarray, edges: list[float]
) -> pd.DataFrame:
    """Expected (mean prediction) against observed activation per age band, with a Wilson
    interval whose size counts distinct users (a user's rows at several ages are not
    independent evidence). The interval is Bonferroni-corrected over the bands (95 % for the
    family), so a well-calibrated model is refused by chance in at most 5 % of trainings."""
    ages = rows.age_hours.to_numpy()
    bounds = [*edges, np.inf]
    alpha = 0.05 / max(len(edges), 1)
    out = []
    for low, high in itertools.pairwise(bounds):
        inside = (ages >= low) & (ages < high)
        if not inside.any():
            continue
        users = rows.user_id[inside].nunique()
        observed = float(rows.label[inside].mean())
        expected = float(probabilities[inside].mean())
        ci_low, ci_high = proportion_confint(
            round(observed * users), users, alpha=alpha, method="wilson"
        )
        out.append(
            {
                "age_band": f"{low:g}-{high:g} h" if np.isfinite(high) else f"{low:g} h+",
                "rows": int(inside.sum()),
                "users": int(users),
                "expected": round(expected, 4),
                "observed": round(observed, 4),
                "ci_low": round(float(ci_low), 4),
                "ci_high": round(float(ci_high), 4),
                "within_ci": bool(ci_low <= expected <= ci_high),
            }
        )
    return pd.DataFrame(
        out,
        columns=[
            "age_band",
            "rows",
            "users",
            "expected",
            "observed",
            "ci_low",
            "ci_high",
            "within_ci",
        ],
    )


def _cap(positions: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if len(positions) <= limit:
        return positions
    return np.sort(rng.choice(positions, limit, replace=False))


def quality_metrics(y: np.ndarray, probabilities: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """ROC AUC (with a bootstrap 95% interval), PR AUC, Brier score, calibration curve."""
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(200):
        pick = rng.integers(0, len(y), len(y))
        if 0 < y[pick].sum() < len(pick):
            aucs.append(rank_auc(y[pick], probabilities[pick]))
    if not aucs:  # every resample had one outcome only (a tiny validation cohort)
        aucs = [float(roc_auc_score(y, probabilities))]
    return {
        "roc_auc": float(roc_auc_score(y, probabilities)),
        "roc_auc_ci": [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))],
        "pr_auc": float(average_precision_score(y, probabilities)),
        "validation_base_rate": float(y.mean()),
        **calibration_metrics(y, probabilities),
    }


def rank_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half): what `roc_auc_score` gives,
    without its input checks, which dominate when it runs hundreds of times."""
    positive = np.asarray(y).astype(bool)
    n_positive = int(positive.sum())
    n_negative = len(positive) - n_positive
    ranks = rankdata(scores)
    return float(
        (ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)
    )


def calibration_metrics(y: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Brier score and the calibration curve (deciles of the prediction)."""
    observed, predicted = calibration_curve(y, probabilities, n_bins=10, strategy="quantile")
    return {
        "brier": float(brier_score_loss(y, probabilities)),
        "calibration_curve": {
            "predicted": [round(float(v), 4) for v in predicted],
            "observed": [round(float(v), 4) for v in observed],
        },
    }


def top_features(
    estimator: Any, x_valid: pd.DataFrame, y_valid: np.ndarray, seed: int, limit: int = 10
) -> list[dict[str, Any]]:
    """Permutation importance: the drop in ROC AUC when one feature's values are shuffled.

    Same method as `sklearn.inspection.permutation_importance`, but every shuffled copy is
    scored in one `predict_proba` call (per-call overhead otherwise dominates), only on the
    rows the shuffle changed, on at most 1,500 validation users: a ranking of features, not a
    precise estimate, is what it is for.
    """
    rng = np.random.default_rng(seed)
    sample = x_valid.sample(min(len(x_valid), 1500), random_state=seed)
    y_sample = pd.Series(y_valid, index=x_valid.index).loc[sample.index].to_numpy()
    if len(set(y_sample)) < 2:
        return []
    repeats = 3
    before = estimator.predict_proba(sample)[:, 1]
    baseline = rank_auc(y_sample, before)
    values = sample.to_numpy(dtype=float)
    moved_rows, copies = [], []
    for i in range(values.shape[1]):
        for _ in range(repeats):
            shuffled = rng.permutation(values[:, i])
            # A row whose value the shuffle left in place scores as before (most users share
            # a few counts): only the others are predicted.
            same = (shuffled == values[:, i]) | (np.isnan(shuffled) & np.isnan(values[:, i]))
            copy = values[~same]
            copy[:, i] = shuffled[~same]
            moved_rows.append(~same)
            copies.append(copy)
    changed = np.concatenate(copies)
    predicted = (
        estimator.predict_proba(pd.DataFrame(changed, columns=sample.columns))[:, 1]
        if len(changed)
        else np.zeros(0)
    )
    ends = np.cumsum([int(moved.sum()) for moved in moved_rows])
    drops_list = []
    for moved, chunk in zip(moved_rows, np.split(predicted, ends[:-1]), strict=True):
        scores = before.copy()
        scores[moved] = chunk
        drops_list.append(baseline - rank_auc(y_sample, scores))
    drops = np.array(drops_list).reshape(values.shape[1], repeats)
    order = np.argsort(drops.mean(axis=1))[::-1][:limit]
    return [
        {
            "feature": str(sample.columns[i]),
            "auc_drop": round(float(drops[i].mean()), 4),
            "std": round(float(drops[i].std()), 4),
        }
        for i in order
    ]


def model_version(
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_valid: pd.DataFrame | None = None,
    y_valid: np.ndarray | None = None,
    settings: dict[str, Any] | None = None,
) -> str:
    """Content-addressed: the same training data, recalibration (validation) data and
    settings give the same version; any change to one of them, another version."""
    digest = hashlib.sha256()
    for x, y in ((x_train, y_train), (x_valid, y_valid)):
        if x is None or y is None:
            continue
        digest.update(",".join(x.columns).encode())
        digest.update(pd.util.hash_pandas_object(x, index=False).to_numpy().tobytes())
        digest.update(np.asarray(y, dtype=np.int8).tobytes())
    if settings:
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return "am-" + digest.hexdigest()[:12]


def calibration_chart(metrics: dict[str, Any]) -> bytes:
    """PNG: the calibration curve at the main landmark, and expected against observed
    activation per age band (with the observed rate's 95% interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = metrics["calibration_curve"]
    bands = pd.DataFrame(metrics.get("reliability_by_age", []))
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 4.2), dpi=100)
    left.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    left.plot(curve["predicted"], curve["observed"], marker="o", label="model")
    left.set_xlabel("predicted activation probability")
    left.set_ylabel("observed activation rate")
    left.set_title(f"At {metrics.get('landmark_hours', 0):g} h (ROC AUC {metrics['roc_auc']:.3f})")
    left.legend(loc="upper left")
    if len(bands):
        x = np.arange(len(bands))
        below = (bands.observed - bands.ci_low).clip(lower=0)
        above = (bands.ci_high - bands.observed).clip(lower=0)
        right.errorbar(x, bands.observed, yerr=[below, above], fmt="o", label="observed (95% CI)")
        right.plot(x, bands.expected, marker="x", linestyle="none", color="C1", label="expected")
        right.set_xticks(x, bands.age_band, rotation=45, ha="right")
        right.legend(loc="upper right")
    right.set_ylabel("activation before the window closes")
    right.set_title("Calibration by age (not activated yet)")
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


class ModelStore:
    """Versions on disk (`<version>.joblib` + `.json`) and a pointer to the current one."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, model: ActivationModel) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{model.version}.joblib"
        joblib.dump(model, path)
        (self.root / f"{model.version}.json").write_text(json.dumps(model.metrics, indent=2))
        return path

    def promote(self, version: str) -> None:
        (self.root / "current.json").write_text(json.dumps({"version": version}))

    def record_status(self, status: dict[str, Any]) -> None:
        """The latest training attempt: accepted, refused (and why), or not possible yet."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "status.json").write_text(json.dumps(status, indent=2, default=str))

    def status(self) -> dict[str, Any]:
        path = self.root / "status.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def current_version(self) -> str | None:
        pointer = self.root / "current.json"
        return json.loads(pointer.read_text())["version"] if pointer.exists() else None

    def load(self, version: str) -> ActivationModel:
        model: ActivationModel = joblib.load(self.root / f"{version}.joblib")
        return model

    def load_current_or_none(self) -> ActivationModel | None:
        """The accepted model, or None (none accepted yet, or saved in a layout this version
        of the code cannot score with)."""
        version = self.current_version()
        if version is None:
            return None
        try:
            model = self.load(version)
        except (OSError, AttributeError, ModuleNotFoundError):
            return None
        return model if hasattr(model, "validation_features") else None

    def load_current(self) -> ActivationModel:
        version = self.current_version()
        if version is None:
            raise FileNotFoundError(
                f"{self.root}: no accepted activation model yet; materialize activation_model"
            )
        return self.load(version)


def judge(
    candidate: ActivationModel, previous: ActivationModel | None, rules: ModelRules
) -> tuple[bool, dict[str, Any]]:
    """Accept a model above the floor and distinguishable from chance (its AUC interval above
    0.5), calibrated in every age band, and not clearly worse than the previous version scored
    on the candidate's validation rows."""
    auc = candidate.metrics["roc_auc"]
    verdict: dict[str, Any] = {"roc_auc": round(auc, 4), "min_roc_auc": rules.min_roc_auc}
    reasons = []
    if auc < rules.min_roc_auc:
        reasons.append(f"ROC AUC {auc:.3f} is below model.min_roc_auc={rules.min_roc_auc}")
    low = candidate.metrics.get("roc_auc_ci", [np.nan])[0]
    if auc >= rules.min_roc_auc and low <= 0.5:
        users = candidate.metrics.get("landmark_population_validation", 0)
        positives = int(candidate.validation.label.sum()) if len(candidate.validation) else 0
        reasons.append(
            f"ROC AUC {auc:.3f} cannot be told from chance: its 95% interval reaches "
            f"{low:.3f} on {users} validation users ({positives} activated); wait for more "
            "closed windows (or raise `model.validation_fraction`)"
        )
    miscalibrated = candidate.metrics.get("age_bands_miscalibrated", [])
    if miscalibrated:
        reasons.append(
            "expected activation outside the observed 95% interval in age bands "
            + ", ".join(miscalibrated)
        )
    verdict["age_bands_miscalibrated"] = miscalibrated
    if previous is not None and previous.version != candidate.version:
        rows = candidate.validation_features
        try:
            previous_auc = float(roc_auc_score(rows.label.astype(int), previous.predict(rows)))
        except (AttributeError, KeyError, ValueError):  # an older layout of the model
            previous_auc = float(previous.metrics["roc_auc"])
        verdict["previous_version"] = previous.version
        verdict["previous_roc_auc"] = round(previous_auc, 4)
        verdict["max_auc_drop"] = rules.max_auc_drop
        if auc < previous_auc - rules.max_auc_drop:
            reasons.append(
                f"ROC AUC {auc:.3f} is more than model.max_auc_drop={rules.max_auc_drop} "
                f"below the current version's {previous_auc:.3f}"
            )
    verdict["reasons"] = reasons
    return not reasons, verdict


def _span(stamps: pd.Series) -> str:
    return f"{stamps.min():%Y-%m-%d}..{stamps.max():%Y-%m-%d}"

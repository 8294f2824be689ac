"""The activation model: calibrated gradient boosting on early behaviour, split by time.

Trained only on users whose activation window has closed; the newest closed cohorts are held
out for validation, so the reported quality is what scoring tomorrow's signups will see.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV, calibration_curve
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from onboarding_pipeline.activation.features import SEGMENT_COLUMNS
from onboarding_pipeline.config.product import ModelRules

NOT_FEATURES = (
    "user_id",
    "signup_at",
    "first_aha_at",
    "activated",
    "window_closed",
    "activation_at",
    "label",
    "horizon_complete",
)


@dataclass
class ActivationModel:
    """A fitted, calibrated model with everything needed to score and to judge it."""

    version: str
    estimator: Any
    feature_columns: list[str]
    categories: dict[str, list[str]]
    metrics: dict[str, Any] = field(default_factory=dict)
    validation: pd.DataFrame = field(default_factory=pd.DataFrame)

    def matrix(self, features: pd.DataFrame) -> pd.DataFrame:
        return model_matrix(features, self.feature_columns, self.categories)

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(self.matrix(features))[:, 1])


def model_matrix(
    features: pd.DataFrame, columns: list[str], categories: dict[str, list[str]]
) -> pd.DataFrame:
    """Numbers as floats; segments as stable integer codes (unknown or missing -> NaN)."""
    matrix = pd.DataFrame(index=features.index)
    for column in columns:
        if column in categories:
            codes = pd.Categorical(features[column], categories=categories[column]).codes
            matrix[column] = np.where(codes < 0, np.nan, codes).astype(float)
        else:
            matrix[column] = pd.to_numeric(features[column], errors="coerce").astype(float)
    return matrix


def time_split(closed: pd.DataFrame, validation_fraction: float) -> tuple[pd.Index, pd.Index]:
    """Older signups train, the newest `validation_fraction` validate (no shuffling)."""
    ordered = closed.sort_values(["signup_at", "user_id"])
    cut = round(len(ordered) * (1 - validation_fraction))
    return ordered.index[:cut], ordered.index[cut:]


def train_activation_model(
    features: pd.DataFrame, rules: ModelRules, seed: int = 0
) -> ActivationModel:
    """Fit on closed windows, validate on the newest closed cohorts, calibrate, measure."""
    closed = features[features.window_closed & features.label.notna()]
    if len(closed) < rules.min_training_users:
        raise ValueError(
            f"only {len(closed)} users have a closed activation window; the model needs "
            f"model.min_training_users={rules.min_training_users}"
        )
    train_index, valid_index = time_split(closed, rules.validation_fraction)
    columns = [c for c in features.columns if c not in NOT_FEATURES]
    categories = {
        c: sorted(closed.loc[train_index, c].dropna().astype(str).unique())
        for c in SEGMENT_COLUMNS
        if c in columns
    }
    x_train = model_matrix(closed.loc[train_index], columns, categories)
    y_train = closed.loc[train_index, "label"].astype(int).to_numpy()
    x_valid = model_matrix(closed.loc[valid_index], columns, categories)
    y_valid = closed.loc[valid_index, "label"].astype(int).to_numpy()
    if len(set(y_train)) < 2 or len(set(y_valid)) < 2:
        raise ValueError("training and validation cohorts need both activated and other users")

    booster = HistGradientBoostingClassifier(
        learning_rate=0.05,
        max_iter=300,
        max_leaf_nodes=15,
        min_samples_leaf=40,
        l2_regularization=1.0,
        categorical_features=[c in categories for c in columns],
        early_stopping=True,
        validation_fraction=0.15,
        random_state=seed,
    )
    # Isotonic needs plenty of data; with less, Platt scaling is the steadier choice.
    method = "isotonic" if len(train_index) >= 2000 else "sigmoid"
    estimator = CalibratedClassifierCV(booster, method=method, cv=3)
    estimator.fit(x_train, y_train)

    probabilities = estimator.predict_proba(x_valid)[:, 1]
    version = model_version(x_train, y_train)
    metrics = quality_metrics(y_valid, probabilities, seed)
    metrics.update(
        train_users=len(train_index),
        validation_users=len(valid_index),
        train_base_rate=float(y_train.mean()),
        calibration=method,
        train_signups=_span(closed.loc[train_index, "signup_at"]),
        validation_signups=_span(closed.loc[valid_index, "signup_at"]),
        top_features=top_features(estimator, x_valid, y_valid, seed),
    )
    validation = pd.DataFrame(
        {"activation_probability": probabilities, "label": y_valid.astype(float)},
        index=closed.loc[valid_index].index,
    )
    validation["user_id"] = closed.loc[valid_index, "user_id"].to_numpy()
    return ActivationModel(version, estimator, columns, categories, metrics, validation)


def quality_metrics(y: np.ndarray, probabilities: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """ROC AUC (with a bootstrap 95% interval), PR AUC, Brier score, calibration curve."""
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(200):
        pick = rng.integers(0, len(y), len(y))
        if 0 < y[pick].sum() < len(pick):
            aucs.append(roc_auc_score(y[pick], probabilities[pick]))
    observed, predicted = calibration_curve(y, probabilities, n_bins=10, strategy="quantile")
    return {
        "roc_auc": float(roc_auc_score(y, probabilities)),
        "roc_auc_ci": [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))],
        "pr_auc": float(average_precision_score(y, probabilities)),
        "brier": float(brier_score_loss(y, probabilities)),
        "validation_base_rate": float(y.mean()),
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
    scored in one `predict_proba` call (per-call overhead otherwise dominates), on at most
    1,500 validation users: a ranking of features, not a precise estimate, is what it is for.
    """
    rng = np.random.default_rng(seed)
    sample = x_valid.sample(min(len(x_valid), 1500), random_state=seed)
    y_sample = pd.Series(y_valid, index=x_valid.index).loc[sample.index].to_numpy()
    if len(set(y_sample)) < 2:
        return []
    repeats = 3
    baseline = roc_auc_score(y_sample, estimator.predict_proba(sample)[:, 1])
    copies = []
    for column in sample.columns:
        for _ in range(repeats):
            shuffled = sample.copy()
            shuffled[column] = rng.permutation(shuffled[column].to_numpy())
            copies.append(shuffled)
    scores = estimator.predict_proba(pd.concat(copies, ignore_index=True))[:, 1]
    drops = np.array(
        [
            baseline - roc_auc_score(y_sample, chunk)
            for chunk in np.split(scores, len(sample.columns) * repeats)
        ]
    ).reshape(len(sample.columns), repeats)
    order = np.argsort(drops.mean(axis=1))[::-1][:limit]
    return [
        {
            "feature": str(sample.columns[i]),
            "auc_drop": round(float(drops[i].mean()), 4),
            "std": round(float(drops[i].std()), 4),
        }
        for i in order
    ]


def model_version(x_train: pd.DataFrame, y_train: np.ndarray) -> str:
    """Content-addressed: the same training data and columns give the same version."""
    digest = hashlib.sha256()
    digest.update(",".join(x_train.columns).encode())
    digest.update(pd.util.hash_pandas_object(x_train, index=False).to_numpy().tobytes())
    digest.update(np.asarray(y_train, dtype=np.int8).tobytes())
    return "am-" + digest.hexdigest()[:12]


def calibration_chart(metrics: dict[str, Any]) -> bytes:
    """PNG of the calibration curve: predicted probability against observed activation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = metrics["calibration_curve"]
    figure, axis = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    axis.plot(curve["predicted"], curve["observed"], marker="o", label="model")
    axis.set_xlabel("predicted activation probability")
    axis.set_ylabel("observed activation rate")
    axis.set_title(f"Calibration (ROC AUC {metrics['roc_auc']:.3f})")
    axis.legend(loc="upper left")
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

    def current_version(self) -> str | None:
        pointer = self.root / "current.json"
        return json.loads(pointer.read_text())["version"] if pointer.exists() else None

    def load(self, version: str) -> ActivationModel:
        model: ActivationModel = joblib.load(self.root / f"{version}.joblib")
        return model

    def load_current(self) -> ActivationModel:
        version = self.current_version()
        if version is None:
            raise FileNotFoundError(
                f"{self.root}: no accepted activation model yet; materialize activation_model"
            )
        return self.load(version)


def judge(
    candidate: ActivationModel,
    previous: ActivationModel | None,
    features: pd.DataFrame,
    rules: ModelRules,
) -> tuple[bool, dict[str, Any]]:
    """Accept a model above the floor and not clearly worse than the previous version.

    The previous version is scored on the candidate's validation users (`features` holds
    them), so both are judged on the same, newest cohorts.
    """
    auc = candidate.metrics["roc_auc"]
    verdict: dict[str, Any] = {"roc_auc": round(auc, 4), "min_roc_auc": rules.min_roc_auc}
    passed = auc >= rules.min_roc_auc
    if previous is not None and previous.version != candidate.version:
        validation = features.loc[candidate.validation.index]
        try:
            previous_auc = float(
                roc_auc_score(validation.label.astype(int), previous.predict(validation))
            )
        except KeyError:  # the previous version used columns that no longer exist
            previous_auc = float(previous.metrics["roc_auc"])
        verdict["previous_version"] = previous.version
        verdict["previous_roc_auc"] = round(previous_auc, 4)
        verdict["max_auc_drop"] = rules.max_auc_drop
        passed = passed and auc >= previous_auc - rules.max_auc_drop
    return passed, verdict


def _span(stamps: pd.Series) -> str:
    return f"{stamps.min():%Y-%m-%d}..{stamps.max():%Y-%m-%d}"

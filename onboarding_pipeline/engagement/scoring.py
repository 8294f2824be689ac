"""Whether the activation model's probabilities are there, and if not, why.

Without an accepted model `activation_scores` still has a row per user still onboarding, with
no probability; health, stalls and the queue then run on rules (see queue.py), and the report
and the run summary say what would unlock the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd

from onboarding_pipeline.activation.model import ModelStore

NO_ACCEPTED_MODEL = "no activation model has been accepted yet"
ScoringMode = Literal["model", "rules", "nobody_onboarding"]


def scoring_mode(scores: pd.DataFrame) -> ScoringMode:
    """`scores`: the onboarding rows of `activation_scores` (activation_probability)."""
    if scores.empty:
        return "nobody_onboarding"
    return "model" if scores.activation_probability.notna().any() else "rules"


def model_unlock_reason(models_dir: Path) -> str:
    """Why no model is in use, from the latest training attempt the model store recorded
    (e.g. "need 200 closed windows, have 90: lower `model.min_training_users` or ...")."""
    store = ModelStore(models_dir)
    status = store.status()
    reason = status.get("reason")
    if store.current_version() is None and reason:
        return f"{NO_ACCEPTED_MODEL}: {reason}"
    if store.current_version() is None:
        return f"{NO_ACCEPTED_MODEL}: materialize activation_model"
    # A current model exists but could not be loaded (e.g. saved by another version).
    return f"the current model {store.current_version()} cannot be used: retrain activation_model"

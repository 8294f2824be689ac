"""Measurement: the activation model's validation AUC against the reachable ceiling.

    .venv/bin/python bench/model_ceiling.py --users 6000 20000 --seeds 21 22 23

For each (users, seed) a world is generated with the bundled generator (half of the
activations inside the 72 h horizon), ingested, sessionized and featurized once into
bench/results/ceiling-<users>-<seed>/ (reused on later runs); then the model is trained the
way the `activation_model` asset does (`training_users`, the hour buckets, then
`train_activation_model`, no Dagster), and the script prints:

- the model's ROC AUC on the landmark population (validation users not activated by 72 h)
  and the AUC of the true landmark probabilities (`true_p_at_72h`) on the same users, their
  gap and a paired bootstrap 95% interval of the gap (the two AUCs share the users, so the
  gap's noise is far smaller than either AUC's);
- per age band of the in-flight users (window open, not activated, not gone): the mean
  predicted probability, the mean true probability (`true_landmark_probability` at the
  user's age) and the share that the generator's plan makes activate within the window
  (observed eventually, from the truth file).

Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from onboarding_pipeline.activation.assets import OUTCOME_COLUMNS, load_features, user_buckets
from onboarding_pipeline.activation.features import build_features
from onboarding_pipeline.activation.landmarks import scoring_ages
from onboarding_pipeline.activation.model import (
    ActivationModel,
    in_flight,
    landmark_frame,
    rank_auc,
    train_activation_model,
    training_users,
)
from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.ingestion.load import ingest_events, ingest_users
from onboarding_pipeline.ingestion.sources import FileSource
from onboarding_pipeline.modeling.sessions import write_sessions
from onboarding_pipeline.sample_data import generate_sample
from onboarding_pipeline.sample_data.generator import (
    ACTIVATION_WINDOW_MS,
    HOUR,
    Z_ACT,
    true_landmark_probability,
)
from onboarding_pipeline.warehouse import WarehouseResource

RESULTS = Path(__file__).parent / "results"
WINDOW = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
# The planted-truth tests' configuration (onboarding_pipeline_tests/test_activation.py).
CONFIG = ProductConfig(
    aha_events=["dashboard_shared"],
    partitions_start_date="2026-01-01",
    landmark_hours=[24, 72, 168],
    funnel_steps=[
        "onboarding_started",
        "profile_completed",
        "workspace_created",
        "data_source_connected",
        "dashboard_created",
        "dashboard_shared",
    ],
)
IN_FLIGHT_BANDS = [0, 24, 72, 168, 336]


def world(users: int, seed: int) -> tuple[WarehouseResource, pd.Timestamp, pd.DataFrame]:
    """(warehouse with `user_features`, now, truth users indexed by user_id), built once."""
    directory = RESULTS / f"ceiling-{users}-{seed}"
    warehouse_file = directory / "warehouse.duckdb"
    done = directory / "now.txt"
    if not done.exists():
        directory.mkdir(parents=True, exist_ok=True)
        warehouse_file.unlink(missing_ok=True)
        generate_sample(directory, users=users, seed=seed, progress=False)
        warehouse = WarehouseResource(url=f"duckdb:///{warehouse_file}")
        source = FileSource(data_dir=str(directory))
        ingest_users(warehouse, source, CONFIG)
        ingest_events(warehouse, source, CONFIG, *WINDOW)
        write_sessions(warehouse, timedelta(minutes=30), *WINDOW)
        table, _, now = build_features(
            warehouse.table("raw_users"),
            warehouse.table("raw_events"),
            warehouse.table("sessions"),
            CONFIG,
            warehouse.connect(),
        )
        warehouse.replace_table("user_features", table)
        done.write_text(pd.Timestamp(now).isoformat())
    else:
        warehouse = WarehouseResource(url=f"duckdb:///{warehouse_file}")
    truth = pd.read_csv(directory / "truth" / "users.csv").set_index("user_id")
    return warehouse, pd.Timestamp(done.read_text()), truth


def paired_gap_interval(
    y: np.ndarray, model: np.ndarray, true: np.ndarray, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap 95% interval of AUC(model) - AUC(true) over the same resampled users."""
    rng = np.random.default_rng(seed)
    gaps = []
    for _ in range(400):
        pick = rng.integers(0, len(y), len(y))
        if 0 < y[pick].sum() < len(pick):
            gaps.append(rank_auc(y[pick], model[pick]) - rank_auc(y[pick], true[pick]))
    return float(np.percentile(gaps, 2.5)), float(np.percentile(gaps, 97.5))


def measure(users: int, seed: int) -> dict[str, object]:
    warehouse, now, truth = world(users, seed)
    features = load_features(warehouse, OUTCOME_COLUMNS).reset_index(drop=True)
    landmarks = CONFIG.landmarks()
    window_hours = CONFIG.activation_window_days * 24
    # As the `activation_model` asset does.
    train, valid = training_users(features, CONFIG.model)
    buckets = user_buckets(
        warehouse, CONFIG, features, np.concatenate([train, valid]), window_hours
    )
    began = time.perf_counter()
    model: ActivationModel = train_activation_model(
        features,
        buckets,
        CONFIG.model,
        ages=scoring_ages(landmarks, CONFIG.activation_window_days),
        main_landmark=float(CONFIG.observation_hours),
        age_bands=[0.0, *map(float, landmarks)],
    )
    seconds = time.perf_counter() - began
    validation = model.validation
    y = validation.label.to_numpy(dtype=int)
    true = truth.loc[validation.user_id, "true_p_at_72h"].to_numpy(dtype=float)
    predicted = validation.activation_probability.to_numpy(dtype=float)
    true_auc = rank_auc(y, true)
    # What behaviour up to 72 h can reach: the truth without the unobserved trait's direct
    # term (Z_ACT * z); everything else in p is the segment and the first-72-h plan.
    picked_truth = truth.loc[validation.user_id]
    p = picked_truth.true_activation_probability.to_numpy(dtype=float)
    z = picked_truth.latent_engagement.to_numpy(dtype=float)
    without_z = expit(logit(np.clip(p, 1e-9, 1 - 1e-9)) - Z_ACT * z)
    behaviour_auc = rank_auc(y, true_landmark_probability(without_z, CONFIG.observation_hours))
    auc = float(model.metrics["roc_auc"])
    low, high = paired_gap_interval(y, predicted, true, seed)

    positions, ages = in_flight(features, now)
    flying = user_buckets(warehouse, CONFIG, features, positions, window_hours)
    scores = model.predict(landmark_frame(features, flying, positions, ages))
    picked = truth.loc[features.user_id.iloc[positions].to_numpy()]
    # Eventual activation within the window, from the generator's plan (known for everyone).
    eventual = (
        picked.planted_activator.astype(str).str.lower().eq("true")
        & ~picked.late_activator.astype(str).str.lower().eq("true")
        & (picked.hours_to_activation <= ACTIVATION_WINDOW_MS / HOUR)
    )
    frame = pd.DataFrame(
        {
            "age": ages,
            "predicted": scores,
            "true": true_landmark_probability(picked.true_activation_probability.to_numpy(), ages),
            "eventual": eventual.to_numpy(dtype=float),
        }
    )
    band = pd.cut(frame.age, IN_FLIGHT_BANDS, right=False)
    bands = frame.groupby(band, observed=True).agg(
        users=("age", "size"),
        predicted=("predicted", "mean"),
        true=("true", "mean"),
        eventual=("eventual", "mean"),
    )
    warehouse.close()
    return {
        "users": users,
        "seed": seed,
        "validation": len(y),
        "positives": int(y.sum()),
        "auc": auc,
        "true_auc": true_auc,
        "gap": auc - true_auc,
        "behaviour_auc": behaviour_auc,
        "gap_ci": (low, high),
        "train_rows": model.metrics["train_rows"],
        "seconds": seconds,
        "bands": bands,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[6000, 20000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[21, 22, 23])
    parser.add_argument("--bands", action="store_true", help="print the in-flight bands")
    args = parser.parse_args()
    for users in args.users:
        gaps = []
        for seed in args.seeds:
            r = measure(users, seed)
            gaps.append(r["gap"])
            low, high = r["gap_ci"]  # type: ignore[misc]
            print(
                f"{users:>6} users seed {seed}: landmark validation {r['validation']} "
                f"({r['positives']} activated), model AUC {r['auc']:.4f}, true AUC "
                f"{r['true_auc']:.4f} (without z {r['behaviour_auc']:.4f}), gap {r['gap']:+.4f} "
                f"[{low:+.4f}, {high:+.4f}], "
                f"fit {r['seconds']:.1f} s on {r['train_rows']} rows",
                flush=True,
            )
            bands: pd.DataFrame = r["bands"]  # type: ignore[assignment]
            worst = float((bands.predicted - bands.true).abs().max())
            print(f"    in flight: max |mean predicted - mean true| over bands {worst:.4f}")
            if args.bands:
                print(bands.round(4).to_string().replace("\n", "\n    "))
        print(f"{users:>6} users: mean gap {np.mean(gaps):+.4f}", flush=True)


if __name__ == "__main__":
    main()

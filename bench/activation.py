"""Benchmark: from sessions to scores and critical path (features, model, scores, critical path).

With the sample's landmark ladder (1, 24, 72, 168 h): four populations and critical paths.

    .venv/bin/python bench/activation.py --events 1000000 10000000

Reuses the samples of `bench/ingest_sessions.py` (bench/results/data-N), ingests and
sessionizes them untimed, then times each activation step in a fresh process and prints
seconds, feature-building throughput (events per second) and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ingest_sessions import RESULTS, ensure_data, run_child


def measure(data_dir: Path) -> dict[str, float]:
    import numpy as np
    import pandas as pd

    from onboarding_pipeline.activation import assets
    from onboarding_pipeline.activation.critical_path import critical_path
    from onboarding_pipeline.activation.features import build_features
    from onboarding_pipeline.activation.landmarks import scoring_ages
    from onboarding_pipeline.activation.model import (
        in_flight,
        train_activation_model,
        training_users,
    )
    from onboarding_pipeline.config import load_config
    from onboarding_pipeline.ingestion.load import ingest_events, ingest_users
    from onboarding_pipeline.ingestion.sources import FileSource
    from onboarding_pipeline.modeling.sessions import write_sessions
    from onboarding_pipeline.warehouse import WarehouseResource

    # The sample's landmark ladder: four populations, four critical paths.
    config = load_config(data_dir / "onboarding.yaml").model_copy(
        update={"landmark_hours": [1, 24, 72, 168]}
    )
    warehouse_file = data_dir / "activation_bench.duckdb"
    warehouse = WarehouseResource(url=f"duckdb:///{warehouse_file}")
    start = datetime.combine(config.partitions_start_date, datetime.min.time(), UTC)
    end = datetime(2100, 1, 1, tzinfo=UTC)
    if not warehouse_file.exists() or not warehouse.execute(warehouse.table("sessions").count()):
        source = FileSource(data_dir=str(data_dir))
        ingest_users(warehouse, source, config)
        ingest_events(warehouse, source, config, start, end)
        write_sessions(warehouse, timedelta(minutes=config.session_timeout_minutes), start, end)
    events = int(warehouse.execute(warehouse.table("raw_events").count()))
    users, raw_events = warehouse.table("raw_users"), warehouse.table("raw_events")

    began = time.perf_counter()
    table, chosen, now = build_features(
        users,
        raw_events,
        warehouse.table("sessions"),
        config,
        warehouse.connect(),
        stage=warehouse.temp_table,
    )
    stored = warehouse.replace_table("user_features", table)
    warehouse.execute(stored.count())
    features = assets.load_features(warehouse).reset_index(drop=True)
    features_done = time.perf_counter()
    landmarks = config.landmarks()
    window_hours = config.activation_window_days * 24
    train, valid = training_users(features, config.model)
    buckets = assets.user_buckets(
        warehouse, config, features, np.concatenate([train, valid]), window_hours
    )
    model = train_activation_model(
        features,
        buckets,
        config.model,
        ages=scoring_ages(landmarks, config.activation_window_days),
        main_landmark=float(config.observation_hours),
        age_bands=[0.0, *map(float, landmarks)],
    )
    model_done = time.perf_counter()
    positions, ages = in_flight(features, pd.Timestamp(now))
    flying = assets.user_buckets(warehouse, config, features, positions, window_hours)
    assets.score_in_flight(model, features, flying, positions, ages)
    scores_done = time.perf_counter()
    closed = assets.user_buckets(
        warehouse, config, features, assets.closed_positions(features), max(landmarks)
    )
    critical_path(
        features,
        closed,
        assets.event_first_seen(warehouse, chosen),
        landmarks,
        config.observation_hours,
        config.critical_path,
    )
    finished = time.perf_counter()
    warehouse.close()
    return {
        "events": events,
        "users": len(features),
        "features_seconds": features_done - began,
        "model_seconds": model_done - features_done,
        "scores_seconds": scores_done - model_done,
        "critical_path_seconds": finished - scores_done,
        "total_seconds": finished - began,
        "feature_events_per_second": events / (features_done - began),
        "roc_auc": model.metrics["roc_auc"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    rows = []
    for size in args.events:
        data_dir = ensure_data(size)
        # First child prepares the warehouse (untimed); the second measures from sessions on.
        for _ in range(2):
            figures = run_child(Path(__file__), data_dir)
        rows.append(figures)
        print(
            f"{figures['events']:>11,} events, {figures['users']:,} users: "
            f"features {figures['features_seconds']:.1f} s "
            f"({figures['feature_events_per_second'] / 1e6:.1f}M events/s), "
            f"model {figures['model_seconds']:.1f} s, scores {figures['scores_seconds']:.1f} s, "
            f"critical path {figures['critical_path_seconds']:.1f} s, "
            f"total {figures['total_seconds']:.1f} s, peak RSS {figures['peak_rss_mib']:,.0f} MiB "
            f"(ROC AUC {figures['roc_auc']:.3f})",
            flush=True,
        )
    (RESULTS / "activation-latest.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

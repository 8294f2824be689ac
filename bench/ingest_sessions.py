"""Benchmark: ingestion and sessionization throughput and peak memory.

    .venv/bin/python bench/ingest_sessions.py --events 1000000 10000000

For each size it generates a CSV sample (cached under bench/results/data-N), then runs
ingestion (users + events over every partition) and sessionization in a fresh process on an
empty DuckDB file, and prints wall time, events per second and that process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def measure(data_dir: Path, workdir: Path) -> dict[str, float]:
    """Run in a child process so peak memory is the pipeline's alone."""
    from datetime import timedelta

    from onboarding_pipeline.config import load_config
    from onboarding_pipeline.ingestion.load import ingest_events, ingest_users
    from onboarding_pipeline.ingestion.sources import FileSource
    from onboarding_pipeline.modeling.sessions import write_sessions
    from onboarding_pipeline.warehouse import WarehouseResource

    config = load_config(data_dir / "onboarding.yaml")
    source = FileSource(data_dir=str(data_dir))
    warehouse_file = workdir / "bench.duckdb"
    warehouse_file.unlink(missing_ok=True)
    warehouse = WarehouseResource(url=f"duckdb:///{warehouse_file}")
    start = datetime.combine(config.partitions_start_date, datetime.min.time(), UTC)
    end = datetime(2100, 1, 1, tzinfo=UTC)

    began = time.perf_counter()
    ingest_users(warehouse, source, config)
    users_done = time.perf_counter()
    report = ingest_events(warehouse, source, config, start, end)
    ingest_done = time.perf_counter()
    sessions = write_sessions(
        warehouse, timedelta(minutes=config.session_timeout_minutes), start, end
    )
    finished = time.perf_counter()
    warehouse.close()
    return {
        "rows_read": report.rows_read,
        "events_accepted": report.accepted,
        "sessions": sessions,
        "users_seconds": users_done - began,
        "ingest_seconds": ingest_done - began,
        "sessions_seconds": finished - ingest_done,
        "total_seconds": finished - began,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(script: Path, data_dir: Path) -> dict[str, float]:
    """Run `script --child data_dir` in a fresh process; its last line is the figures (JSON)."""
    child = subprocess.run(
        [sys.executable, str(script), "--child", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    figures: dict[str, float] = json.loads(child.stdout.strip().splitlines()[-1])
    return figures


def ensure_data(events: int) -> Path:
    from onboarding_pipeline.sample_data import generate_sample

    data_dir = RESULTS / f"data-{events}"
    if not (data_dir / "events.csv").exists():
        print(f"generating ~{events:,} events ...", flush=True)
        generate_sample(data_dir, target_events=events, seed=11, progress=False)
    config = data_dir / "onboarding.yaml"
    config.write_text(
        "aha_events: [dashboard_shared]\npartitions_start_date: 2026-01-01\n"
        "ingestion:\n  max_quarantine_share: 0.05\n"
    )
    return data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.child)))
        return

    RESULTS.mkdir(exist_ok=True)
    rows = []
    for size in args.events:
        data_dir = ensure_data(size)
        size_mib = (data_dir / "events.csv").stat().st_size / 2**20
        figures = run_child(Path(__file__), data_dir)
        figures["csv_mib"] = size_mib
        rows.append(figures)
        print(
            f"{figures['rows_read']:>11,} rows ({size_mib:,.0f} MiB CSV): "
            f"ingest {figures['ingest_seconds']:.1f} s, sessions {figures['sessions_seconds']:.1f} s, "
            f"total {figures['total_seconds']:.1f} s = "
            f"{figures['rows_read'] / figures['total_seconds']:,.0f} events/s, "
            f"peak RSS {figures['peak_rss_mib']:,.0f} MiB",
            flush=True,
        )
    (RESULTS / "latest.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

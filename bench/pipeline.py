"""Benchmark: the whole asset graph end to end (`onboarding-pipeline run`), per asset group.

    .venv/bin/python bench/pipeline.py --events 1000000 10000000

Reuses the samples of `bench/ingest_sessions.py` (bench/results/data-N, generated on first use)
with the bundled sample's `onboarding.yaml` (funnel, report, engagement playbook). Each size
runs `run_pipeline` in a fresh process on an empty DuckDB warehouse and a fresh SQLite Dagster
instance, and prints wall time per asset group (Dagster's per-run overhead included), the
total and that process's peak RSS. Target: 10M events under 2 minutes, peak under 8 GiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ingest_sessions import RESULTS, ensure_data, run_child

PROJECT = Path(__file__).resolve().parents[1]


def measure(data_dir: Path) -> dict[str, object]:
    from onboarding_pipeline.code_location import build_definitions
    from onboarding_pipeline.runner import run_pipeline
    from onboarding_pipeline.settings import Settings

    workdir = RESULTS / f"pipeline-{data_dir.name}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    config = workdir / "onboarding.yaml"
    shutil.copy(PROJECT / "sample_data" / "onboarding.yaml", config)
    settings = Settings(
        data_dir=data_dir,
        config_path=config,
        warehouse_url=f"duckdb:///{workdir / 'warehouse.duckdb'}",
        output_dir=workdir / "output",
    )
    graph = build_definitions(settings).resolve_asset_graph()
    group_of = {
        key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()
    }

    # run_pipeline announces each asset before running it; the time until the next
    # announcement (or the end) is that asset's wall time.
    seconds: dict[str, float] = defaultdict(float)
    current: list[object] = [None, time.perf_counter()]

    def echo(line: str) -> None:
        if line.startswith("["):
            now = time.perf_counter()
            if current[0]:
                seconds[str(current[0])] += now - float(current[1])  # type: ignore[arg-type]
            current[:] = [line.split("] ", 1)[1].split(" ", 1)[0], now]

    began = time.perf_counter()
    summary = run_pipeline(settings, echo=echo)
    finished = time.perf_counter()
    if current[0]:
        seconds[str(current[0])] += finished - float(current[1])  # type: ignore[arg-type]
    by_group: dict[str, float] = defaultdict(float)
    for asset, spent in seconds.items():
        by_group[group_of.get(asset) or "default"] += spent
    return {
        "events": summary.events,
        "users": summary.users,
        "failures": summary.failures,
        "seconds_by_group": dict(by_group),
        "seconds_by_asset": dict(seconds),
        "total_seconds": finished - began,
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
        figures = run_child(Path(__file__), ensure_data(size))
        rows.append(figures)
        groups = ", ".join(
            f"{group} {spent:.1f} s"
            for group, spent in figures["seconds_by_group"].items()  # type: ignore[attr-defined]
        )
        print(
            f"{figures['events']:>11,} events, {figures['users']:,} users: {groups}; "
            f"total {figures['total_seconds']:.1f} s, peak RSS {figures['peak_rss_mib']:,.0f} MiB"
            + (f"; FAILED: {', '.join(figures['failures'])}" if figures["failures"] else ""),  # type: ignore[arg-type]
            flush=True,
        )
    (RESULTS / "pipeline-latest.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

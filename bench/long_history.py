"""Benchmark: a long, thin history (12 years, ~30k events) against a one-month export of the same size.

    .venv/bin/python bench/long_history.py            # both shapes, ~30,000 events each
    .venv/bin/python bench/long_history.py --events 30000 --shapes 12y

Both shapes are cut from the bundled sample (sample_data/): whole users, in file order, until
the event count is reached, each user moved with all of their events so that signups spread
evenly over twelve years (12y) or over one month (1m); times within a user's history are kept.
Each shape runs `run_pipeline` (what `onboarding-pipeline run` does) in a fresh process on an
empty DuckDB warehouse and a fresh SQLite Dagster instance, and prints the wall time, events
per second, the partitions the run covered and any asset that failed (measured anyway).
Target: the 12-year shape under 60 s, and within 2x of the one-month shape's events per second.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
# Signups from, signups until, and the partitions each shape is run with by default: the long
# history monthly (its README advice), the one-month export with the default daily ones.
SHAPES = {
    "12y": ("2014-11-01", "2026-10-01", "monthly"),
    "1m": ("2026-09-01", "2026-10-01", "daily"),
}


def build(shape: str, target_events: int, out: Path, partitions: str | None = None) -> Path:
    """Write users.csv, events.csv and onboarding.yaml of one shape to `out`."""
    users = pd.read_csv(PROJECT / "sample_data" / "users.csv", dtype=str)
    events = pd.read_csv(PROJECT / "sample_data" / "events.csv", dtype=str)
    per_user = events.groupby("user_id").size()
    counts = per_user.reindex(users.user_id).fillna(0).cumsum()
    chosen = users[(counts <= target_events).to_numpy()].copy()
    events = events[events.user_id.isin(chosen.user_id)].copy()

    first, last = (pd.Timestamp(day, tz="UTC") for day in SHAPES[shape][:2])
    signup = pd.to_datetime(chosen.signup_at, utc=True, format="ISO8601")
    # Evenly spaced signups, a fixed shuffle so cohorts keep the sample's mix over time.
    slots = np.random.default_rng(3).permutation(len(chosen))
    new_signup = pd.Series(first + (last - first) * (slots / max(len(chosen), 1)))
    new_signup.index = chosen.index
    shift = pd.Series((new_signup - signup).to_numpy(), index=chosen.user_id.to_numpy())
    chosen["signup_at"] = new_signup.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # The sample plants dirty rows (bad timestamps among them): those stay as they are.
    stamps = pd.to_datetime(events.timestamp, utc=True, format="ISO8601", errors="coerce")
    stamps = stamps + shift.reindex(events.user_id).to_numpy()
    parsed = stamps.notna()
    events.loc[parsed, "timestamp"] = stamps[parsed].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    chosen.to_csv(out / "users.csv", index=False)
    events.to_csv(out / "events.csv", index=False)
    config = yaml.safe_load((PROJECT / "sample_data" / "onboarding.yaml").read_text())
    config["partitions_start_date"] = first.date()
    config["partitions"] = partitions or SHAPES[shape][2]
    (out / "onboarding.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def measure(data_dir: Path) -> dict[str, object]:
    """Run in a child process: a fresh warehouse and Dagster instance per shape."""
    from onboarding_pipeline.runner import run_pipeline
    from onboarding_pipeline.settings import Settings

    data_dir = data_dir.resolve()
    workdir = data_dir.parent / f"{data_dir.name}-run"
    shutil.rmtree(workdir, ignore_errors=True)
    settings = Settings(
        data_dir=data_dir,
        config_path=data_dir / "onboarding.yaml",
        warehouse_url=f"duckdb:///{workdir / 'warehouse.duckdb'}",
        output_dir=workdir / "output",
    )
    workdir.mkdir(parents=True)
    # run_pipeline announces each asset before running it: the time to the next line is its own.
    per_asset: dict[str, float] = {}
    current: list[object] = ["", time.perf_counter()]

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        now = time.perf_counter()
        if current[0]:
            per_asset[str(current[0])] = now - float(current[1])  # type: ignore[arg-type]
        current[:] = [line.split("] ", 1)[1].split(" ", 1)[0] if line.startswith("[") else "", now]

    began = time.perf_counter()
    summary = run_pipeline(settings, echo=echo)
    seconds = time.perf_counter() - began
    return {
        "events": summary.events,
        "users": summary.users,
        "sessions": summary.sessions,
        "partitions": list(summary.partition_range or ()),
        "seconds": seconds,
        "events_per_second": summary.events / seconds,
        "failures": {name: text.splitlines()[0][:160] for name, text in summary.failures.items()},
        "seconds_by_asset": per_asset,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["12y", "1m"])
    parser.add_argument(
        "--partitions",
        choices=["daily", "weekly", "monthly"],
        help="Partitions of every shape (default: 12y monthly, 1m daily).",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    rows = {}
    for shape in args.shapes:
        partitions = args.partitions or SHAPES[shape][2]
        data_dir = build(shape, args.events, RESULTS / f"long-history-{shape}", partitions)
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(data_dir)],
            capture_output=True,
            text=True,
        )
        if child.returncode:
            sys.exit(f"{shape}: the run crashed:\n{child.stderr[-3000:]}")
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        figures["partitioning"] = partitions
        rows[shape] = figures
        first, last = figures["partitions"] or ("-", "-")
        print(
            f"{shape:>3}: {figures['events']:,} events, {figures['users']:,} users, "
            f"{partitions} partitions {first}..{last}: {figures['seconds']:.1f} s = "
            f"{figures['events_per_second']:,.0f} events/s"
            + (f"; FAILED: {figures['failures']}" if figures["failures"] else ""),
            flush=True,
        )
        slowest = sorted(figures["seconds_by_asset"].items(), key=lambda item: -item[1])[:5]
        print("     slowest: " + ", ".join(f"{name} {spent:.1f} s" for name, spent in slowest))
    if {"12y", "1m"} <= rows.keys():
        ratio = rows["1m"]["events_per_second"] / rows["12y"]["events_per_second"]
        print(f"one-month events/s = {ratio:.2f}x the 12-year shape's (target: under 2x)")
    (RESULTS / "long-history-latest.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

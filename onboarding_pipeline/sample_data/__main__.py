"""CLI: ``python -m onboarding_pipeline.sample_data --users N --seed S --out DIR``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from onboarding_pipeline.sample_data.generator import (
    DEFAULT_NOW,
    EFFECTS,
    FORMATS,
    generate_sample,
)


def _parse_now(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    # A naive --now means UTC, like the naive timestamps in the events file.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m onboarding_pipeline.sample_data",
        description="Generate deterministic onboarding sample data with planted truth.",
    )
    parser.add_argument("--users", type=int, default=3000, help="number of valid users")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("sample_data"),
        help="output directory (default: ./sample_data)",
    )
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        dest="target_events",
        help="aim for about this many event rows (overrides --users)",
    )
    parser.add_argument("--format", choices=FORMATS, default="csv", dest="fmt")
    parser.add_argument(
        "--now",
        type=_parse_now,
        default=DEFAULT_NOW,
        help="ISO-8601 instant that ends the data (default %(default)s)",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=120,
        dest="signup_days",
        help="signups are spread over this many days before --now",
    )
    parser.add_argument(
        "--dirty",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="inject duplicate and invalid rows (default: on)",
    )
    parser.add_argument(
        "--inside-horizon-share",
        type=float,
        default=0.5,
        help="share of within-window activators who activate inside the first 72 h "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--effects",
        choices=EFFECTS,
        default="planted",
        help="'none' gives a pure-noise world: no event and no trait moves activation",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    summary = generate_sample(
        args.out,
        args.users,
        args.seed,
        target_events=args.target_events,
        fmt=args.fmt,
        now=args.now,
        signup_days=args.signup_days,
        dirty=args.dirty,
        progress=not args.quiet,
        inside_horizon_share=args.inside_horizon_share,
        effects=args.effects,
    )
    if not args.quiet:
        data = summary.to_json_dict()
        data["seconds"] = round(time.perf_counter() - started, 2)
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

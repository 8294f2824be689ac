"""`onboarding-pipeline`: run the whole pipeline, print a user's timeline, simulate the
closed loop, or generate sample data.

A mistake in what the user gave (an option, a path, the config, an input file) ends in one
`Error: ...` line that says what to change, never in a traceback (`--debug` shows it).
"""

from __future__ import annotations

import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import click
import pandas as pd

from onboarding_pipeline.config import ConfigError
from onboarding_pipeline.ingestion.readers import InputError
from onboarding_pipeline.settings import (
    ENV_CONFIG,
    ENV_DATA_DIR,
    ENV_OUTPUT_DIR,
    ENV_WAREHOUSE_URL,
    Settings,
)

DAY_FORMAT = "%Y-%m-%d"


def package_version() -> str:
    try:
        return version("onboarding-pipeline")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class Day(click.ParamType):
    """A calendar day written YYYY-MM-DD."""

    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value
        try:
            return datetime.strptime(str(value), DAY_FORMAT).date()
        except ValueError:
            self.fail(f"{value!r} is not a day; expected YYYY-MM-DD, e.g. 2026-10-01", param, ctx)


class _Group(click.Group):
    """Turns any error that escapes a command into one line (the traceback with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as error:
            if ctx.params.get("debug"):
                traceback.print_exc()
            message = str(error).strip() or type(error).__name__
            raise click.ClickException(
                f"{message} ({type(error).__name__}; run with --debug for the traceback)"
            ) from None


class Mistake(click.ClickException):
    """A mistake in what the user gave (a file, a row, a key, an id): exit status 2, like a
    wrong option; 1 is kept for a run that failed."""

    exit_code = 2


@click.group(cls=_Group)
@click.version_option(package_version(), "--version", prog_name="onboarding-pipeline")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an unexpected error.")
def main(debug: bool) -> None:
    """Onboarding analytics on Dagster: from product events to activation decisions."""
    # Beta/preview notices about Dagster APIs are for developers, not for each run's output.
    warnings.filterwarnings("ignore", module="dagster")
    warnings.filterwarnings("ignore", message=".*is currently in (beta|preview).*")


def check_paths(settings: Settings) -> None:
    """The data directory and the config file exist (a connector needs no data directory)."""
    data_dir, config = settings.data_dir, settings.config_path
    missing_data = not data_dir.is_dir()
    if missing_data and (not config.exists() or config.is_relative_to(data_dir)):
        what = "is not a directory" if data_dir.exists() else "does not exist"
        raise click.UsageError(
            f"data directory {data_dir} {what} (set --data-dir or {ENV_DATA_DIR})"
        )
    if not config.is_file():
        raise click.UsageError(
            f"config file {config} does not exist (set --config or {ENV_CONFIG}, or put an "
            "onboarding.yaml in the data directory; only aha_events is required)"
        )
    if missing_data:
        from onboarding_pipeline.config import load_config

        if load_config(config).source.type == "files":
            raise click.UsageError(
                f"data directory {data_dir} does not exist (set --data-dir or {ENV_DATA_DIR}); "
                f"{config} reads events from files there"
            )


def check_warehouse(url: str) -> None:
    """The warehouse opens (a wrong scheme or an unreachable server fails here, not per asset)."""
    from onboarding_pipeline.warehouse import WarehouseResource

    warehouse = WarehouseResource(url=url)
    try:
        warehouse.connect()
    except Exception as error:
        parts = urlsplit(url)
        shown = parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()  # no password
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise click.UsageError(
            f"cannot open the warehouse {shown}: {first_line} "
            f"(set --warehouse-url or {ENV_WAREHOUSE_URL})"
        ) from None
    finally:
        warehouse.close()


# Where the data, config, warehouse and outputs are: the same options for every command.
WHERE_OPTIONS = [
    click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        envvar=ENV_DATA_DIR,
        help="Input directory (users + events files).",
    ),
    click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        envvar=ENV_CONFIG,
        help="Path of onboarding.yaml (default: <data-dir>/onboarding.yaml).",
    ),
    click.option(
        "--warehouse-url",
        envvar=ENV_WAREHOUSE_URL,
        help="duckdb:///path/file.duckdb (default under the output dir) or postgresql://...",
    ),
    click.option(
        "--output-dir",
        type=click.Path(path_type=Path),
        envvar=ENV_OUTPUT_DIR,
        help="Reports, outbox and local state (default: ./output in the project).",
    ),
]


def where_options(command: Any) -> Any:
    for option in reversed(WHERE_OPTIONS):
        command = option(command)
    return command


@main.command()
@where_options
@click.option(
    "--start",
    type=Day(),
    help="First day to (re)build; the run covers the partition holding it. Default: the "
    "data's first day.",
)
@click.option(
    "--end",
    type=Day(),
    help="Last day to (re)build, and the day whose week the report covers. Default: the "
    "data's last day.",
)
def run(
    data_dir: Path | None,
    config_path: Path | None,
    warehouse_url: str | None,
    output_dir: Path | None,
    start: date | None,
    end: date | None,
) -> None:
    """Materialize every asset in process over all the data and print a summary."""
    settings = Settings.from_env().with_overrides(
        data_dir=data_dir,
        config_path=config_path,
        warehouse_url=warehouse_url,
        output_dir=output_dir,
    )
    if start and end and start > end:
        raise click.BadParameter(f"{start} is after --end {end}", param_hint="'--start'")
    try:
        check_paths(settings)
        check_warehouse(settings.warehouse_url)
        from onboarding_pipeline.runner import run_pipeline, run_span

        click.echo(f"data: {settings.data_dir}\nconfig: {settings.config_path}")
        span, report_day = run_span(settings, start, end)
        summary = run_pipeline(
            settings, partition_range=span, report_day=report_day, echo=click.echo
        )
    except (ConfigError, InputError) as error:
        raise Mistake(str(error)) from None
    for line in summary.lines():
        click.echo(line)
    if summary.failures:
        sys.exit(1)


@main.command()
@click.argument("user_id")
@where_options
def timeline(
    user_id: str,
    data_dir: Path | None,
    config_path: Path | None,
    warehouse_url: str | None,
    output_dir: Path | None,
) -> None:
    """Print how USER_ID moved: signup, milestones, stalls, queue entries, activation and
    outcome, in order (from the warehouse of an earlier `run`)."""
    settings = Settings.from_env().with_overrides(
        data_dir=data_dir,
        config_path=config_path,
        warehouse_url=warehouse_url,
        output_dir=output_dir,
    )
    try:
        check_paths(settings)
        check_warehouse(settings.warehouse_url)
        from onboarding_pipeline.config import load_config
        from onboarding_pipeline.engagement.assets import timelines_of
        from onboarding_pipeline.engagement.timeline import one_user
        from onboarding_pipeline.warehouse import WarehouseResource

        config = load_config(settings.config_path)
        warehouse = WarehouseResource(url=settings.warehouse_url)
        try:
            rows = timelines_of(warehouse, config, one_user(user_id))
        finally:
            warehouse.close()
    except (ConfigError, InputError) as error:
        raise Mistake(str(error)) from None
    if rows.empty:
        raise Mistake(
            f"no user {user_id!r} in {settings.warehouse_url} (run `onboarding-pipeline run` "
            "first, or check the id)"
        )
    for at, kind, detail in zip(rows["at"], rows.kind, rows.detail, strict=True):
        when = "-" if pd.isna(at) else pd.Timestamp(at).strftime("%Y-%m-%d %H:%M UTC")
        click.echo(f"{when:<21} {kind!s:<10} {detail!s}")


@main.command()
@click.option("--users", type=click.IntRange(min=10), default=1000, show_default=True)
@click.option("--days", type=click.IntRange(min=1, max=365), default=60, show_default=True)
@click.option(
    "--signup-days",
    type=click.IntRange(min=1),
    default=40,
    show_default=True,
    help="Signups are spread over the first this many days.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--step-boost",
    type=click.FloatRange(min=1),
    default=5.0,
    show_default=True,
    help="Planted effect: a delivered nudge multiplies the daily chance of doing the nudged "
    "step by this for 3 days (1 = nudges do nothing).",
)
@click.option(
    "--step-hazard",
    type=click.FloatRange(min=0, max=0.9),
    default=0.12,
    show_default=True,
    help="Planted effect: daily chance of the aha moment added once the data step is done.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Working folder.")
def simulate(
    users: int,
    days: int,
    signup_days: int,
    seed: int,
    step_boost: float,
    step_hazard: float,
    out: Path,
) -> None:
    """Closed loop: replay a world day by day through the daily job (deliveries go to a
    local in-app stub and the world reacts), then set the read-outs against the planted truth.
    SIGTERM or Ctrl-C stops it after the day in progress (a second one at once): what was
    measured is printed and written to OUT/summary.txt marked INTERRUPTED, and the exit
    status is 143 or 130."""
    from onboarding_pipeline.simulation.world import WorldSpec

    spec = WorldSpec(
        users=users,
        days=days,
        signup_days=min(signup_days, days),
        seed=seed,
        step_boost=step_boost,
        step_hazard=step_hazard,
    )
    if out.exists() and any(out.iterdir()):
        # A second loop would find the first one's warehouse and ledgers and measure both.
        raise Mistake(f"{out} is not empty: a simulation needs a folder of its own")
    from onboarding_pipeline.simulation.loop import simulate as run_loop

    with _stop_requests() as stop:
        result = run_loop(spec, out, echo=click.echo, stop=stop)
    for line in result.lines():
        click.echo(line)
    if result.interrupted is not None:
        sys.exit(128 + signal.Signals[result.interrupted].value)
    checks = result.checks()
    broken = [
        name
        for name in (
            "holdout_users_messaged",
            "messages_inside_cooldown",
            "same_step_messaged_twice",
        )
        if checks.get(name)
    ]
    if result.failures or broken:
        sys.exit(1)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def _stop_requests() -> Iterator[Callable[[], str | None]]:
    """While the body runs, SIGTERM and SIGINT only record a request to stop; yields a check
    that says which came first (its name) or None. A second signal stops at once."""
    received: list[str] = []

    def record(signum: int, frame: FrameType | None) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)

    previous = {number: signal.signal(number, record) for number in STOP_SIGNALS}
    try:
        yield lambda: received[0] if received else None
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@main.command("generate-sample")
@click.option("--users", type=int, default=3000, show_default=True)
@click.option(
    "--events",
    "target_events",
    type=int,
    default=None,
    help="Aim for about this many event rows instead.",
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet", "jsonl"]),
    default="csv",
    show_default=True,
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate_sample_command(
    users: int, target_events: int | None, seed: int, out: Path, fmt: str, quiet: bool
) -> None:
    """Write realistic onboarding data with its planted truth (see sample_data)."""
    from onboarding_pipeline.sample_data import generate_sample

    summary = generate_sample(
        out, users=users, seed=seed, target_events=target_events, fmt=fmt, progress=not quiet
    )
    click.echo(f"wrote {summary.events_written} events for {summary.users} users to {out}")


if __name__ == "__main__":
    main()

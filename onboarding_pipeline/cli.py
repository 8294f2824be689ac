"""`onboarding-pipeline`: run the whole pipeline, or generate sample data."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from onboarding_pipeline.config import ConfigError
from onboarding_pipeline.ingestion.readers import InputError
from onboarding_pipeline.settings import (
    ENV_CONFIG,
    ENV_DATA_DIR,
    ENV_OUTPUT_DIR,
    ENV_WAREHOUSE_URL,
    Settings,
)


@click.group()
def main() -> None:
    """Onboarding analytics on Dagster: from product events to activation decisions."""
    # Beta/preview notices about Dagster APIs are for developers, not for each run's output.
    warnings.filterwarnings("ignore", module="dagster")
    warnings.filterwarnings("ignore", message=".*is currently in (beta|preview).*")


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    envvar=ENV_DATA_DIR,
    help="Input directory (users + events files).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    envvar=ENV_CONFIG,
    help="Path of onboarding.yaml (default: <data-dir>/onboarding.yaml).",
)
@click.option(
    "--warehouse-url",
    envvar=ENV_WAREHOUSE_URL,
    help="duckdb:///path/file.duckdb (default under the output dir) or postgresql://...",
)
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    envvar=ENV_OUTPUT_DIR,
    help="Reports, outbox and local state (default: ./output in the project).",
)
@click.option("--start", help="First partition day (YYYY-MM-DD); default: the data's first day.")
@click.option("--end", help="Last partition day (YYYY-MM-DD); default: the data's last day.")
def run(
    data_dir: Path | None,
    config_path: Path | None,
    warehouse_url: str | None,
    output_dir: Path | None,
    start: str | None,
    end: str | None,
) -> None:
    """Materialize every asset in process over all the data and print a summary."""
    from onboarding_pipeline.runner import data_partition_range, run_pipeline

    settings = Settings.from_env().with_overrides(
        data_dir=data_dir,
        config_path=config_path,
        warehouse_url=warehouse_url,
        output_dir=output_dir,
    )
    click.echo(f"data: {settings.data_dir}\nconfig: {settings.config_path}")
    try:
        span = None
        if start or end:
            from onboarding_pipeline.code_location import build_definitions

            default = data_partition_range(settings, build_definitions(settings)) or ("", "")
            span = (start or default[0], end or default[1])
        summary = run_pipeline(settings, partition_range=span, echo=click.echo)
    except (ConfigError, InputError) as error:
        raise click.ClickException(str(error)) from None
    for line in summary.lines():
        click.echo(line)
    if summary.failures:
        sys.exit(1)


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

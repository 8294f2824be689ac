"""Shared fixtures: small hand-written inputs, a real temporary DuckDB warehouse, and the
PostgreSQL gate.

PostgreSQL: tests that need the server are skipped, with the reason, when it cannot be
reached. A test needs it when it carries `@pytest.mark.postgres` or when its module, name or
parameter id says `postgres` (`test_ledger_on_postgres`, `[postgresql]`). The server is
`ONBOARDING_TEST_POSTGRES_URL` (default postgresql://postgres@127.0.0.1:5432/test), probed once
per session with a 2 s timeout; `ONBOARDING_TEST_REQUIRE_POSTGRES=1` (CI) turns the skip into
an error.
"""

from __future__ import annotations

import functools
import os
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.ingestion.load import ingest_events, ingest_users
from onboarding_pipeline.ingestion.sources import FileSource
from onboarding_pipeline.settings import SAMPLE_DATA_DIR, Settings, default_warehouse_url
from onboarding_pipeline.warehouse import WarehouseResource

if TYPE_CHECKING:  # the runner loads the whole code location: only where a test needs it
    from onboarding_pipeline.runner import RunSummary

ALL_TIME = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))

ENV_TEST_POSTGRES_URL = "ONBOARDING_TEST_POSTGRES_URL"
ENV_REQUIRE_POSTGRES = "ONBOARDING_TEST_REQUIRE_POSTGRES"
POSTGRES_URL = os.environ.get(ENV_TEST_POSTGRES_URL) or "postgresql://postgres@127.0.0.1:5432/test"


@functools.cache
def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used (None: it can): one real connection, 2 s at most."""
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
    except psycopg.Error as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"no PostgreSQL at {POSTGRES_URL} ({first_line}); set {ENV_TEST_POSTGRES_URL}"
    return None


def needs_postgres(item: pytest.Item) -> bool:
    named = f"{item.module.__name__ if item.module else ''}::{item.name}".lower()
    return item.get_closest_marker("postgres") is not None or "postgres" in named


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgres: needs the PostgreSQL server (skipped when it is unreachable)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanting = [item for item in items if needs_postgres(item)]
    if not wanting or postgres_unreachable() is None:
        return
    reason = postgres_unreachable()
    if os.environ.get(ENV_REQUIRE_POSTGRES) == "1":
        raise pytest.UsageError(f"{ENV_REQUIRE_POSTGRES}=1 but {reason}")
    for item in wanting:
        item.add_marker(pytest.mark.skip(reason=reason))


CLOCK = datetime(2026, 11, 1, tzinfo=UTC)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their own data and outputs; a developer's ONBOARDING_* must not leak in."""
    for name in ("ONBOARDING_DATA_DIR", "ONBOARDING_CONFIG", "ONBOARDING_WAREHOUSE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ONBOARDING_OUTPUT_DIR", raising=False)


@pytest.fixture
def config() -> ProductConfig:
    return ProductConfig(aha_events=["dashboard_shared"], partitions_start_date="2026-01-01")


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[WarehouseResource]:
    resource = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    yield resource
    resource.close()


def ingest_all(
    warehouse: WarehouseResource, data_dir: Path, config: ProductConfig, window=ALL_TIME
):  # type: ignore[no-untyped-def]
    """Ingest users and events of `data_dir` over `window`; returns both reports."""
    source = FileSource(data_dir=str(data_dir))
    users = ingest_users(warehouse, source, config)
    events = ingest_events(
        warehouse,
        source,
        config,
        window[0],
        window[1],
        clock=CLOCK,
    )
    return users, events


@dataclass(frozen=True)
class SampleRun:
    """`onboarding-pipeline run` on the bundled sample: its settings, summary and progress."""

    settings: Settings
    summary: RunSummary
    progress: list[str]


@pytest.fixture(scope="session")
def sample_pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> SampleRun:
    """The whole pipeline on the bundled sample, once per test session (about a minute): tests
    that read its tables, report or model share it instead of each running it again. Treat its
    output directory and warehouse as read-only."""
    from onboarding_pipeline.runner import run_pipeline

    output = tmp_path_factory.mktemp("sample_run")
    settings = Settings(
        data_dir=SAMPLE_DATA_DIR,
        config_path=SAMPLE_DATA_DIR / "onboarding.yaml",
        warehouse_url=default_warehouse_url(output),
        output_dir=output,
    )
    progress: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        # A developer's instance and credentials must not leak in: local instance, outbox only.
        for name in ("DAGSTER_HOME", "SLACK_BOT_TOKEN", "SMTP_HOST", "ANTHROPIC_API_KEY"):
            patch.delenv(name, raising=False)
        summary = run_pipeline(settings, echo=progress.append)
    return SampleRun(settings, summary, progress)

"""Shared fixtures: small hand-written inputs and a real temporary DuckDB warehouse."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.ingestion.load import ingest_events, ingest_users
from onboarding_pipeline.ingestion.sources import FileSource
from onboarding_pipeline.warehouse import WarehouseResource

ALL_TIME = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))
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

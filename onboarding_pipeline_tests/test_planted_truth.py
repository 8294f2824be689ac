"""The pipeline recovers what the generator planted: every dirty row, every true session."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from onboarding_pipeline.cli import main
from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.modeling.sessions import write_sessions
from onboarding_pipeline.sample_data import generate_sample
from onboarding_pipeline.settings import SAMPLE_DATA_DIR
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline_tests.conftest import ingest_all

WINDOW = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
CONFIG = ProductConfig(aha_events=["dashboard_shared"], partitions_start_date="2026-01-01")


@pytest.fixture(scope="module", params=["csv", "jsonl", "parquet"])
def recovered(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, WarehouseResource, object]]:
    data_dir = tmp_path_factory.mktemp(f"sample-{request.param}")
    generate_sample(data_dir, users=400, seed=3, fmt=request.param, progress=False)
    warehouse = WarehouseResource(url=f"duckdb:///{data_dir / 'warehouse.duckdb'}")
    _, events_report = ingest_all(warehouse, data_dir, CONFIG, window=WINDOW)
    write_sessions(warehouse, timedelta(minutes=30), *WINDOW)
    yield data_dir, warehouse, events_report
    warehouse.close()


def test_quarantine_matches_planted_dirty_rows(recovered) -> None:  # type: ignore[no-untyped-def]
    data_dir, warehouse, report = recovered
    planted = pd.read_csv(data_dir / "truth" / "dirty_rows.csv")
    expected = planted[planted.reason != "duplicate"]
    found = warehouse.execute(warehouse.table("quarantine"))
    key = ["source", "row_number", "reason"]
    assert sorted(map(tuple, found[key].values.tolist())) == sorted(
        map(tuple, expected[key].values.tolist())
    )
    planted_event_duplicates = (planted.reason == "duplicate") & planted.source.str.startswith(
        "events"
    )
    assert report.duplicates == int(planted_event_duplicates.sum()) > 0
    assert report.rows_read == report.accepted + report.duplicates + report.quarantined


def test_sessions_equal_the_true_sessions(recovered) -> None:  # type: ignore[no-untyped-def]
    data_dir, warehouse, _ = recovered
    truth = pd.read_csv(data_dir / "truth" / "sessions.csv", dtype={"session_id": str})
    truth["session_start"] = pd.to_datetime(truth.session_start, utc=True)
    truth["session_end"] = pd.to_datetime(truth.session_end, utc=True)
    found = warehouse.execute(warehouse.table("sessions"))
    columns = ["user_id", "session_start", "session_end", "event_count"]

    def normalise(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame[columns].copy()
        frame["session_start"] = frame.session_start.astype("datetime64[us, UTC]")
        frame["session_end"] = frame.session_end.astype("datetime64[us, UTC]")
        frame["event_count"] = frame.event_count.astype("int64")
        return frame.sort_values(columns[:2]).reset_index(drop=True)

    assert len(found) == len(truth)
    pd.testing.assert_frame_equal(normalise(found), normalise(truth))
    supplied = found[found.session_id_source == "input"].set_index(["user_id", "session_start"])
    mobile = truth[truth.session_id.notna()].set_index(["user_id", "session_start"])
    assert len(supplied) == len(mobile) > 0
    assert set(supplied.session_id) == set(mobile.session_id)


def test_cli_run_on_the_bundled_sample(tmp_path: Path) -> None:
    """The README's quick start, in process: every asset, then the summary and outputs."""
    result = CliRunner().invoke(
        main, ["run", "--output-dir", str(tmp_path)], env={"DAGSTER_HOME": ""}
    )
    assert result.exit_code == 0, result.output
    summary = pd.read_json(SAMPLE_DATA_DIR / "truth" / "summary.json", typ="series")
    assert f"events ingested:    {summary['clean_events']}" in result.output
    assert f"sessions:           {summary['sessions']}" in result.output
    assert f"duckdb:///{tmp_path / 'warehouse.duckdb'}" in result.output
    assert (tmp_path / "dagster_home" / "dagster.yaml").exists()


def test_cli_generate_sample(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["generate-sample", "--users", "60", "--seed", "5", "--out", str(tmp_path), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "users.csv").exists() and (tmp_path / "truth" / "sessions.csv").exists()
    written = sum(1 for _ in (tmp_path / "events.csv").open()) - 1
    assert f"wrote {written} events for 60 users" in result.output


def test_cli_names_the_config_problem(tmp_path: Path) -> None:
    (tmp_path / "onboarding.yaml").write_text("aha_events: [x]\nsesion_timeout_minutes: 5\n")
    result = CliRunner().invoke(
        main, ["run", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    )
    assert result.exit_code != 0
    assert "sesion_timeout_minutes: unknown key" in result.output
    assert str(tmp_path / "onboarding.yaml") in result.output


def test_cli_on_too_little_data_runs_everything_and_says_what_unlocks_the_model(
    tmp_path: Path,
) -> None:
    """A fresh export with a handful of users: the model is honestly refused (a warning, not a
    failure), everything else runs, and the summary says what would unlock the model."""
    from onboarding_pipeline_tests.conftest import write
    from onboarding_pipeline_tests.test_ingestion import EVENTS, USERS

    write(tmp_path, "users.csv", USERS)
    write(tmp_path, "events.csv", EVENTS)
    write(
        tmp_path,
        "onboarding.yaml",
        "aha_events: [search]\npartitions_start_date: 2026-01-01\n"
        "ingestion:\n  max_quarantine_share: 0.9\n",
    )
    result = CliRunner().invoke(
        main, ["run", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    assert "FAILED" not in result.output
    assert "min_training_users" in result.output
    for ran in ("sessions", "user_features", "critical_path", "activation_scores", "funnel"):
        assert f"{ran} skipped" not in result.output
    assert "sessions:           3" in result.output

"""The pipeline recovers what the generator planted: every dirty row, every true session."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
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
from onboarding_pipeline_tests.conftest import SampleRun, ingest_all, write

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


def test_run_on_the_bundled_sample(sample_pipeline_run: SampleRun) -> None:
    """The README's quick start (the shared session run): every asset, then the summary that
    `onboarding-pipeline run` prints, down to what to open next. The CLI's own wiring is
    tested on small data below."""
    output = sample_pipeline_run.settings.output_dir
    lines = sample_pipeline_run.summary.lines()
    text = "\n".join(lines)
    assert sample_pipeline_run.summary.failures == {}, sample_pipeline_run.summary.failures
    summary = pd.read_json(SAMPLE_DATA_DIR / "truth" / "summary.json", typ="series")
    assert f"events ingested:    {summary['clean_events']}" in text
    assert f"sessions:           {summary['sessions']}" in text
    assert f"duckdb:///{output / 'warehouse.duckdb'}" in text
    assert (output / "dagster_home" / "dagster.yaml").exists()
    assert lines[-3:-1] == [
        "Next:",
        f"  open the report:    {output / 'reports' / '2026-10-26' / 'report.html'}",
    ]
    assert lines[-1].startswith(f"  browse in Dagster:  DAGSTER_HOME={output / 'dagster_home'} ")


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
    assert result.exit_code == 2, result.output  # a mistake in the input, like a wrong option
    assert "sesion_timeout_minutes: unknown key" in result.output
    assert str(tmp_path / "onboarding.yaml") in result.output


def test_cli_on_too_little_data_runs_everything_and_says_what_unlocks_the_model(
    tmp_path: Path,
) -> None:
    """A fresh export with a handful of users: the model is honestly refused (a warning, not a
    failure), everything else runs, and the summary says what would unlock the model."""
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
    # The summary ends with what to open next: the report, and the UI on this run's settings.
    *_, heading, report, browse = result.output.rstrip().splitlines()
    out = tmp_path / "out"
    assert heading == "Next:"
    assert report.split("open the report:")[1].strip().endswith("report.html")
    assert Path(report.split("open the report:")[1].strip()).is_file()
    command = shlex.split(browse.split("browse in Dagster:")[1])
    assert command[:3] == [
        f"DAGSTER_HOME={out / 'dagster_home'}",
        f"ONBOARDING_DATA_DIR={tmp_path}",
        f"ONBOARDING_OUTPUT_DIR={out}",
    ]
    assert command[-3:] == ["dev", "-m", "onboarding_pipeline.definitions"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--start", "2026/10/01"],
            "Invalid value for '--start': '2026/10/01' is not a day; expected YYYY-MM-DD",
        ),
        (["--end", "yesterday"], "Invalid value for '--end': 'yesterday' is not a day"),
        (
            ["--start", "2026-10-05", "--end", "2026-10-01"],
            "Invalid value for '--start': 2026-10-05 is after --end 2026-10-01",
        ),
        (["--data-dir", "{tmp}/missing"], "data directory {tmp}/missing does not exist"),
        (["--data-dir", "{tmp}"], "config file {tmp}/onboarding.yaml does not exist"),
        (
            ["--warehouse-url", "mysql://db/x"],
            "cannot open the warehouse mysql://db/x: ONBOARDING_WAREHOUSE_URL: unsupported scheme",
        ),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path: Path, arguments: list[str], message: str) -> None:
    """A user's mistake: one `Error:` line naming the option or path, exit 2, no traceback."""
    arguments = [a.format(tmp=tmp_path) for a in arguments]
    result = CliRunner().invoke(main, ["run", "--output-dir", str(tmp_path / "out"), *arguments])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1
    assert errors[0].startswith(f"Error: {message.format(tmp=tmp_path)}")
    assert not (tmp_path / "out" / "dagster_home").exists()  # nothing ran


def test_cli_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"onboarding-pipeline, version {version('onboarding-pipeline')}"


def test_cli_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    """An error nobody anticipated (here: the output directory is a file) still ends in one
    line naming its type; --debug prints the traceback for a bug report."""
    write(tmp_path, "users.csv", "user_id,signup_at\nu1,2026-07-01T00:00:00Z\n")
    write(tmp_path, "events.csv", "user_id,event_name,timestamp\nu1,x,2026-07-01T01:00:00Z\n")
    write(tmp_path, "onboarding.yaml", "aha_events: [x]\n")
    (tmp_path / "out").write_text("not a directory")
    arguments = [
        "run",
        "--data-dir",
        str(tmp_path),
        "--output-dir",
        str(tmp_path / "out"),
        "--warehouse-url",
        f"duckdb:///{tmp_path / 'w.duckdb'}",
    ]
    plain = CliRunner().invoke(main, arguments)
    assert plain.exit_code == 1
    assert "Traceback" not in plain.output
    [error] = [line for line in plain.output.splitlines() if line.startswith("Error: ")]
    assert "NotADirectoryError; run with --debug for the traceback" in error
    debug = CliRunner().invoke(main, ["--debug", *arguments])
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.output

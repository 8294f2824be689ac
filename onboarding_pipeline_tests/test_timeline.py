"""A timeline per user: the `user_timelines` table and `onboarding-pipeline timeline USER_ID`
agree, in order, on the session's sample run (read only)."""

from __future__ import annotations

import pandas as pd
from click.testing import CliRunner

from onboarding_pipeline.cli import main
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline_tests.conftest import SampleRun


def read(run: SampleRun, table: str) -> pd.DataFrame:
    warehouse = WarehouseResource(url=run.settings.warehouse_url)
    try:
        return warehouse.execute(warehouse.table(table))
    finally:
        warehouse.close()


def test_every_assigned_user_has_an_ordered_timeline(sample_pipeline_run: SampleRun) -> None:
    timelines = read(sample_pipeline_run, "user_timelines")
    ledger = read(sample_pipeline_run, "intervention_ledger")
    assert set(timelines.user_id) == set(ledger.user_id) and len(ledger)
    for _, rows in timelines.groupby("user_id"):
        assert rows["at"].is_monotonic_increasing
        assert rows.kind.iloc[0] == "signup"
    held = ledger[ledger.holdout].user_id
    held_rows = timelines[
        timelines.user_id.isin(held) & timelines.kind.isin(["queued", "held_out"])
    ]
    assert (held_rows.kind == "held_out").all()  # control rows never read as "queued"
    stalled = ledger.dropna(subset=["failure_label"]).iloc[0]
    labels = timelines[(timelines.user_id == stalled.user_id) & (timelines.kind == "stalled")]
    assert stalled.failure_label in set(labels.detail)


def test_the_command_prints_the_same_rows(sample_pipeline_run: SampleRun) -> None:
    timelines = read(sample_pipeline_run, "user_timelines")
    user = timelines.user_id.iloc[0]
    settings = sample_pipeline_run.settings
    where = [
        "--data-dir",
        str(settings.data_dir),
        "--config",
        str(settings.config_path),
        "--warehouse-url",
        settings.warehouse_url,
        "--output-dir",
        str(settings.output_dir),
    ]
    result = CliRunner().invoke(main, ["timeline", user, *where])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    expected = timelines[timelines.user_id == user]
    assert len(lines) == len(expected)
    assert [line.split()[3] for line in lines] == list(expected.kind)
    unknown = CliRunner().invoke(main, ["timeline", "no-such-user", *where])
    assert unknown.exit_code == 2 and "no user 'no-such-user'" in unknown.output

"""A timeline per user: the `user_timelines` table and `onboarding-pipeline timeline USER_ID`
agree, in order, on the session's sample run (read only); deliveries sit on the data's clock
and read as what happened to them (a small warehouse of their own)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import ibis
import pandas as pd
from click.testing import CliRunner

from onboarding_pipeline.cli import main
from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.engagement.timeline import KIND_ORDER, user_timeline_rows
from onboarding_pipeline.outreach.deliver import deliver_interventions
from onboarding_pipeline.outreach.resource import OutreachResource
from onboarding_pipeline.reporting.mail import EmailResource
from onboarding_pipeline.reporting.slack import SlackResource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline_tests.conftest import SampleRun
from onboarding_pipeline_tests.delivery_stubs import Inbox, smtp_server
from onboarding_pipeline_tests.outreach_world import EXPERIMENT, NOW, USERS, seed


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


def test_deliveries_are_on_the_data_clock_and_named_by_their_status(
    warehouse: WarehouseResource, tmp_path: Path
) -> None:
    """A replay at 2026-11-02 (the data's clock) with real sends today (the wall clock):
    each delivery sits where the run that made it saw the data, and only messages that went
    out read `delivered`."""
    seed(warehouse)
    config = ProductConfig(
        aha_events=["dashboard_shared"],
        terminal_events=["account_deleted"],
        partitions_start_date="2026-06-01",
        interventions={"delivery": {"daily_limits": {"email": 1}, "quiet_hours": None}},
    )
    box = Inbox()

    def deliver(now: datetime, port: int) -> None:
        deliver_interventions(
            warehouse,
            config,
            email=EmailResource(host="127.0.0.1", port=port, security="none", sender="a@b.c"),
            slack=SlackResource(),
            outreach=OutreachResource(),
            outbox_root=tmp_path / "outbox",
            export_root=tmp_path / "export",
            now=now,
            log=lambda line: None,
        )

    def add_event(event_id: str, user: str, name: str, at: datetime) -> None:
        warehouse.connect().raw_sql(
            "INSERT INTO onboarding.raw_events (event_id, user_id, event_name, timestamp) "
            f"VALUES ('{event_id}', '{user}', '{name}', TIMESTAMPTZ '{at.isoformat()}')"
        )

    with smtp_server(box) as port:
        deliver(NOW, port)  # u_mail sent; u_tokyo and u_listed wait (one email a day)
        add_event("x1", "u_mail", "dashboard_shared", NOW + timedelta(hours=2))
        add_event("x2", "u_listed", "account_deleted", NOW + timedelta(hours=1))
        warehouse.connect().raw_sql("DELETE FROM onboarding.intervention_queue")
        deliver(NOW + timedelta(days=1), port)  # u_tokyo sent, u_listed expired (left)
    assert len(box.envelopes) == 2
    rows = user_timeline_rows(
        warehouse,
        ibis.memtable({"user_id": list(USERS)}),
        {},
        config.aha_events,
        EXPERIMENT,
        terminal_events=config.terminal_events,
    )
    assert rows["at"].max() < NOW + timedelta(days=2)  # no wall-clock time anywhere
    by_user = {user: frame for user, frame in rows.groupby("user_id")}
    mail = by_user["u_mail"]
    assert mail.kind.tolist() == ["signup", "queued", "delivered", "activated"]
    assert mail.set_index("kind").loc["delivered", "at"] == NOW  # the run's (and queue's) now
    tokyo = by_user["u_tokyo"].set_index("kind")
    # Sent by the next day's run, and nobody was queued that day: the start of that day.
    assert tokyo.loc["delivered", "at"] == datetime(2026, 11, 3, tzinfo=UTC)
    listed = by_user["u_listed"].set_index("kind")
    assert "delivered" not in listed.index
    assert "user left (account_deleted)" in listed.loc["expired", "detail"]
    assert by_user["u_unsub"].kind.tolist()[-1] == "suppressed"
    assert by_user["u_app"].kind.tolist()[-1] == "delivered"  # the outbox: for a person to send
    assert set(rows.kind) <= set(KIND_ORDER)

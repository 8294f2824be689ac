"""Exactly once across crashes and retries: a delivery process SIGKILLed between the service's
acceptance and the ledger write, an SMTP server that answers QUIT with 421, a job with step
retries. Real slack-sdk against a stub that remembers what was posted, real smtplib against
aiosmtpd, the ledger in real DuckDB / PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster import Definitions, RetryPolicy, define_asset_job
from pytest_httpserver import HTTPServer

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.config.product import ReportSettings
from onboarding_pipeline.orchestration.jobs import report_selection
from onboarding_pipeline.reporting.assets import (
    ENV_DELIVERY_CLOCK,
    build_reporting_assets,
    weekly_partitions,
)
from onboarding_pipeline.reporting.delivery import (
    SENDING,
    SENT,
    SLACK_METADATA_EVENT,
    Ledger,
    deliver_report,
    deployment_id,
)
from onboarding_pipeline.reporting.mail import EmailResource, report_message_id
from onboarding_pipeline.reporting.notion import NotionResource
from onboarding_pipeline.reporting.report import ReportData, load_report, write_report
from onboarding_pipeline.reporting.slack import SlackResource
from onboarding_pipeline.resources import OutputDirResource, ProductConfigResource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline_tests.conftest import POSTGRES_URL
from onboarding_pipeline_tests.delivery_stubs import (
    CHANNEL_ID,
    Inbox,
    SlackStub,
    free_port,
    smtp_server,
    wait_for,
)

WEEK = "2026-10-26"


@pytest.fixture
def clock_after_week(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wall clock of deliveries on the Monday after WEEK: WEEK is the week that just ended."""
    monkeypatch.setenv(ENV_DELIVERY_CLOCK, "2026-11-02T09:00:00+00:00")


RECIPIENTS = ["stakeholders@example.com", "growth@example.com"]
PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def report_folder(tmp_path: Path) -> Path:
    data = ReportData(
        title="Weekly onboarding report",
        week=WEEK,
        week_end="2026-11-01",
        watermark="2026-11-01 00:57 UTC",
        generated_at="2026-11-02 08:00 UTC",
        language="en",
        funnel=[
            {
                "step_index": 1,
                "step": "onboarding_started",
                "users_reached": 90,
                "conversion_from_start": 1.0,
                "users_at_previous": 90,
                "conversion_from_previous": 1.0,
                "dropped": 0,
                "drop_off_rate": 0.0,
                "median_hours_from_previous": None,
            }
        ],
        base_rate=[
            {"cohort": "2026-10-12", "rate": 0.35, "users": 80, "ci_low": 0.25, "ci_high": 0.46}
        ],
    )
    folder = tmp_path / "reports" / WEEK
    write_report(data, folder)
    return folder


@pytest.fixture
def postgres_warehouse() -> Iterator[WarehouseResource]:
    schema = f"onboarding_test_{uuid.uuid4().hex[:8]}"
    warehouse = WarehouseResource(url=POSTGRES_URL, schema_name=schema)
    try:
        yield warehouse
    finally:
        warehouse.connect().drop_database(schema, force=True, cascade=True)
        warehouse.close()


def ledger(warehouse: WarehouseResource) -> pd.DataFrame:
    rows = warehouse.execute(warehouse.table("report_deliveries"))
    return rows.sort_values(["channel", "recipient"]).set_index(["channel", "recipient"])


def start_child(settings: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "onboarding_pipeline_tests.delivery_child", json.dumps(settings)],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill(child: subprocess.Popen[str]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL


def deliver_again(
    warehouse: WarehouseResource, folder: Path, tmp_path: Path, **resources: Any
) -> Any:
    data, charts = load_report(folder)
    return deliver_report(
        warehouse,
        data,
        charts,
        ReportSettings(
            recipients=resources.pop("recipients", []), slack_channel=resources.pop("channel", "")
        ),
        slack=resources.get("slack") or SlackResource(),
        email=resources.get("email") or EmailResource(),
        notion=NotionResource(),
        outbox_root=tmp_path / "outbox",
        log=lambda line: None,
    )


# ---------------------------------------------------------------- SIGKILL


def test_killed_between_slack_reply_and_ledger_write_posts_once(  # type: ignore[no-untyped-def]
    httpserver: HTTPServer, postgres_warehouse, report_folder, tmp_path
) -> None:
    """Slack has the message, the process dies before it hears back: the ledger says
    `sending`; the rerun finds the message by its metadata and does not post it again."""
    stub = SlackStub(httpserver)
    stub.block_after_post = True
    child = start_child(
        {
            "warehouse_url": POSTGRES_URL,
            "schema": postgres_warehouse.schema_name,
            "report_folder": str(report_folder),
            "outbox": str(tmp_path / "outbox"),
            "slack_channel": "#onboarding",
            "slack_base_url": httpserver.url_for("/api/"),
        }
    )
    try:
        wait_for(stub.posted, 60, "chat.postMessage")
        row = ledger(postgres_warehouse).loc[("slack", "#onboarding")]
        assert row.status == SENDING  # the intent was durable before the message left
        key = row.idempotency_key
        assert stub.messages[0]["metadata"]["event_payload"]["idempotency_key"] == key
        kill(child)
    finally:
        stub.release.set()
        if child.poll() is None:
            child.kill()

    # The killed process's session lock on the week is gone with its connection.
    slack = SlackResource(token="xoxb-test", base_url=httpserver.url_for("/api/"))
    stub.block_after_post = False
    result = deliver_again(
        postgres_warehouse, report_folder, tmp_path, slack=slack, channel="#onboarding"
    )

    assert result.failed == {}
    # Found in the history: already sent (its charts uploaded now), not sent by this run.
    assert result.recovered == result.skipped == ["slack:#onboarding"] and result.sent == []
    assert stub.count("chat.postMessage") == 1 and len(stub.messages) == 1
    assert stub.count("conversations.history") == 1
    assert stub.count("files.completeUploadExternal") == 1  # charts, once, in its thread
    assert {f["name"] for f in stub.messages[0]["files"]} == {"base_rate.png", "funnel.png"}
    row = ledger(postgres_warehouse).loc[("slack", "#onboarding")]
    assert (row.status, row.provider_id) == (SENT, f"{CHANNEL_ID}/{stub.messages[0]['ts']}")
    assert row.idempotency_key == key and row.attempts == 2

    # And a third run sends nothing at all.
    calls = len(stub.calls)
    deliver_again(postgres_warehouse, report_folder, tmp_path, slack=slack, channel="#onboarding")
    assert len(stub.calls) == calls


def test_killed_after_charts_uploaded_does_not_upload_them_again(  # type: ignore[no-untyped-def]
    httpserver: HTTPServer, warehouse, report_folder, tmp_path
) -> None:
    stub = SlackStub(httpserver)
    stub.block_after_upload = True
    child = start_child(
        {
            "warehouse_url": warehouse.url,
            "schema": warehouse.schema_name,
            "report_folder": str(report_folder),
            "outbox": str(tmp_path / "outbox"),
            "slack_channel": "#onboarding",
            "slack_base_url": httpserver.url_for("/api/"),
        }
    )
    try:
        wait_for(stub.uploaded, 60, "files.completeUploadExternal")
        kill(child)
    finally:
        stub.release.set()
        if child.poll() is None:
            child.kill()
    assert ledger(warehouse).loc[("slack", "#onboarding")].status == "posted"

    stub.block_after_upload = False
    result = deliver_again(
        warehouse,
        report_folder,
        tmp_path,
        slack=SlackResource(token="xoxb-test", base_url=httpserver.url_for("/api/")),
        channel="#onboarding",
    )
    assert result.sent == ["slack:#onboarding"]
    assert stub.count("chat.postMessage") == 1
    assert stub.count("conversations.replies") == 1
    assert stub.count("files.completeUploadExternal") == 1  # not again
    assert ledger(warehouse).loc[("slack", "#onboarding")].status == SENT


def test_killed_after_smtp_data_resends_with_the_same_message_id(  # type: ignore[no-untyped-def]
    warehouse, report_folder, tmp_path
) -> None:
    """The server has the message but the process dies before the 250: email cannot be looked
    up, so the rerun sends the same message (same Message-ID) again; the other recipient
    gets theirs once."""
    inbox = Inbox()
    inbox.block_data = True
    with smtp_server(inbox) as port:
        child = start_child(
            {
                "warehouse_url": warehouse.url,
                "schema": warehouse.schema_name,
                "report_folder": str(report_folder),
                "outbox": str(tmp_path / "outbox"),
                "recipients": RECIPIENTS,
                "smtp_port": port,
            }
        )
        try:
            wait_for(inbox.received, 60, "SMTP DATA")
            kill(child)
        finally:
            inbox.release.set()
            if child.poll() is None:
                child.kill()
        assert ledger(warehouse).loc[("email", RECIPIENTS[0])].status == SENDING
        inbox.block_data = False
        result = deliver_again(
            warehouse,
            report_folder,
            tmp_path,
            recipients=RECIPIENTS,
            email=EmailResource(
                host="127.0.0.1", port=port, security="none", sender="reports@example.com"
            ),
        )
    assert sorted(result.sent) == sorted(f"email:{r}" for r in RECIPIENTS)
    by_recipient: dict[str, list[str]] = {}
    for envelope, message in zip(inbox.envelopes, inbox.messages(), strict=True):
        by_recipient.setdefault(envelope.rcpt_tos[0], []).append(message["Message-ID"])
    first = by_recipient[RECIPIENTS[0]]
    assert len(first) == 2 and first[0] == first[1]  # the same message, twice
    assert len(by_recipient[RECIPIENTS[1]]) == 1
    rows = ledger(warehouse)
    assert rows.loc[("email", RECIPIENTS[0])].provider_id == first[0]
    assert rows.loc[("email", RECIPIENTS[0])].attempts == 2
    assert rows.loc[("email", RECIPIENTS[1])].attempts == 1
    assert set(rows.status) == {SENT}


# ---------------------------------------------------------------- QUIT 421 and step retries


class QuitRefusedFirstDataDeferred(Inbox):
    """Accepts every message (250 after DATA) but answers QUIT with 421; the first DATA for
    growth@ gets a temporary 451 (a real failure: the step fails and is retried)."""

    def __init__(self) -> None:
        super().__init__()
        self.deferred = False

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if envelope.rcpt_tos == [RECIPIENTS[1]] and not self.deferred:
            self.deferred = True
            return "451 Try again later"
        return await super().handle_DATA(server, session, envelope)

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        return "421 Service not available, closing transmission channel"


def weekly_job_defs(
    tmp_path: Path, warehouse: WarehouseResource, email: EmailResource, **resources: Any
) -> Definitions:
    """weekly_report_job's selection and step retries (without the 30 s delay) on `warehouse`,
    for week WEEK as the current week (`as_of` inside it), email to RECIPIENTS."""
    channel = resources.pop("channel", "")
    config_path = tmp_path / "onboarding.yaml"
    config_path.write_text(
        "aha_events: [dashboard_shared]\npartitions_start_date: 2026-06-01\n"
        "as_of: 2026-10-30T12:00:00Z\n"
        f"report: {{recipients: [{', '.join(RECIPIENTS)}], slack_channel: '{channel}'}}\n"
    )
    config = ProductConfig(aha_events=["dashboard_shared"], partitions_start_date="2026-06-01")
    return Definitions(
        assets=build_reporting_assets(weekly_partitions(config), []),
        jobs=[
            define_asset_job(
                "weekly_report_job",
                selection=report_selection,
                op_retry_policy=RetryPolicy(max_retries=2),
            )
        ],
        resources={
            "warehouse": warehouse,
            "product_config": ProductConfigResource(path=str(config_path)),
            "outputs": OutputDirResource(path=str(tmp_path / "out")),
            "slack": resources.get("slack") or SlackResource(),
            "email": email,
            "notion": NotionResource(),
        },
    )


@pytest.mark.usefixtures("clock_after_week")
def test_quit_421_after_250_counts_as_sent_in_a_job_with_step_retries(tmp_path: Path) -> None:
    inbox = QuitRefusedFirstDataDeferred()
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    with smtp_server(inbox) as port:
        defs = weekly_job_defs(
            tmp_path,
            warehouse,
            EmailResource(
                host="127.0.0.1", port=port, security="none", sender="reports@example.com"
            ),
        )
        result = defs.resolve_job_def("weekly_report_job").execute_in_process(
            partition_key=WEEK, raise_on_error=False
        )
    assert result.success
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 1  # the 451, not the 421s
    # Each recipient got the report exactly once, though every QUIT was answered 421.
    assert sorted(e.rcpt_tos[0] for e in inbox.envelopes) == sorted(RECIPIENTS)
    rows = ledger(warehouse)
    assert set(rows.status) == {SENT}
    assert rows.loc[("email", RECIPIENTS[0])].attempts == 1
    assert rows.loc[("email", RECIPIENTS[1])].attempts == 2
    warehouse.close()


class PickyServer(Inbox):
    """Answers DATA per recipient: 554 for reject@, drops the connection for drop@ (without a
    reply: the client cannot know whether the message was kept), accepts anyone else."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: set[int] = set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.sessions.add(id(session))
        recipient = envelope.rcpt_tos[0]
        if recipient.startswith("reject@"):
            return "554 5.7.1 message rejected as spam"
        if recipient.startswith("drop@"):
            server.transport.close()
            return "250 never heard"
        return await super().handle_DATA(server, session, envelope)


def test_one_recipients_smtp_error_does_not_fail_the_others(
    tmp_path: Path, report_folder: Path
) -> None:
    """A non-ASCII address on a server without SMTPUTF8, a DATA answered 554 and a session
    that dies mid-message each fail their own recipient, with their own error; everyone else
    is still tried (over a new session after the dead one) and gets the report."""
    recipients = [
        "jörg@example.com",  # the server offers no SMTPUTF8
        "reject@example.com",
        "drop@example.com",
        "stakeholders@example.com",
        "growth@example.com",
    ]
    server = PickyServer()
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    data, charts = load_report(report_folder)
    with smtp_server(server, enable_SMTPUTF8=False) as port:
        result = deliver_report(
            warehouse,
            data,
            charts,
            ReportSettings(recipients=recipients, slack_channel=""),
            slack=SlackResource(),
            email=EmailResource(
                host="127.0.0.1", port=port, security="none", sender="reports@example.com"
            ),
            outbox_root=tmp_path / "outbox",
            log=lambda line: None,
        )
    assert sorted(e.rcpt_tos[0] for e in server.envelopes) == sorted(RECIPIENTS)
    assert sorted(result.sent) == sorted(f"email:{r}" for r in RECIPIENTS)
    rows = ledger(warehouse).loc["email"]
    assert rows.loc["jörg@example.com"].status == "failed"
    assert "SMTPUTF8" in rows.loc["jörg@example.com"].last_error
    assert rows.loc["reject@example.com"].status == "failed"
    assert "554" in rows.loc["reject@example.com"].last_error
    assert rows.loc["drop@example.com"].status == "failed"
    assert "SMTPServerDisconnected" in rows.loc["drop@example.com"].last_error
    for recipient in RECIPIENTS:
        assert rows.loc[recipient].status == SENT and pd.isna(rows.loc[recipient].last_error)
    assert len(server.sessions) == 2  # a new session after the one that died
    warehouse.close()


FORCE = {"ops": {"report_deliveries": {"config": {"force": True}}}}


@pytest.mark.usefixtures("clock_after_week")
def test_a_forced_run_with_step_retries_resends_once_and_a_new_forced_run_again(  # type: ignore[no-untyped-def]
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    """`force: true` and a step retry (growth@'s first DATA answered 451): the retry carries
    on with the forced run's own messages, so stakeholders@ and Slack get the forced copy once,
    growth@ once after the retry. A second forced run is a new resend: one more each."""
    inbox = QuitRefusedFirstDataDeferred()
    inbox.deferred = True  # the normal delivery goes through at once
    stub = SlackStub(httpserver)
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    with smtp_server(inbox) as port:
        job = weekly_job_defs(
            tmp_path,
            warehouse,
            EmailResource(
                host="127.0.0.1", port=port, security="none", sender="reports@example.com"
            ),
            slack=SlackResource(token="xoxb-test", base_url=httpserver.url_for("/api/")),
            channel="#onboarding",
        ).resolve_job_def("weekly_report_job")
        normal = job.execute_in_process(partition_key=WEEK, raise_on_error=False)
        assert normal.success and len(inbox.envelopes) == 2 and len(stub.messages) == 1

        inbox.deferred = False  # the forced run's first DATA to growth@ gets a 451 again
        forced = job.execute_in_process(partition_key=WEEK, run_config=FORCE, raise_on_error=False)
        assert forced.success
        retries = [e for e in forced.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
        assert len(retries) == 1
        after_forced = [e.rcpt_tos[0] for e in inbox.envelopes[2:]]
        assert sorted(after_forced) == sorted(RECIPIENTS)  # not stakeholders@ twice
        assert len(stub.messages) == 2  # one forced post, not one per attempt
        forced_ids = {m["Message-ID"] for m in inbox.messages()[2:]}
        forced_keys = {m["metadata"]["event_payload"]["idempotency_key"] for m in stub.messages}
        assert len(forced_ids) == 2 and len(forced_keys) == 2
        assert (
            forced.run_id in next(iter(forced_ids))
            and forced.run_id in stub.messages[1]["metadata"]["event_payload"]["idempotency_key"]
        )
        rows = ledger(warehouse)
        assert set(rows.status) == {SENT}
        assert rows.loc[("email", RECIPIENTS[0])].attempts == 2  # normal + forced
        assert rows.loc[("email", RECIPIENTS[1])].attempts == 3  # normal + 451 + retry

        again = job.execute_in_process(partition_key=WEEK, run_config=FORCE, raise_on_error=False)
        assert again.success
        assert sorted(e.rcpt_tos[0] for e in inbox.envelopes[4:]) == sorted(RECIPIENTS)
        assert len(stub.messages) == 3
        assert not {m["Message-ID"] for m in inbox.messages()[4:]} & forced_ids
    warehouse.close()


# ---------------------------------------------------------------- deployments


def test_two_deployments_on_one_channel_never_take_each_others_message(  # type: ignore[no-untyped-def]
    httpserver: HTTPServer, report_folder, tmp_path
) -> None:
    """Two installs (two warehouses) report the same week to one Slack channel and one
    address. B's first post got no answer (row `sending`); when B looks in the history it
    must not take A's message for its own. And the two emails have different Message-IDs
    (a mail system keeping one message per Message-ID would drop the second)."""
    stub = SlackStub(httpserver)
    inbox = Inbox()
    a = WarehouseResource(url=f"duckdb:///{tmp_path / 'a.duckdb'}")
    b = WarehouseResource(url=f"duckdb:///{tmp_path / 'b.duckdb'}")
    slack = SlackResource(token="xoxb-test", base_url=httpserver.url_for("/api/"))
    unreachable = SlackResource(token="xoxb-test", base_url=f"http://127.0.0.1:{free_port()}/api/")
    try:
        with smtp_server(inbox) as port:
            email = EmailResource(
                host="127.0.0.1", port=port, security="none", sender="reports@example.com"
            )
            lost = deliver_again(
                b, report_folder, tmp_path, slack=unreachable, channel="#onboarding"
            )
            assert "slack:#onboarding" in lost.failed
            assert ledger(b).loc[("slack", "#onboarding")].status == SENDING
            first = deliver_again(
                a,
                report_folder,
                tmp_path,
                slack=slack,
                email=email,
                channel="#onboarding",
                recipients=RECIPIENTS[:1],
            )
            assert first.sent == [f"email:{RECIPIENTS[0]}", "slack:#onboarding"]
            second = deliver_again(
                b,
                report_folder,
                tmp_path,
                slack=slack,
                email=email,
                channel="#onboarding",
                recipients=RECIPIENTS[:1],
            )
        assert second.recovered == [] and second.failed == {}
        assert second.sent == [f"email:{RECIPIENTS[0]}", "slack:#onboarding"]
        assert stub.count("chat.postMessage") == 2 and len(stub.messages) == 2
        keys = [m["metadata"]["event_payload"]["idempotency_key"] for m in stub.messages]
        assert keys[0] != keys[1]
        assert deployment_id(a) in keys[0] and deployment_id(b) in keys[1]
        message_ids = [m["Message-ID"] for m in inbox.messages()]
        assert len(message_ids) == 2 and message_ids[0] != message_ids[1]
        assert deployment_id(b) in message_ids[1]
        assert ledger(b).loc[("slack", "#onboarding")].provider_id.endswith(stub.messages[1]["ts"])
    finally:
        a.close()
        b.close()


def test_ledger_rows_written_before_the_deployment_id_are_still_honoured(  # type: ignore[no-untyped-def]
    httpserver: HTTPServer, warehouse, report_folder, tmp_path
) -> None:
    """A row left `sending` by an older version (key without a deployment id) is checked with
    its own key, and finds its post; an older `failed` email row is retried with its own
    Message-ID, so the retry is still the same message."""
    stub = SlackStub(httpserver)
    old_key = f"onboarding-report:{WEEK}:slack:#onboarding"
    old_message_id = report_message_id(WEEK, RECIPIENTS[0], "reports@example.com")
    assert (
        old_message_id.startswith(f"<onboarding-report.{WEEK}.") and old_message_id.count(".") == 3
    )
    client = SlackResource(token="xoxb-test", base_url=httpserver.url_for("/api/")).client()
    assert client is not None
    client.chat_postMessage(
        channel="#onboarding",
        text="the older version's post",
        metadata={
            "event_type": SLACK_METADATA_EVENT,
            "event_payload": {"idempotency_key": old_key, "report_week": WEEK},
        },
    )
    old = Ledger(warehouse, WEEK)
    old.intend("slack", "#onboarding", old_key, 1)
    old.update("email", RECIPIENTS[0], status="failed", attempts=1, idempotency_key=old_message_id)
    old.save()
    inbox = Inbox()
    with smtp_server(inbox) as port:
        result = deliver_again(
            warehouse,
            report_folder,
            tmp_path,
            slack=SlackResource(token="xoxb-test", base_url=httpserver.url_for("/api/")),
            email=EmailResource(
                host="127.0.0.1", port=port, security="none", sender="reports@example.com"
            ),
            channel="#onboarding",
            recipients=RECIPIENTS[:1],
        )
    assert result.failed == {} and result.recovered == ["slack:#onboarding"]
    assert stub.count("chat.postMessage") == 1  # the older version's post, not a second one
    assert [m["Message-ID"] for m in inbox.messages()] == [old_message_id]
    rows = ledger(warehouse)
    assert set(rows.status) == {SENT}
    assert rows.loc[("slack", "#onboarding")].idempotency_key == old_key


def test_the_deployment_id_is_made_once_even_by_concurrent_first_runs(  # type: ignore[no-untyped-def]
    postgres_warehouse,
) -> None:
    """Two first deliveries at once on a fresh PostgreSQL warehouse agree on one id; it is
    random (nothing of the URL in it) and stays the same afterwards."""
    second = WarehouseResource(url=POSTGRES_URL, schema_name=postgres_warehouse.schema_name)
    try:
        with ThreadPoolExecutor(2) as pool:
            ids = list(pool.map(deployment_id, [postgres_warehouse, second]))
    finally:
        second.close()
    assert ids[0] == ids[1] and re.fullmatch(r"[0-9a-f]{32}", ids[0])
    assert deployment_id(postgres_warehouse) == ids[0]
    stored = postgres_warehouse.execute(postgres_warehouse.table("deployment"))
    assert stored.deployment_id.tolist() == [ids[0]]

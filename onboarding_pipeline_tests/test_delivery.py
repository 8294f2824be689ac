"""Report delivery for real: email received by an aiosmtpd server, Slack through the real
slack-sdk client against a local HTTP stub, the ledger in a real DuckDB warehouse, the
outbox when no credentials are configured, and the Dagster assets with `force` run config."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from dagster import materialize
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.config.product import ReportSettings
from onboarding_pipeline.reporting.assets import (
    ENV_DELIVERY_CLOCK,
    build_reporting_assets,
    delivery_outcome,
    report_run_lines,
    weekly_partitions,
)
from onboarding_pipeline.reporting.delivery import deliver_report, slack_blocks, slack_escape
from onboarding_pipeline.reporting.mail import EmailResource
from onboarding_pipeline.reporting.notion import NotionResource
from onboarding_pipeline.reporting.report import ReportData, load_report, write_report
from onboarding_pipeline.reporting.slack import SlackResource
from onboarding_pipeline.resources import OutputDirResource, ProductConfigResource
from onboarding_pipeline.warehouse import WarehouseResource

WEEK = "2026-10-26"


@pytest.fixture
def clock_after_week(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wall clock of deliveries on the Monday after WEEK: WEEK is the week that just ended."""
    monkeypatch.setenv(ENV_DELIVERY_CLOCK, "2026-11-02T09:00:00+00:00")


POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
RECIPIENTS = ["stakeholders@example.com", "growth@example.com"]
CONFIG = ProductConfig(
    aha_events=["dashboard_shared"],
    partitions_start_date="2026-06-01",
    report={"recipients": RECIPIENTS, "slack_channel": "#onboarding"},
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Inbox:
    """aiosmtpd handler keeping every accepted envelope."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(e.content, policy=email.policy.default)  # type: ignore[misc]
            for e in self.envelopes
        ]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
        ok = isinstance(auth, LoginPassword) and (auth.login, auth.password) == (
            b"reporter",
            b"s3cret",
        )
        return AuthResult(success=ok)

    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticate,
        auth_require_tls=False,  # a local test relay without TLS
    )
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
def report(tmp_path: Path) -> tuple[ReportData, dict[str, bytes]]:
    """A written report with both charts, read back the way the delivery asset reads it."""
    data = ReportData(
        title="Weekly onboarding report",
        week=WEEK,
        week_end="2026-11-01",
        watermark="2026-11-01 00:57 UTC",
        generated_at="2026-11-02 08:00 UTC",
        language="en",
        kpis=[
            {
                "kpi": "activation_rate",
                "label": "Activation rate",
                "unit": "rate",
                "cohort": "2026-10-12",
                "value": 0.35,
                "users": 80,
                "ci_low": 0.25,
                "ci_high": 0.46,
                "previous_cohort": "2026-10-05",
                "previous_value": 0.4,
                "change": -0.05,
                "all_signups": 0.37,
                "target": 0.4,
                "meets_target": False,
            }
        ],
        funnel=[
            {
                "step_index": i + 1,
                "step": step,
                "users_reached": n,
                "conversion_from_start": n / 100,
                "users_at_previous": p,
                "conversion_from_previous": n / p,
                "dropped": p - n,
                "drop_off_rate": 1 - n / p,
                "median_hours_from_previous": 1.0,
            }
            for i, (step, n, p) in enumerate(
                [("onboarding_started", 90, 100), ("dashboard_shared", 30, 90)]
            )
        ],
        base_rate=[
            {"cohort": "2026-10-05", "rate": 0.4, "users": 90, "ci_low": 0.3, "ci_high": 0.5},
            {"cohort": "2026-10-12", "rate": 0.35, "users": 80, "ci_low": 0.25, "ci_high": 0.46},
        ],
        review=[
            {
                "area": "kpis",
                "severity": 0.125,
                "title": "Activation rate misses its target <b>now</b>",
                "evidence": "35% vs 40% & falling",
                "owner": "Maria",
            }
        ],
    )
    folder = tmp_path / "reports" / WEEK
    write_report(data, folder)
    return load_report(folder)


def deliver(
    warehouse: WarehouseResource,
    report: tuple[ReportData, dict[str, bytes]],
    tmp_path: Path,
    *,
    slack: SlackResource | None = None,
    email_resource: EmailResource | None = None,
    force: bool = False,
) -> Any:
    data, charts = report
    return deliver_report(
        warehouse,
        data,
        charts,
        CONFIG.report,
        slack=slack or SlackResource(),
        email=email_resource or EmailResource(),
        outbox_root=tmp_path / "outbox",
        force=force,
        log=lambda line: None,
    )


def ledger(warehouse: WarehouseResource) -> pd.DataFrame:
    rows = warehouse.execute(warehouse.table("report_deliveries"))
    return rows.sort_values(["channel", "recipient"]).reset_index(drop=True)


def smtp_resource(port: int, **settings: Any) -> EmailResource:
    return EmailResource(
        host="127.0.0.1", port=port, security="none", sender="reports@example.com", **settings
    )


# ---------------------------------------------------------------- email


def test_email_received_with_text_html_and_inline_charts(smtp, warehouse, report, tmp_path) -> None:  # type: ignore[no-untyped-def]
    inbox, port = smtp
    result = deliver(
        warehouse,
        report,
        tmp_path,
        email_resource=smtp_resource(port, username="reporter", password="s3cret"),
    )
    assert result.failed == {}
    assert sorted(result.sent) == sorted(f"email:{r}" for r in RECIPIENTS)
    # One message per recipient: nobody sees the other addresses.
    assert [e.rcpt_tos for e in inbox.envelopes] == [[r] for r in RECIPIENTS]
    assert {e.mail_from for e in inbox.envelopes} == {"reports@example.com"}
    assert [m["To"] for m in inbox.messages()] == RECIPIENTS
    assert "Bcc" not in inbox.messages()[0] and "Cc" not in inbox.messages()[0]
    message_ids = {r: m["Message-ID"] for r, m in zip(RECIPIENTS, inbox.messages(), strict=True)}
    assert len(set(message_ids.values())) == 2
    assert all(m.startswith(f"<onboarding-report.{WEEK}.") for m in message_ids.values())

    message = inbox.messages()[0]
    assert message["Subject"] == f"Weekly onboarding report: week of {WEEK}"
    assert message.get_content_type() == "multipart/alternative"
    plain, related = message.get_payload()  # type: ignore[misc]
    assert plain.get_content_type() == "text/plain"
    assert "Activation rate misses its target <b>now</b>" in plain.get_content()
    assert related.get_content_type() == "multipart/related"
    html_part, *images = related.get_payload()
    assert html_part.get_content_type() == "text/html"
    html = html_part.get_content()
    # User text escaped in the HTML; charts referenced by Content-ID, not embedded as data.
    assert "&lt;b&gt;now&lt;/b&gt;" in html and "<b>now</b>" not in html
    assert "data:image/png" not in html
    assert sorted(part.get_content_type() for part in images) == ["image/png", "image/png"]
    for part in images:
        content_id = part["Content-ID"].strip("<>")
        assert f'src="cid:{content_id}"' in html
        assert part.get_content().startswith(b"\x89PNG")

    rows = ledger(warehouse)
    email_rows = rows[rows.channel == "email"]
    assert list(email_rows.status) == ["sent", "sent"]
    assert list(email_rows.attempts) == [1, 1]
    assert dict(zip(email_rows.recipient, email_rows.provider_id, strict=True)) == message_ids
    assert list(email_rows.idempotency_key) == list(email_rows.provider_id)
    assert email_rows.sent_at.notna().all()
    # No Slack token: Slack went to the outbox in the same run.
    assert rows[rows.channel == "slack"].status.tolist() == ["outbox"]


def test_rerun_sends_nothing_new_and_force_resends(smtp, warehouse, report, tmp_path) -> None:  # type: ignore[no-untyped-def]
    inbox, port = smtp
    resource = smtp_resource(port)
    deliver(warehouse, report, tmp_path, email_resource=resource)
    again = deliver(warehouse, report, tmp_path, email_resource=resource)
    assert len(inbox.envelopes) == 2  # one per recipient, once
    assert again.sent == []
    assert sorted(again.skipped) == sorted(f"email:{r}" for r in RECIPIENTS)
    assert ledger(warehouse).query("channel == 'email'").attempts.tolist() == [1, 1]

    forced = deliver(warehouse, report, tmp_path, email_resource=resource, force=True)
    assert len(inbox.envelopes) == 4
    assert sorted(forced.sent) == sorted(f"email:{r}" for r in RECIPIENTS)
    # A deliberate resend is a new message: a new Message-ID (mail systems would drop a repeat).
    first, resent = inbox.messages()[:2], inbox.messages()[2:]
    assert not {m["Message-ID"] for m in first} & {m["Message-ID"] for m in resent}
    rows = ledger(warehouse)
    assert len(rows) == 3  # still one row per (week, channel, recipient)
    assert rows.query("channel == 'email'").attempts.tolist() == [2, 2]


async def refuse_growth(server, session, envelope, address, options):  # type: ignore[no-untyped-def]
    """An aiosmtpd RCPT handler that refuses growth@ and accepts everyone else."""
    if address.startswith("growth@"):
        return "550 mailbox unavailable"
    envelope.rcpt_tos.append(address)
    return "250 OK"


def test_refused_recipient_stays_retryable(smtp, warehouse, report, tmp_path) -> None:  # type: ignore[no-untyped-def]
    inbox, port = smtp

    inbox.handle_RCPT = refuse_growth  # type: ignore[attr-defined]
    result = deliver(warehouse, report, tmp_path, email_resource=smtp_resource(port))
    assert result.sent == ["email:stakeholders@example.com"]
    assert list(result.failed) == ["email:growth@example.com"]
    rows = ledger(warehouse).set_index("recipient")
    assert rows.loc["growth@example.com", "status"] == "failed"
    assert "550" in rows.loc["growth@example.com", "last_error"]

    del inbox.handle_RCPT  # type: ignore[attr-defined]
    retry = deliver(warehouse, report, tmp_path, email_resource=smtp_resource(port))
    assert retry.sent == ["email:growth@example.com"]
    assert inbox.envelopes[-1].rcpt_tos == ["growth@example.com"]


def test_a_failed_forced_resend_keeps_no_provider_id_of_the_earlier_send(  # type: ignore[no-untyped-def]
    smtp, warehouse, report, tmp_path
) -> None:
    inbox, port = smtp
    deliver(warehouse, report, tmp_path, email_resource=smtp_resource(port))
    sent = ledger(warehouse).set_index("recipient").loc["growth@example.com"]
    assert sent.status == "sent" and sent.provider_id

    inbox.handle_RCPT = refuse_growth  # type: ignore[attr-defined]
    forced = deliver(warehouse, report, tmp_path, email_resource=smtp_resource(port), force=True)
    assert list(forced.failed) == ["email:growth@example.com"]
    row = ledger(warehouse).set_index("recipient").loc["growth@example.com"]
    assert row.status == "failed" and "550" in row.last_error
    assert pd.isna(row.provider_id)  # not the Message-ID of last run's (other) message


def test_an_idn_address_is_delivered_and_recorded_in_its_punycode_form(  # type: ignore[no-untyped-def]
    smtp, warehouse, report, tmp_path
) -> None:
    inbox, port = smtp
    data, charts = report
    result = deliver_report(
        warehouse,
        data,
        charts,
        ReportSettings(
            # Listing it twice, once in punycode, fails at config load (test_delivery_settings).
            recipients=["Ana@Bücher.Example"],
            slack_channel="",
        ),
        slack=SlackResource(),
        email=smtp_resource(port),
        outbox_root=tmp_path / "outbox",
        log=lambda line: None,
    )
    assert result.sent == ["email:Ana@xn--bcher-kva.example"]
    assert [e.rcpt_tos for e in inbox.envelopes] == [["Ana@xn--bcher-kva.example"]]
    assert inbox.messages()[0]["To"] == "Ana@xn--bcher-kva.example"
    assert ledger(warehouse).recipient.tolist() == ["Ana@xn--bcher-kva.example"]


# ---------------------------------------------------------------- Slack


def slack_stub(httpserver: HTTPServer, calls: list[str]) -> None:
    """chat.postMessage and the three steps of files_upload_v2, recording each call."""

    def record(name: str, body: dict[str, Any]) -> Any:
        def handler(request: Request) -> Response:
            calls.append(name)
            return Response(json.dumps(body), content_type="application/json")

        return handler

    httpserver.expect_request("/api/chat.postMessage", method="POST").respond_with_handler(
        record("chat.postMessage", {"ok": True, "channel": "C0123", "ts": "1730419200.000100"})
    )
    httpserver.expect_request(
        "/api/files.getUploadURLExternal", method="POST"
    ).respond_with_handler(
        record(
            "files.getUploadURLExternal",
            {"ok": True, "upload_url": httpserver.url_for("/upload/F1"), "file_id": "F1"},
        )
    )
    httpserver.expect_request("/upload/F1", method="POST").respond_with_handler(
        record("upload", {"ok": True})
    )
    httpserver.expect_request(
        "/api/files.completeUploadExternal", method="POST"
    ).respond_with_handler(
        record("files.completeUploadExternal", {"ok": True, "files": [{"id": "F1"}]})
    )
    # What a rerun reads before it posts again or uploads the charts: an empty channel.
    for method in ("conversations.history", "conversations.replies"):
        httpserver.expect_request(f"/api/{method}").respond_with_handler(
            record(method, {"ok": True, "messages": [], "has_more": False})
        )


def slack_resource(httpserver: HTTPServer, **settings: Any) -> SlackResource:
    return SlackResource(token="xoxb-test", base_url=httpserver.url_for("/api/"), **settings)


def test_slack_summary_and_charts(httpserver: HTTPServer, warehouse, report, tmp_path) -> None:  # type: ignore[no-untyped-def]
    calls: list[str] = []
    slack_stub(httpserver, calls)
    result = deliver(warehouse, report, tmp_path, slack=slack_resource(httpserver))
    assert result.failed == {}
    assert "slack:#onboarding" in result.sent
    # One message, then per chart an upload URL and an upload, completed once in the thread.
    assert calls[0] == "chat.postMessage"
    assert calls.count("files.getUploadURLExternal") == calls.count("upload") == 2
    assert calls.count("files.completeUploadExternal") == 1

    posted = next(
        request for request, _ in httpserver.log if request.path == "/api/chat.postMessage"
    )
    assert posted.headers["Authorization"] == "Bearer xoxb-test"
    payload = posted.get_json() if posted.is_json else dict(posted.form)
    blocks = (
        payload["blocks"] if isinstance(payload["blocks"], list) else json.loads(payload["blocks"])
    )
    assert payload["channel"] == "#onboarding"
    assert blocks[0]["type"] == "header"
    review = json.dumps(blocks)
    # Slack mrkdwn control characters from the data are escaped.
    assert "&lt;b&gt;now&lt;/b&gt;" in review and "35% vs 40% &amp; falling" in review
    completed = next(
        request
        for request, _ in httpserver.log
        if request.path == "/api/files.completeUploadExternal"
    )
    assert completed.form["channel_id"] == "C0123"
    assert completed.form["thread_ts"] == "1730419200.000100"

    row = ledger(warehouse).set_index("channel").loc["slack"]
    assert (row.status, row.attempts, row.provider_id) == ("sent", 1, "C0123/1730419200.000100")
    # Sent once: a re-run does not post again.
    before = len(calls)
    deliver(warehouse, report, tmp_path, slack=slack_resource(httpserver))
    assert len(calls) == before


def test_slack_rate_limit_is_retried_after_retry_after(  # type: ignore[no-untyped-def]
    httpserver: HTTPServer, warehouse, report, tmp_path
) -> None:
    calls: list[str] = []
    # One-shot handlers answer before permanent ones: first a 429, then the stub succeeds.
    httpserver.expect_oneshot_request("/api/chat.postMessage").respond_with_json(
        {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "1"}
    )
    slack_stub(httpserver, calls)
    started = time.monotonic()
    result = deliver(warehouse, report, tmp_path, slack=slack_resource(httpserver))
    assert time.monotonic() - started >= 1.0  # waited as told
    assert "slack:#onboarding" in result.sent
    posts = [r for r, _ in httpserver.log if r.path == "/api/chat.postMessage"]
    assert len(posts) == 2
    row = ledger(warehouse).set_index("channel").loc["slack"]
    assert (row.status, row.attempts) == ("sent", 1)  # one delivery attempt, retried inside


def test_slack_server_error_leaves_ledger_retryable_and_email_goes_out(  # type: ignore[no-untyped-def]
    httpserver: HTTPServer, smtp, warehouse, report, tmp_path
) -> None:
    inbox, port = smtp
    httpserver.expect_request("/api/chat.postMessage").respond_with_data(
        "upstream down", status=500
    )
    result = deliver(
        warehouse,
        report,
        tmp_path,
        slack=slack_resource(httpserver, max_server_error_retries=1),
        email_resource=smtp_resource(port),
    )
    posts = [r for r, _ in httpserver.log if r.path == "/api/chat.postMessage"]
    assert len(posts) == 2  # the first try and one retry with backoff
    assert list(result.failed) == ["slack:#onboarding"]
    assert len(inbox.envelopes) == 2  # email (one per recipient) not blocked by Slack
    rows = ledger(warehouse).set_index("channel")
    slack_row = rows.loc["slack"]
    assert (slack_row.status, slack_row.attempts) == ("failed", 1)
    assert "500" in slack_row.last_error
    assert (rows.loc["email"].status == "sent").all()

    # Slack is back: the next run sends only Slack.
    httpserver.clear()
    calls: list[str] = []
    slack_stub(httpserver, calls)
    retry = deliver(
        warehouse,
        report,
        tmp_path,
        slack=slack_resource(httpserver),
        email_resource=smtp_resource(port),
    )
    assert retry.sent == ["slack:#onboarding"]
    assert len(inbox.envelopes) == 2
    slack_row = ledger(warehouse).set_index("channel").loc["slack"]
    assert (slack_row.status, slack_row.attempts) == ("sent", 2)
    assert pd.isna(slack_row.last_error)


def test_slack_upload_failure_does_not_post_the_text_twice(  # type: ignore[no-untyped-def]
    httpserver: HTTPServer, warehouse, report, tmp_path
) -> None:
    httpserver.expect_request("/api/chat.postMessage").respond_with_json(
        {"ok": True, "channel": "C0123", "ts": "1.5"}
    )
    httpserver.expect_request("/api/files.getUploadURLExternal").respond_with_json(
        {"ok": False, "error": "not_allowed_token_type"}
    )
    first = deliver(warehouse, report, tmp_path, slack=slack_resource(httpserver))
    assert "not_allowed_token_type" in first.failed["slack:#onboarding"]
    assert ledger(warehouse).set_index("channel").loc["slack"].status == "posted"

    httpserver.clear()
    calls: list[str] = []
    slack_stub(httpserver, calls)
    deliver(warehouse, report, tmp_path, slack=slack_resource(httpserver))
    assert "chat.postMessage" not in calls and "files.completeUploadExternal" in calls
    completed = next(r for r, _ in httpserver.log if r.path == "/api/files.completeUploadExternal")
    assert completed.form["thread_ts"] == "1.5"
    assert ledger(warehouse).set_index("channel").loc["slack"].status == "sent"


# ---------------------------------------------------------------- outbox


def test_outbox_without_credentials_then_sent_once_configured(  # type: ignore[no-untyped-def]
    smtp, warehouse, report, tmp_path
) -> None:
    inbox, port = smtp
    result = deliver(warehouse, report, tmp_path)
    outbox = tmp_path / "outbox" / WEEK
    assert sorted(result.outbox) == sorted(
        [*(f"email:{r}" for r in RECIPIENTS), "slack:#onboarding"]
    )
    assert result.sent == [] and result.failed == {}
    for recipient in RECIPIENTS:
        eml = email.message_from_bytes(
            (outbox / "email" / f"{recipient}.eml").read_bytes(), policy=email.policy.default
        )
        assert eml["To"] == recipient
        assert eml.get_content_type() == "multipart/alternative"
    slack = json.loads((outbox / "slack.json").read_text())
    assert slack["chat.postMessage"]["channel"] == "#onboarding"
    assert slack["chat.postMessage"]["blocks"][0]["type"] == "header"
    assert [f["filename"] for f in slack["files_upload_v2"]] == ["base_rate.png", "funnel.png"]
    rows = ledger(warehouse)
    assert set(rows.status) == {"outbox"} and (rows.attempts == 0).all()
    assert set(rows.outbox_path) == {
        *(str(outbox / "email" / f"{r}.eml") for r in RECIPIENTS),
        str(outbox / "slack.json"),
    }

    # Credentials arrive: the outbox rows are delivered for real, once.
    later = deliver(warehouse, report, tmp_path, email_resource=smtp_resource(port))
    assert sorted(later.sent) == sorted(f"email:{r}" for r in RECIPIENTS)
    assert len(inbox.envelopes) == 2


def test_slack_escape() -> None:
    assert slack_escape("<!channel> & <@U1>") == "&lt;!channel&gt; &amp; &lt;@U1&gt;"


def mrkdwn_objects(value: Any) -> Iterator[dict[str, Any]]:
    """Every mrkdwn text object inside a Block Kit payload."""
    if isinstance(value, dict):
        if value.get("type") == "mrkdwn":
            yield value
        for child in value.values():
            yield from mrkdwn_objects(child)
    elif isinstance(value, list):
        for child in value:
            yield from mrkdwn_objects(child)


HOSTILE_TITLE = "<!here> Weekly <@U0BOSS> <https://evil.example|report>"


def test_slack_mentions_and_links_from_config_and_data_arrive_as_text(  # type: ignore[no-untyped-def]
    httpserver: HTTPServer, warehouse, report, tmp_path
) -> None:
    """The title (config), a KPI label, a review item and a "not enough data" reason (data)
    carry Slack control sequences; the payload the real slack-sdk posts has them as text."""
    data, charts = report
    data.title = HOSTILE_TITLE
    data.kpis[0]["label"] = "Activation <!channel>"
    data.review[0].update(
        owner="<@U0OWNER>", evidence="Log in at <https://evil.example/login|our site> & see"
    )
    calls: list[str] = []
    slack_stub(httpserver, calls)

    result = deliver(warehouse, (data, charts), tmp_path, slack=slack_resource(httpserver))

    assert result.failed == {} and "slack:#onboarding" in result.sent
    posted = next(
        request for request, _ in httpserver.log if request.path == "/api/chat.postMessage"
    )
    payload = posted.get_json() if posted.is_json else dict(posted.form)
    blocks = (
        payload["blocks"] if isinstance(payload["blocks"], list) else json.loads(payload["blocks"])
    )
    # The notification text: every control sequence of the title is escaped.
    assert payload["text"] == (
        f"&lt;!here&gt; Weekly &lt;@U0BOSS&gt; &lt;https://evil.example|report&gt;: week of {WEEK}"
    )
    # The header is plain_text (never parsed by Slack): the title as configured.
    assert blocks[0]["text"] == {"type": "plain_text", "text": f"{HOSTILE_TITLE}: week of {WEEK}"}
    texts = list(mrkdwn_objects(blocks))
    assert texts and all(t["verbatim"] is True for t in texts)
    # No raw `<` or `>` anywhere in mrkdwn: no mention, broadcast or disguised link survives.
    assert not any("<" in t["text"] or ">" in t["text"] for t in texts)
    joined = "\n".join(t["text"] for t in texts)
    assert "*Activation &lt;!channel&gt;* :warning:" in joined
    assert "(&lt;@U0OWNER&gt;)" in joined
    assert "Log in at &lt;https://evil.example/login|our site&gt; &amp; see" in joined
    # The formatting the summary adds itself is still markup.
    assert "*Issues for the weekly review*" in joined

    data.kpis = None
    data.missing["kpis"] = "no cohort <!everyone>"
    _, empty_blocks = slack_blocks(data)
    assert "_Not enough data yet: no cohort &lt;!everyone&gt;._" in [
        t["text"] for t in mrkdwn_objects(empty_blocks)
    ]


def test_slack_text_cut_to_the_limit_never_ends_in_half_an_entity(report) -> None:  # type: ignore[no-untyped-def]
    data, _ = report
    for length in range(2990, 2996):  # every offset of a 5-character `&amp;` at the cut
        data.review[0]["evidence"] = "x" * length + "&" * 400
        _, blocks = slack_blocks(data)
        section = next(t["text"] for t in mrkdwn_objects(blocks) if "weekly review" in t["text"])
        assert len(section) <= 3000
        assert section.endswith(("x", "&amp;")), section[-8:]


# ---------------------------------------------------------------- Dagster assets


@pytest.mark.usefixtures("clock_after_week")
def test_assets_deliver_once_and_force_resends(smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The assets on an empty warehouse (a fresh install): the report renders with "not enough
    data yet", email is sent once, `force: true` in run config sends again."""
    inbox, port = smtp
    config_path = tmp_path / "onboarding.yaml"
    config_path.write_text(
        "aha_events: [dashboard_shared]\npartitions_start_date: 2026-06-01\n"
        # The data's "now" in the report week (the clock, pinned, says it just ended).
        "as_of: 2026-10-30T12:00:00Z\n"
        f"report: {{recipients: [{RECIPIENTS[0]}], slack_channel: '#onboarding'}}\n"
    )
    config = ProductConfig(aha_events=["dashboard_shared"], partitions_start_date="2026-06-01")
    assets = build_reporting_assets(weekly_partitions(config), [])
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    resources = {
        "warehouse": warehouse,
        "product_config": ProductConfigResource(path=str(config_path)),
        "outputs": OutputDirResource(path=str(tmp_path / "out")),
        "slack": SlackResource(),
        "email": smtp_resource(port),
        "notion": NotionResource(),
    }
    first = materialize(assets, resources=resources, partition_key=WEEK)
    assert first.success
    html = (tmp_path / "out" / "reports" / WEEK / "report.html").read_text()
    assert "Not enough data yet" in html
    assert len(inbox.envelopes) == 1
    deliveries = first.asset_materializations_for_node("report_deliveries")[0].metadata
    assert deliveries["sent"].value == [f"email:{RECIPIENTS[0]}"]
    assert deliveries["outbox"].value == ["slack:#onboarding"]
    report_meta = first.asset_materializations_for_node("weekly_report")[0].metadata
    assert report_meta["report_html"].value.endswith(f"{WEEK}/report.html")

    again = materialize(assets[1:], resources=resources, partition_key=WEEK)
    assert again.success and len(inbox.envelopes) == 1
    forced = materialize(
        assets[1:],
        resources=resources,
        partition_key=WEEK,
        run_config={"ops": {"report_deliveries": {"config": {"force": True}}}},
    )
    assert forced.success and len(inbox.envelopes) == 2
    warehouse.close()


@pytest.mark.usefixtures("clock_after_week")
def test_asset_fails_visibly_when_a_channel_fails(  # type: ignore[no-untyped-def]
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    httpserver.expect_request("/api/chat.postMessage").respond_with_json(
        {"ok": False, "error": "channel_not_found"}
    )
    config_path = tmp_path / "onboarding.yaml"
    config_path.write_text(
        "aha_events: [dashboard_shared]\npartitions_start_date: 2026-06-01\n"
        "as_of: 2026-10-30T12:00:00Z\n"
    )
    config = ProductConfig(aha_events=["dashboard_shared"], partitions_start_date="2026-06-01")
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    result = materialize(
        build_reporting_assets(weekly_partitions(config), []),
        resources={
            "warehouse": warehouse,
            "product_config": ProductConfigResource(path=str(config_path)),
            "outputs": OutputDirResource(path=str(tmp_path / "out")),
            "slack": slack_resource(httpserver),
            "email": EmailResource(),
            "notion": NotionResource(),
        },
        partition_key=WEEK,
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "channel_not_found" in str(failure.step_failure_data.error.message)
    rows = ledger(warehouse)
    assert rows.status.tolist() == ["failed"]
    warehouse.close()


# ---------------------------------------------------------------- TLS and PostgreSQL


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_email_over_tls_with_login(  # type: ignore[no-untyped-def]
    security: str, certificate, warehouse, report, tmp_path
) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    inbox, port = Inbox(), free_port()
    logins: list[bytes] = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
        logins.append(auth.login)
        return AuthResult(success=(auth.login, auth.password) == (b"reporter", b"s3cret"))

    tls = (
        {"tls_context": server_tls, "require_starttls": True}
        if security == "starttls"
        # aiosmtpd does not count implicit TLS as TLS for AUTH; the socket is TLS all the same.
        else {"ssl_context": server_tls, "auth_require_tls": False}
    )
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, authenticator=authenticate, **tls
    )
    controller.start()
    try:
        resource = EmailResource(
            host="127.0.0.1",
            port=port,
            security=security,  # type: ignore[arg-type]
            username="reporter",
            password="s3cret",
            ca_file=str(cert),
        )
        result = deliver(warehouse, report, tmp_path, email_resource=resource)
        assert result.failed == {}
        # One session for both messages: one login.
        assert len(inbox.envelopes) == 2 and logins == [b"reporter"]
        # Without the CA the certificate is rejected: nothing is sent, the ledger says why.
        untrusted = resource.model_copy(update={"ca_file": None})
        failed = deliver(warehouse, report, tmp_path, email_resource=untrusted, force=True)
        assert "CERTIFICATE_VERIFY_FAILED" in failed.failed["email:stakeholders@example.com"]
        assert len(inbox.envelopes) == 2
        assert set(ledger(warehouse).query("channel == 'email'").status) == {"failed"}
    finally:
        controller.stop()


def test_ledger_on_postgres(smtp, report, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same delivery code with the warehouse on PostgreSQL (own schema, dropped after)."""
    inbox, port = smtp
    schema = f"onboarding_test_{uuid.uuid4().hex[:8]}"
    warehouse = WarehouseResource(url=POSTGRES_URL, schema_name=schema)
    try:
        deliver(warehouse, report, tmp_path, email_resource=smtp_resource(port))
        again = deliver(warehouse, report, tmp_path, email_resource=smtp_resource(port))
        assert len(inbox.envelopes) == 2 and again.sent == []
        rows = ledger(warehouse)
        assert rows.status.tolist() == ["sent", "sent", "outbox"]
        assert rows.attempts.tolist() == [1, 1, 0]
    finally:
        warehouse.connect().drop_database(schema, force=True, cascade=True)
        warehouse.close()


@pytest.mark.usefixtures("clock_after_week")
def test_a_concurrent_run_that_finds_the_week_sent_says_already_sent(  # type: ignore[no-untyped-def]
    httpserver: HTTPServer, smtp, tmp_path: Path
) -> None:
    """Two `report_deliveries` runs at once on one PostgreSQL warehouse: one sends, the other
    waits for the week's lock and finds every row `sent`. Its metadata and the run summary
    line built from it say "already sent", not "sent"."""
    inbox, port = smtp

    def slow_post(request: Request) -> Response:
        time.sleep(1)  # the other run is waiting for the lock meanwhile
        body = {"ok": True, "channel": "C0123", "ts": "1730419200.000100"}
        return Response(json.dumps(body), content_type="application/json")

    httpserver.expect_request("/api/chat.postMessage").respond_with_handler(slow_post)
    slack_stub(httpserver, [])
    config_path = tmp_path / "onboarding.yaml"
    config_path.write_text(
        "aha_events: [dashboard_shared]\npartitions_start_date: 2026-06-01\n"
        "as_of: 2026-10-30T12:00:00Z\n"
        f"report: {{recipients: [{', '.join(RECIPIENTS)}], slack_channel: '#onboarding'}}\n"
    )
    config = ProductConfig(aha_events=["dashboard_shared"], partitions_start_date="2026-06-01")
    weekly_report, report_deliveries = build_reporting_assets(weekly_partitions(config), [])
    schema = f"onboarding_test_{uuid.uuid4().hex[:8]}"

    def resources() -> dict[str, Any]:
        # A warehouse of its own per run: its own connection, so its own advisory locks.
        return {
            "warehouse": WarehouseResource(url=POSTGRES_URL, schema_name=schema),
            "product_config": ProductConfigResource(path=str(config_path)),
            "outputs": OutputDirResource(path=str(tmp_path / "out")),
            "slack": slack_resource(httpserver),
            "email": smtp_resource(port),
            "notion": NotionResource(),
        }

    def deliveries_run(_: int) -> Any:
        return materialize([report_deliveries], resources=resources(), partition_key=WEEK)

    warehouse = WarehouseResource(url=POSTGRES_URL, schema_name=schema)
    try:
        assert materialize([weekly_report], resources=resources(), partition_key=WEEK).success
        with ThreadPoolExecutor(2) as pool:
            runs = list(pool.map(deliveries_run, range(2)))
        assert all(run.success for run in runs)
        everything = sorted([*(f"email:{r}" for r in RECIPIENTS), "slack:#onboarding"])
        metadata = [
            run.asset_materializations_for_node("report_deliveries")[0].metadata for run in runs
        ]
        sent_by = [sorted(m["sent"].value) for m in metadata]
        winner = sent_by.index(everything)
        loser = metadata[1 - winner]
        assert loser["sent"].value == [] and sorted(loser["already_sent"].value) == everything
        assert len(inbox.envelopes) == 2
        assert len([r for r, _ in httpserver.log if r.path == "/api/chat.postMessage"]) == 1

        lines = {
            index: "\n".join(
                report_run_lines(tmp_path / "out", warehouse, WEEK, delivery_outcome(runs[index]))
            )
            for index in (winner, 1 - winner)
        }
        assert "already sent" not in lines[winner]
        assert f"email delivery:     sent: {', '.join(RECIPIENTS)}" in lines[winner]
        assert "slack delivery:     sent: #onboarding" in lines[winner]
        assert (
            "email delivery:     already sent (by an earlier or concurrent run), not sent "
            in (lines[1 - winner])
        )
        assert ": sent:" not in lines[1 - winner]
    finally:
        warehouse.connect().drop_database(schema, force=True, cascade=True)
        warehouse.close()

"""Delivery of the intervention queue, for real: email received by aiosmtpd, the in-app
webhook by a local HTTP receiver that verifies the signature, Slack hand-offs through the
real slack-sdk client against the local stub, the ledger in a real DuckDB warehouse, the
outbox when a channel has no credentials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster import materialize
from pytest_httpserver import HTTPServer

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.outreach.assets import held_out_deliveries, intervention_deliveries
from onboarding_pipeline.outreach.deliver import DeliveryRun, deliver_interventions
from onboarding_pipeline.outreach.resource import OutreachResource
from onboarding_pipeline.reporting.mail import EmailResource
from onboarding_pipeline.reporting.slack import SlackResource
from onboarding_pipeline.resources import OutputDirResource, ProductConfigResource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.tables import INTERVENTION_DELIVERIES
from onboarding_pipeline_tests.conftest import POSTGRES_URL
from onboarding_pipeline_tests.delivery_stubs import Inbox, SlackStub, smtp_server, wait_for
from onboarding_pipeline_tests.outreach_world import (
    EXPERIMENT,
    NOW,
    SECRET,
    USERS,
    WebhookReceiver,
    seed,
)

TREATED = sorted(u for u, spec in USERS.items() if not spec[2])


def make_config(**delivery: Any) -> ProductConfig:
    return ProductConfig(
        aha_events=["dashboard_shared"],
        partitions_start_date="2026-06-01",
        report={"slack_channel": "#onboarding"},
        interventions={"delivery": delivery},
    )


@pytest.fixture
def seeded(warehouse: WarehouseResource) -> WarehouseResource:
    seed(warehouse)
    return warehouse


def run(
    warehouse: WarehouseResource,
    tmp_path: Path,
    config: ProductConfig | None = None,
    *,
    email: EmailResource | None = None,
    slack: SlackResource | None = None,
    outreach: OutreachResource | None = None,
    now: Any = NOW,
    suppression: Path | None = None,
) -> DeliveryRun:
    return deliver_interventions(
        warehouse,
        config or make_config(),
        email=email or EmailResource(),
        slack=slack or SlackResource(),
        outreach=outreach or OutreachResource(),
        outbox_root=tmp_path / "outbox" / "interventions",
        export_root=tmp_path / "outreach" / "in_app",
        now=now,
        suppression_file=suppression,
        log=lambda line: None,
    )


def ledger(warehouse: WarehouseResource) -> dict[str, dict[str, Any]]:
    frame = warehouse.execute(warehouse.table(INTERVENTION_DELIVERIES.name))
    return {str(row["user_id"]): row for row in frame.to_dict("records")}


def test_without_credentials_everything_goes_to_the_outbox_once(
    seeded: WarehouseResource, tmp_path: Path
) -> None:
    result = run(seeded, tmp_path)
    rows = ledger(seeded)
    # The held-out user is in the queue but never in the delivery ledger or the outbox.
    assert "u_hold" not in rows
    assert sorted(rows) == TREATED
    assert rows["u_app"]["status"] == "outbox"
    assert rows["u_human"]["status"] == "outbox"
    assert rows["u_mail"]["status"] == "outbox"
    assert rows["u_unsub"]["status"] == "suppressed"
    assert rows["u_unsub"]["note"] == "unsubscribe event unsubscribed"
    folder = tmp_path / "outbox" / "interventions" / NOW.date().isoformat()
    files = sorted(p.relative_to(folder).parts[0] for p in folder.rglob("*.*"))
    # 21:00 in Tokyo: inside the default quiet hours (21:00-08:00), so due for a later run.
    assert rows["u_tokyo"]["status"] == "due"
    assert rows["u_tokyo"]["note"].startswith("quiet hours: 21:00 in Asia/Tokyo")
    assert files == ["email"] * 2 + ["human", "in_app"]
    assert not any("hold" in p.read_text(errors="ignore") for p in folder.rglob("*.*"))
    assert result.outcomes[("email", "outbox")] == 2
    assert result.quiet_hours["email"] == 1
    export = tmp_path / "outreach" / "in_app" / f"{NOW.date().isoformat()}.jsonl"
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert [line["user_id"] for line in lines] == ["u_app"]
    assert "email" not in json.dumps(lines)

    again = run(seeded, tmp_path)
    assert sum(again.outcomes.values()) == 0
    # Five final rows; u_tokyo is still due (quiet hours), not delivered and not failed.
    assert again.already_delivered == len(TREATED) - 1
    assert ledger(seeded)["u_tokyo"]["status"] == "due"
    assert len(export.read_text().splitlines()) == 1


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    box = Inbox()
    with smtp_server(box) as port:
        yield box, port


def smtp(port: int) -> EmailResource:
    return EmailResource(host="127.0.0.1", port=port, security="none", sender="hi@example.com")


def test_email_goes_to_the_users_own_address_once_with_unsubscribe_and_suppression(
    seeded: WarehouseResource, tmp_path: Path, inbox: tuple[Inbox, int]
) -> None:
    box, port = inbox
    listed = tmp_path / "suppressed.txt"
    listed.write_text("# addresses and user ids that get no email\nlisted@example.COM\n")
    config = make_config(
        unsubscribe_url="https://app.example.com/unsubscribe?u={user_id}&t={token}",
        quiet_hours=None,
    )
    outreach = OutreachResource(unsubscribe_secret="unsub-secret")
    run(seeded, tmp_path, config, email=smtp(port), outreach=outreach, suppression=listed)
    messages = {str(m["To"]): m for m in box.messages()}
    # One message per user, to their own address; the listed and unsubscribed users get none.
    assert sorted(messages) == ["mail@example.com", "tokyo@example.com"]
    assert [e.rcpt_tos for e in box.envelopes] == [["mail@example.com"], ["tokyo@example.com"]]
    rows = ledger(seeded)
    assert rows["u_listed"]["status"] == "suppressed"
    assert rows["u_listed"]["note"] == "address on the suppression list"
    assert rows["u_unsub"]["status"] == "suppressed"
    message = messages["mail@example.com"]
    token = outreach.unsubscribe_token("u_mail")
    link = f"https://app.example.com/unsubscribe?u=u_mail&t={token}"
    assert token and len(token) == 32
    assert message["List-Unsubscribe"] == f"<{link}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Subject"] == "Your next step: Connect a data source"
    html_part = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    # The nudge's user-supplied parts are escaped in HTML; the plain part keeps them.
    assert "Bolt &lt;b&gt;&amp;&lt;/b&gt; Co &lt;script&gt;" in html_part
    assert "<script>" not in html_part
    assert f'href="{link.replace("&", "&amp;")}"' in html_part
    text_part = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Hi Ben, connect your data at Bolt <b>&</b> Co <script>" in text_part
    assert f"Unsubscribe: {link}" in text_part
    assert rows["u_mail"]["status"] == "sent"
    assert rows["u_mail"]["provider_id"] == str(message["Message-ID"]).strip()
    assert rows["u_mail"]["idempotency_key"].startswith("onboarding-intervention:")
    # The address is used only for the message: not in the ledger.
    frame = seeded.execute(seeded.table(INTERVENTION_DELIVERIES.name))
    assert "mail@example.com" not in frame.to_csv()

    again = run(seeded, tmp_path, config, email=smtp(port), outreach=outreach, suppression=listed)
    assert len(box.envelopes) == 2
    assert sum(again.outcomes.values()) == 0


def test_an_email_left_sending_goes_again_with_the_same_message_id(
    seeded: WarehouseResource, tmp_path: Path, inbox: tuple[Inbox, int]
) -> None:
    """The state a crash between the server's 250 and the ledger write leaves: `sending`."""
    box, port = inbox
    config = make_config(quiet_hours=None)
    run(seeded, tmp_path, config, email=smtp(port))
    first = {str(m["To"]): m["Message-ID"] for m in box.messages()}
    seeded.connect().raw_sql(
        "UPDATE onboarding.intervention_deliveries SET status = 'sending' WHERE user_id = 'u_mail'"
    )
    result = run(seeded, tmp_path, config, email=smtp(port))
    assert result.outcomes == {("email", "sent"): 1}
    resent = box.messages()[-1]
    assert resent["To"] == "mail@example.com"
    assert resent["Message-ID"] == first["mail@example.com"]
    assert ledger(seeded)["u_mail"]["attempts"] == 2


def test_the_mailto_default_link_has_no_one_click_header(
    seeded: WarehouseResource, tmp_path: Path, inbox: tuple[Inbox, int]
) -> None:
    box, port = inbox
    run(seeded, tmp_path, make_config(quiet_hours=None), email=smtp(port))
    message = next(m for m in box.messages() if m["To"] == "mail@example.com")
    expected = "mailto:hi@example.com?subject=" + urllib.parse.quote("unsubscribe u_mail")
    assert message["List-Unsubscribe"] == f"<{expected}>"
    assert message["List-Unsubscribe-Post"] is None


@pytest.fixture
def receiver(httpserver: HTTPServer) -> WebhookReceiver:
    return WebhookReceiver(httpserver)


def webhook(receiver: WebhookReceiver, **settings: Any) -> OutreachResource:
    return OutreachResource(
        inapp_webhook_url=receiver.url,
        inapp_webhook_secret=SECRET,
        backoff_factor=0.01,
        **settings,
    )


def test_in_app_posts_a_signed_payload_retrying_5xx_with_one_idempotency_key(
    seeded: WarehouseResource, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    receiver.fail_first = 2  # two 503s, then the receiver accepts
    result = run(seeded, tmp_path, outreach=webhook(receiver))
    assert result.outcomes[("in_app", "sent")] == 1
    assert len(receiver.requests) == 3
    assert all(r["valid"] for r in receiver.requests)
    assert len({r["key"] for r in receiver.requests}) == 1
    (key,) = receiver.deliveries
    body = receiver.deliveries[key]["body"]
    assert body["user_id"] == "u_app"
    assert body["id"] == key
    assert body["message"] == "Hi Ana, connect your data at Acme <script>"
    assert "app@example.com" not in json.dumps(body)
    row = ledger(seeded)["u_app"]
    assert (row["status"], row["provider_id"], row["idempotency_key"]) == ("sent", "dlv_1", key)
    export = tmp_path / "outreach" / "in_app" / f"{NOW.date().isoformat()}.jsonl"
    assert [json.loads(line) for line in export.read_text().splitlines()] == [body]

    run(seeded, tmp_path, outreach=webhook(receiver))
    assert len(receiver.requests) == 3  # a rerun of the day sends nothing


def test_a_timed_out_post_is_retried_with_the_same_key_and_kept_once(
    seeded: WarehouseResource, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    receiver.slow_first = 2.0  # the receiver took the delivery, its reply comes too late
    result = run(seeded, tmp_path, outreach=webhook(receiver, timeout_seconds=0.5))
    assert result.outcomes[("in_app", "sent")] == 1
    # urllib3 retried after the timeout (more than once while the receiver was busy).
    assert len(receiver.requests) >= 2
    assert len({r["key"] for r in receiver.requests}) == 1
    assert len(receiver.deliveries) == 1
    assert ledger(seeded)["u_app"]["provider_id"] == "dlv_1"


def test_a_bad_signature_is_refused_and_recorded_as_failed(
    seeded: WarehouseResource, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    outreach = OutreachResource(inapp_webhook_url=receiver.url, inapp_webhook_secret="wrong")
    result = run(seeded, tmp_path, outreach=outreach)
    assert result.outcomes[("in_app", "failed")] == 1
    row = ledger(seeded)["u_app"]
    assert row["last_error"].startswith("HTTP 401")
    assert receiver.deliveries == {}


@pytest.fixture
def slack_stub(httpserver: HTTPServer) -> SlackStub:
    return SlackStub(httpserver)


def test_human_hand_off_goes_to_the_owners_channel_escaped_with_the_timeline(
    seeded: WarehouseResource, tmp_path: Path, slack_stub: SlackStub
) -> None:
    slack = SlackResource(token="xoxb-test", base_url=slack_stub.server.url_for("/api/"))
    config = make_config(owner_channels={"support": "C0ONBOARD"}, timeline_events=1)
    run(seeded, tmp_path, config, slack=slack)
    assert slack_stub.count("chat.postMessage") == 1
    (message,) = slack_stub.messages
    text = message["text"]
    assert "Fay, Fir &lt;!here&gt;" in text  # a company name cannot ping the channel
    assert "User id: u_human" in text
    assert "*Why:* stalled: integration_failed twice &lt;@U1&gt;" in text
    assert "*Next action:* Connect a data source (escalation step 1, nudge)" in text
    assert "• done: Create your workspace (2026-10-29 12:00 UTC)" in text
    assert "• next: Connect a data source (due day 4)" in text
    assert "• integration_failed (2026-10-31 12:00 UTC)" in text
    assert "• workspace_created" not in text  # only the latest `timeline_events` events
    assert "@example.com" not in text
    row = ledger(seeded)["u_human"]
    assert row["recipient"] == "C0ONBOARD"
    assert row["status"] == "sent"
    assert message["metadata"]["event_payload"]["idempotency_key"] == row["idempotency_key"]

    # A crash after Slack accepted the post, before the ledger said `sent`: the next run
    # finds the post by its metadata key in the channel's history and posts nothing.
    seeded.connect().raw_sql(
        "UPDATE onboarding.intervention_deliveries SET status = 'sending' WHERE user_id = 'u_human'"
    )
    result = run(seeded, tmp_path, config, slack=slack)
    assert slack_stub.count("conversations.history") == 1
    assert slack_stub.count("chat.postMessage") == 1
    assert result.outcomes == {("human", "sent"): 1}
    assert ledger(seeded)["u_human"]["provider_id"] == f"C0ONBOARD/{message['ts']}"


def test_daily_limits_leave_rows_due_for_the_next_day(
    seeded: WarehouseResource, tmp_path: Path, inbox: tuple[Inbox, int]
) -> None:
    box, port = inbox
    config = make_config(daily_limits={"email": 1}, quiet_hours=None)
    first = run(seeded, tmp_path, config, email=smtp(port))
    assert first.outcomes[("email", "sent")] == 1
    assert first.limited["email"] == 2
    rows = ledger(seeded)
    waiting = [u for u, r in rows.items() if r["channel"] == "email" and r["status"] == "due"]
    assert len(waiting) == 2
    assert {rows[u]["note"] for u in waiting} == {"daily limit of 1 email messages reached"}
    # Same day, later run: still limited.
    run(seeded, tmp_path, config, email=smtp(port))
    assert len(box.envelopes) == 1
    # Next day (the queue has moved on; the ledger carries what is still due).
    seeded.connect().raw_sql("DELETE FROM onboarding.intervention_queue")
    run(seeded, tmp_path, config, email=smtp(port), now=NOW + timedelta(days=1))
    run(seeded, tmp_path, config, email=smtp(port), now=NOW + timedelta(days=2))
    assert len(box.envelopes) == 3
    assert len({m["To"] for m in box.messages()}) == 3
    assert {r["status"] for u, r in ledger(seeded).items() if r["channel"] == "email"} == {
        "sent",
        "suppressed",
    }


def test_quiet_hours_follow_the_users_time_zone_and_skip_unknown_zones_when_configured(
    seeded: WarehouseResource, tmp_path: Path, inbox: tuple[Inbox, int]
) -> None:
    box, port = inbox
    # 12:00 UTC is 21:00 in Tokyo. Users without a zone: the rule is skipped (the default).
    config = make_config(quiet_hours={"start": "21:00", "end": "08:00"})
    run(seeded, tmp_path, config, email=smtp(port))
    assert sorted(str(m["To"]) for m in box.messages()) == [
        "Listed@Example.com",
        "mail@example.com",
    ]
    assert ledger(seeded)["u_tokyo"]["status"] == "due"
    # Three hours later it is 00:00 in Tokyo: still quiet; at 23:00 UTC, 08:00 there: sent.
    run(seeded, tmp_path, config, email=smtp(port), now=NOW + timedelta(hours=3))
    assert len(box.envelopes) == 2
    run(seeded, tmp_path, config, email=smtp(port), now=NOW + timedelta(hours=11))
    assert box.messages()[-1]["To"] == "tokyo@example.com"
    # With UTC for unknown zones, noon UTC is fine and 22:00 UTC is quiet for everyone.
    utc = make_config(quiet_hours={"default_timezone": "UTC"})
    seeded.connect().raw_sql("UPDATE onboarding.intervention_queue SET escalation_step = 2")
    result = run(seeded, tmp_path, utc, email=smtp(port), now=NOW + timedelta(days=1, hours=10))
    assert result.quiet_hours["email"] == 3


def test_held_out_users_get_nothing_on_any_channel(
    seeded: WarehouseResource,
    tmp_path: Path,
    inbox: tuple[Inbox, int],
    receiver: WebhookReceiver,
    httpserver: HTTPServer,
) -> None:
    box, port = inbox
    stub = SlackStub(httpserver)
    # Everybody on every channel would be reached, were they not held out.
    slack = SlackResource(token="xoxb-test", base_url=httpserver.url_for("/api/"))
    run(
        seeded,
        tmp_path,
        make_config(quiet_hours=None),
        email=smtp(port),
        slack=slack,
        outreach=webhook(receiver),
    )
    assert "hold@example.com" not in [t for e in box.envelopes for t in e.rcpt_tos]
    assert all(r["body"]["user_id"] != "u_hold" for r in receiver.requests)
    assert all("u_hold" not in str(m["text"]) for m in stub.messages)
    assert "u_hold" not in ledger(seeded)
    assert len(box.envelopes) == 3 and len(receiver.deliveries) == 1 and len(stub.messages) == 1


PROJECT = Path(__file__).resolve().parents[1]


def start_child(settings: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "onboarding_pipeline_tests.outreach_child", json.dumps(settings)],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_killed_after_the_webhook_received_it_delivers_once(
    tmp_path: Path, receiver: WebhookReceiver, inbox: tuple[Inbox, int]
) -> None:
    """SIGKILL between the receiver's delivery and the ledger write (the receiver holds its
    reply): the row is left `sending`; the next run sends the same Idempotency-Key and the
    receiver keeps one delivery."""
    box, port = inbox
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    warehouse = WarehouseResource(url=url)
    seed(warehouse)
    warehouse.close()  # the child takes the DuckDB file
    receiver.hold = True
    child = start_child(
        {
            "warehouse_url": url,
            "outbox": str(tmp_path / "outbox"),
            "export": str(tmp_path / "export"),
            "webhook_url": receiver.url,
            "webhook_secret": SECRET,
            "smtp_port": port,
        }
    )
    try:
        # Channels run in_app first: it hangs in the receiver's held reply.
        wait_for(receiver.received, 60, "the webhook delivery")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    receiver.hold = False
    receiver.release.set()
    warehouse = WarehouseResource(url=url)
    try:
        assert ledger(warehouse)["u_app"]["status"] == "sending"
        first_key = ledger(warehouse)["u_app"]["idempotency_key"]
        result = run(
            warehouse,
            tmp_path,
            make_config(quiet_hours=None),
            email=smtp(port),
            outreach=webhook(receiver),
        )
        assert result.outcomes[("in_app", "sent")] == 1
        assert [r["key"] for r in receiver.requests] == [first_key, first_key]
        assert len(receiver.deliveries) == 1
        row = ledger(warehouse)["u_app"]
        assert (row["status"], row["provider_id"], row["attempts"]) == ("sent", "dlv_1", 2)
        # The killed run never reached email; the rerun sent each one once.
        assert sorted(t for e in box.envelopes for t in e.rcpt_tos) == [
            "Listed@Example.com",
            "mail@example.com",
            "tokyo@example.com",
        ]
    finally:
        warehouse.close()


def test_the_asset_delivers_and_reports_counts_per_channel_and_status(
    seeded: WarehouseResource, tmp_path: Path
) -> None:
    config_path = tmp_path / "onboarding.yaml"
    (tmp_path / "suppressed.txt").write_text("u_listed\n")
    config_path.write_text(
        "aha_events: [dashboard_shared]\n"
        "partitions_start_date: 2026-06-01\n"
        f"as_of: '{NOW.isoformat()}'\n"
        "interventions:\n"
        "  delivery:\n"
        "    suppression_file: suppressed.txt\n"
        "    daily_limits: {email: 1}\n"
    )
    result = materialize(
        [intervention_deliveries],
        resources={
            "warehouse": seeded,
            "product_config": ProductConfigResource(path=str(config_path)),
            "outputs": OutputDirResource(path=str(tmp_path / "output")),
            "email": EmailResource(),
            "slack": SlackResource(),
            "outreach": OutreachResource(),
        },
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["by_channel_and_status"] == {
        "in_app": {"outbox": 1},
        "email": {"outbox": 1},
        "human": {"outbox": 1},
    }
    assert metadata["suppressed"] == {"email": 2}  # the listed user id, the unsubscribed
    assert metadata["quiet_hours"] == {"email": 1}  # Tokyo at 21:00
    assert metadata["limited"] == {}  # the only email left fits the limit of one
    day = NOW.date().isoformat()
    assert metadata["outbox_folder"] == str(tmp_path / "output" / "outbox" / "interventions" / day)
    assert ledger(seeded)["u_listed"]["note"] == "user id on the suppression list"
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "holdout_never_delivered" and check.passed


def test_the_holdout_check_fails_when_a_held_out_user_has_a_delivery(
    seeded: WarehouseResource, tmp_path: Path
) -> None:
    run(seeded, tmp_path)
    assert held_out_deliveries(seeded, EXPERIMENT) == 0
    seeded.connect().raw_sql(
        "UPDATE onboarding.intervention_ledger SET holdout = true WHERE user_id = 'u_app'"
    )
    assert held_out_deliveries(seeded, EXPERIMENT) == 1


def test_delivery_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        make_config(quiet_hours={"default_timezone": "Mars/Olympus"})
    with pytest.raises(ValueError, match=r"may only use \{user_id\} and \{token\}"):
        make_config(unsubscribe_url="https://x.example/u?e={email}")
    with pytest.raises(ValueError, match="must start with https:// or mailto:"):
        make_config(unsubscribe_url="http://x.example/u/{user_id}")
    with pytest.raises(ValueError, match="Input should be 'in_app', 'email' or 'human'"):
        make_config(daily_limits={"sms": 3})


def test_a_token_template_without_the_secret_fails_the_email_channel_only(
    seeded: WarehouseResource, tmp_path: Path, inbox: tuple[Inbox, int]
) -> None:
    box, port = inbox
    config = make_config(unsubscribe_url="https://x.example/u?t={token}", quiet_hours=None)
    result = run(seeded, tmp_path, config, email=smtp(port))
    assert box.envelopes == []
    assert "ONBOARDING_UNSUBSCRIBE_SECRET is not set" in ledger(seeded)["u_mail"]["last_error"]
    assert ledger(seeded)["u_mail"]["status"] == "failed"
    assert result.outcomes[("in_app", "outbox")] == 1  # the other channels went on


def test_the_ledger_on_postgres(tmp_path: Path, inbox: tuple[Inbox, int]) -> None:
    """The same ledger, lock and rerun behaviour on the PostgreSQL warehouse."""
    box, port = inbox
    schema = f"outreach_{uuid.uuid4().hex[:8]}"
    warehouse = WarehouseResource(url=POSTGRES_URL, schema_name=schema)
    try:
        seed(warehouse)
        config = make_config(quiet_hours=None, daily_limits={"email": 2})
        first = run(warehouse, tmp_path, config, email=smtp(port))
        assert first.outcomes[("email", "sent")] == 2
        assert first.limited["email"] == 1
        again = run(warehouse, tmp_path, config, email=smtp(port))
        assert sum(again.outcomes.values()) == 0
        run(warehouse, tmp_path, config, email=smtp(port), now=NOW + timedelta(days=1))
        assert len(box.envelopes) == 3
        assert "u_hold" not in ledger(warehouse)
    finally:
        warehouse.connect().drop_database(schema, force=True, cascade=True)
        warehouse.close()


def test_rows_still_due_expire_when_the_user_left_or_activated_since(
    seeded: WarehouseResource, tmp_path: Path, inbox: tuple[Inbox, int]
) -> None:
    box, port = inbox
    config = ProductConfig(
        aha_events=["dashboard_shared"],
        terminal_events=["account_deleted"],
        partitions_start_date="2026-06-01",
        interventions={"delivery": {"daily_limits": {"email": 1}, "quiet_hours": None}},
    )
    run(seeded, tmp_path, config, email=smtp(port))
    waiting = sorted(u for u, r in ledger(seeded).items() if r["status"] == "due")
    assert len(waiting) == 2 and len(box.envelopes) == 1
    left, activated = waiting
    later = NOW + timedelta(hours=1)
    seeded.connect().raw_sql(
        "INSERT INTO onboarding.raw_events (event_id, user_id, event_name, timestamp) VALUES "
        f"('x1', '{left}', 'account_deleted', TIMESTAMPTZ '{later.isoformat()}'), "
        f"('x2', '{activated}', 'dashboard_shared', TIMESTAMPTZ '{later.isoformat()}')"
    )
    seeded.connect().raw_sql("DELETE FROM onboarding.intervention_queue")
    result = run(seeded, tmp_path, config, email=smtp(port), now=NOW + timedelta(days=1))
    rows = ledger(seeded)
    assert rows[left]["status"] == rows[activated]["status"] == "expired"
    assert rows[left]["note"] == "user left (account_deleted) since it was queued"
    assert rows[activated]["note"] == "user activated (dashboard_shared) since it was queued"
    assert result.expired == 2 and len(box.envelopes) == 1


@pytest.mark.parametrize(
    ("stale", "why"),
    [
        ("queued_on = DATE '{day}'", "could not be confirmed within 3 days or 3 attempts"),
        ("attempts = 3", "could not be confirmed within 3 days or 3 attempts"),
        ("user_id = user_id", "user left (account_deleted) since it was queued"),
    ],
)
def test_a_row_left_sending_expires_unresent_when_old_tried_out_or_the_user_left(
    seeded: WarehouseResource, tmp_path: Path, stale: str, why: str
) -> None:
    config = make_config()
    config = config.model_copy(update={"terminal_events": ["account_deleted"]})
    run(seeded, tmp_path, config)
    day = (NOW - timedelta(days=5)).date().isoformat()
    seeded.connect().raw_sql(
        "UPDATE onboarding.intervention_deliveries SET status = 'sending', "
        f"{stale.format(day=day)} WHERE user_id = 'u_human'"
    )
    if "left" in why:
        seeded.connect().raw_sql(
            "INSERT INTO onboarding.raw_events (event_id, user_id, event_name, timestamp) "
            f"VALUES ('x9', 'u_human', 'account_deleted', TIMESTAMPTZ '{NOW.isoformat()}')"
        )
    folder = tmp_path / "outbox" / "interventions"
    before = sorted(folder.rglob("*.*"))
    result = run(seeded, tmp_path, config)
    row = ledger(seeded)["u_human"]
    assert row["status"] == "expired"
    assert row["note"].startswith(why)
    assert result.expired == 1 and sorted(folder.rglob("*.*")) == before


def test_a_row_sent_after_waiting_for_the_daily_limit_loses_the_limit_note(
    seeded: WarehouseResource, tmp_path: Path
) -> None:
    config = make_config(daily_limits={"email": 1}, quiet_hours=None)
    run(seeded, tmp_path, config)
    waiting = {u for u, r in ledger(seeded).items() if r["status"] == "due"}
    assert len(waiting) == 2
    seeded.connect().raw_sql("DELETE FROM onboarding.intervention_queue")
    run(seeded, tmp_path, config, now=NOW + timedelta(days=1))
    rows = ledger(seeded)
    moved = {u for u in waiting if rows[u]["status"] == "outbox"}
    assert len(moved) == 1
    # The one that went out says nothing about a limit; the one still waiting still does.
    assert all(pd.isna(rows[u]["note"]) for u in moved)
    (still,) = waiting - moved
    assert rows[still]["note"] == "daily limit of 1 email messages reached"

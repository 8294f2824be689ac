"""Settings that load: every documented SMTP_SECURITY value through the environment (Dagster
EnvVars resolved at run time) against real aiosmtpd servers, recipients and subjects checked
when onboarding.yaml loads, and backfills that render but do not deliver."""

from __future__ import annotations

import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult
from dagster import Definitions, asset, materialize

from onboarding_pipeline.config import ConfigError, ProductConfig, load_config
from onboarding_pipeline.reporting.assets import (
    ENV_DELIVERY_CLOCK,
    backfill_note,
    build_reporting_assets,
    deliverable_week,
    delivery_clock,
    undeliverable_reason,
    weekly_partitions,
)
from onboarding_pipeline.reporting.mail import EmailResource, email_resource_from_env
from onboarding_pipeline.reporting.notion import NotionResource
from onboarding_pipeline.reporting.slack import SlackResource
from onboarding_pipeline.resources import OutputDirResource, ProductConfigResource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline_tests.delivery_stubs import Inbox, smtp_server


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
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


@pytest.mark.parametrize("security", ["none", "starttls", "ssl", "SSL"])
def test_every_smtp_security_value_loads_from_the_environment_and_sends(  # type: ignore[no-untyped-def]
    security: str, certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    logins: list[bytes] = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
        logins.append(auth.login)
        return AuthResult(success=(auth.login, auth.password) == (b"reporter", b"s3cret"))

    tls: dict[str, Any] = {
        "none": {"auth_require_tls": False},
        "starttls": {"tls_context": server_tls, "require_starttls": True},
        "ssl": {"ssl_context": server_tls, "auth_require_tls": False},
    }[security.lower()]
    inbox = Inbox()
    with smtp_server(inbox, authenticator=authenticate, **tls) as port:
        for name, value in {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(port),
            "SMTP_SECURITY": security,
            "SMTP_USERNAME": "reporter",
            "SMTP_PASSWORD": "s3cret",
            "SMTP_FROM": "reports@example.com",
            "SMTP_CA_FILE": str(cert),
        }.items():
            monkeypatch.setenv(name, value)
        resource = email_resource_from_env()  # EnvVars, as the code location builds it
        seen: list[str] = []

        @asset
        def send_one(email: EmailResource) -> None:
            from email.message import EmailMessage

            seen.append(email.security)
            message = EmailMessage()
            message["Subject"], message["From"], message["To"] = "hi", email.sender, "a@example.com"
            message.set_content("hello")
            with email.connection() as smtp:
                smtp.send(message, "a@example.com")

        assert materialize([send_one], resources={"email": resource}).success
    assert seen == [security.lower()] and logins == [b"reporter"]
    assert [e.rcpt_tos for e in inbox.envelopes] == [["a@example.com"]]


def test_unknown_smtp_security_fails_at_load_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMTP_SECURITY", "tls")
    with pytest.raises(ValueError, match=r"SMTP_SECURITY='tls': use one of starttls, ssl, none"):
        email_resource_from_env()
    with pytest.raises(ValueError, match="SMTP_SECURITY"):
        EmailResource(security="smtps")


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (
            'recipients: ["ok@example.com", "a@example.com\\r\\nBcc: all@evil.example"]',
            r"report\.recipients: .*\[1\] .* is not an email address",
        ),
        ('recipients: ["nobody"]', r"report\.recipients: .*\[0\] 'nobody' is not an email address"),
        (
            'recipients: ["a@example.com", "A@example.com"]',
            r"report\.recipients: .*\[1\] 'A@example.com' is listed twice",
        ),
        (  # one recipient: the domain in Unicode and in punycode
            'recipients: ["ana@bücher.example", "ana@xn--bcher-kva.example"]',
            r"report\.recipients: .*\[1\] 'ana@xn--bcher-kva.example' is listed twice",
        ),
        ('title: "Weekly\\nBcc: all@evil.example"', r"report\.title: .*must be one line"),
        # Python's email policy breaks a header at U+2028 and NEL too.
        ('title: "Weekly\\u2028Bcc: all@evil.example"', r"report\.title: .*must be one line"),
        ('title: "Weekly\\x85Bcc: all@evil.example"', r"report\.title: .*must be one line"),
        ('title: ""', r"report\.title: .*at least 1 character"),
    ],
)
def test_recipients_and_subject_are_checked_when_the_config_loads(
    report: str, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "onboarding.yaml"
    path.write_text(f"aha_events: [a]\nreport: {{{report}}}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


# ---------------------------------------------------------------- backfills


WATERMARK = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)  # a Saturday, week of 2026-10-26
# The Monday after: by the clock, the week of 2026-10-26 just ended.
CLOCK = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def test_only_the_week_that_just_ended_by_the_clock_delivers() -> None:
    assert undeliverable_reason("2026-10-26", CLOCK) is None  # the week that just ended
    running = undeliverable_reason("2026-11-02", CLOCK)  # would go out half-counted
    assert running and "has not ended yet" in running and "force: true" in running
    older = undeliverable_reason("2026-10-19", CLOCK)
    assert older and "backfill" in older and "2026-10-26" in older
    later = undeliverable_reason("2026-11-09", CLOCK)
    assert later and "future" in later
    # The data's watermark plays no part: a week later by the clock, the same week is old.
    assert "backfill" in (undeliverable_reason("2026-10-26", CLOCK + timedelta(days=7)) or "")
    assert deliverable_week(datetime(2026, 11, 8, 23, 59, tzinfo=UTC)) == "2026-10-26"
    assert backfill_note("2026-10-26", WATERMARK, CLOCK) is None
    note = backfill_note("2026-10-12", WATERMARK, CLOCK) or ""
    assert "as they are now" in note and "not delivered" in note
    # Tables of the week itself, but delivered only once the week has ended.
    running_note = backfill_note("2026-11-02", datetime(2026, 11, 3, tzinfo=UTC), CLOCK) or ""
    assert "as they are now" not in running_note and "not delivered" in running_note


def test_the_delivery_clock_is_the_wall_clock_unless_pinned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_DELIVERY_CLOCK, raising=False)
    before = datetime.now(UTC)
    assert before <= delivery_clock() <= datetime.now(UTC)
    monkeypatch.setenv(ENV_DELIVERY_CLOCK, "2026-11-02T09:00")  # naive = UTC
    assert delivery_clock() == CLOCK
    monkeypatch.setenv(ENV_DELIVERY_CLOCK, "next monday")
    with pytest.raises(ValueError, match=ENV_DELIVERY_CLOCK):
        delivery_clock()


def reporting_resources(
    warehouse: WarehouseResource, config_path: Path, out: Path, port: int
) -> dict[str, Any]:
    """The reporting assets' resources: email to the local SMTP server on `port`, no Slack
    or Notion credentials."""
    return {
        "warehouse": warehouse,
        "product_config": ProductConfigResource(path=str(config_path)),
        "outputs": OutputDirResource(path=str(out)),
        "slack": SlackResource(),
        "email": EmailResource(
            host="127.0.0.1", port=port, security="none", sender="reports@example.com"
        ),
        "notion": NotionResource(),
    }


def test_a_fresh_warehouse_backfilled_to_an_old_week_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The red team's case: a fresh warehouse whose data ends in an old week (a `--start/--end`
    backfill, or an old export), so the data's watermark is in that week. The clock says the
    week is long over: it renders, and nothing is sent."""
    monkeypatch.setenv(ENV_DELIVERY_CLOCK, "2026-12-02T14:00:00+00:00")
    inbox = Inbox()
    config_path = tmp_path / "onboarding.yaml"
    config_path.write_text(
        "aha_events: [dashboard_shared]\npartitions_start_date: 2026-06-01\n"
        f"as_of: {WATERMARK.isoformat()}\n"  # the data's watermark: in the week reported
        "report: {recipients: [stakeholders@example.com], slack_channel: ''}\n"
    )
    config = ProductConfig(aha_events=["dashboard_shared"], partitions_start_date="2026-06-01")
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    with smtp_server(inbox) as port:
        resources = reporting_resources(warehouse, config_path, tmp_path / "out", port)
        assets = build_reporting_assets(weekly_partitions(config), [])
        result = materialize(assets, resources=resources, partition_key="2026-10-26")
    assert result.success
    assert inbox.envelopes == []
    assert warehouse.execute(warehouse.table("report_deliveries").count()) == 0
    metadata = result.asset_materializations_for_node("report_deliveries")[0].metadata
    assert "week 2026-10-26 is a backfill" in metadata["not_delivered"].value
    assert "2026-11-23" in metadata["not_delivered"].value  # the week that just ended
    report = (tmp_path / "out" / "reports" / "2026-10-26" / "report.md").read_text()
    assert "This report is not delivered" in report
    warehouse.close()


def test_a_backfilled_week_renders_saying_so_and_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_DELIVERY_CLOCK, CLOCK.isoformat())
    inbox = Inbox()
    config_path = tmp_path / "onboarding.yaml"
    config_path.write_text(
        "aha_events: [dashboard_shared]\npartitions_start_date: 2026-06-01\n"
        f"as_of: {WATERMARK.isoformat()}\n"
        "report: {recipients: [stakeholders@example.com], slack_channel: '#onboarding'}\n"
    )
    config = ProductConfig(aha_events=["dashboard_shared"], partitions_start_date="2026-06-01")
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    with smtp_server(inbox) as port:
        resources = reporting_resources(warehouse, config_path, tmp_path / "out", port)
        defs = Definitions(assets=build_reporting_assets(weekly_partitions(config), []))
        assets = list(defs.assets or [])
        old = materialize(assets, resources=resources, partition_key="2026-09-07")
        assert old.success
        assert inbox.envelopes == []  # nothing to anyone, not even the outbox
        assert warehouse.execute(warehouse.table("report_deliveries").count()) == 0
        deliveries = old.asset_materializations_for_node("report_deliveries")[0].metadata
        assert "week 2026-09-07 is a backfill" in deliveries["not_delivered"].value
        folder = tmp_path / "out" / "reports" / "2026-09-07"
        for name in ("report.html", "report.md"):
            text = (folder / name).read_text()
            assert "Backfill of an earlier week" in text and "not as they were" in text
        assert not (tmp_path / "out" / "outbox" / "2026-09-07").exists()

        current = materialize(assets, resources=resources, partition_key="2026-10-26")
        assert current.success and len(inbox.envelopes) == 1
        assert (
            "Backfill"
            not in (tmp_path / "out" / "reports" / "2026-10-26" / "report.html").read_text()
        )

        forced = materialize(
            assets[1:],
            resources=resources,
            partition_key="2026-09-07",
            run_config={"ops": {"report_deliveries": {"config": {"force": True}}}},
        )
        assert forced.success and len(inbox.envelopes) == 2
    warehouse.close()

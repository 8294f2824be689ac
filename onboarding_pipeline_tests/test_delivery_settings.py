"""Settings that load: every documented SMTP_SECURITY value through the environment (Dagster
EnvVars resolved at run time) against real aiosmtpd servers, recipients and subjects checked
when onboarding.yaml loads, and backfills that render but do not deliver."""

from __future__ import annotations

import ssl
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult
from dagster import Definitions, asset, materialize

from onboarding_pipeline.config import ConfigError, ProductConfig, load_config
from onboarding_pipeline.reporting.assets import (
    backfill_note,
    build_reporting_assets,
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


def test_only_the_watermark_week_and_the_week_before_deliver() -> None:
    assert undeliverable_reason("2026-10-26", WATERMARK) is None  # the week holding it
    assert undeliverable_reason("2026-10-19", WATERMARK) is None  # the week that just ended
    older = undeliverable_reason("2026-10-12", WATERMARK)
    assert older and "backfill" in older and "force: true" in older
    later = undeliverable_reason("2026-11-02", WATERMARK)
    assert later and "begins after" in later
    # Without events the clock stands in.
    now = datetime(2026, 12, 2, tzinfo=UTC)
    assert undeliverable_reason("2026-11-30", None, now) is None
    assert "backfill" in (undeliverable_reason("2026-10-26", None, now) or "")
    assert backfill_note("2026-10-26", WATERMARK) is None
    note = backfill_note("2026-10-12", WATERMARK) or ""
    assert "as they are now" in note and "not delivered" in note


def test_a_backfilled_week_renders_saying_so_and_sends_nothing(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
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
        resources = {
            "warehouse": warehouse,
            "product_config": ProductConfigResource(path=str(config_path)),
            "outputs": OutputDirResource(path=str(tmp_path / "out")),
            "slack": SlackResource(),
            "email": EmailResource(
                host="127.0.0.1", port=port, security="none", sender="reports@example.com"
            ),
            "notion": NotionResource(),
        }
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

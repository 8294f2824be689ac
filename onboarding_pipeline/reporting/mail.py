"""`EmailResource`: SMTP settings from environment variables, and the report as a MIME message."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import smtplib
import ssl
from collections.abc import Iterable, Iterator
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Any

from dagster import ConfigurableResource, EnvVar
from email_validator import validate_email
from pydantic import field_validator

ENV_SMTP = {
    "host": "SMTP_HOST",
    "port": "SMTP_PORT",
    "username": "SMTP_USERNAME",
    "password": "SMTP_PASSWORD",
    "sender": "SMTP_FROM",
    "security": "SMTP_SECURITY",
    "ca_file": "SMTP_CA_FILE",
}
DEFAULT_SENDER = "onboarding-pipeline@localhost"
# SMTP_SECURITY values and the port each uses when SMTP_PORT is not set.
SECURITY_PORTS = {"starttls": 587, "ssl": 465, "none": 25}


def check_security(value: str) -> str:
    """A valid `SMTP_SECURITY` value (case-insensitive), else a ValueError naming the choices."""
    normalized = value.strip().lower()
    if normalized not in SECURITY_PORTS:
        raise ValueError(
            f"SMTP_SECURITY={value!r}: use one of {', '.join(SECURITY_PORTS)} "
            "(starttls: port 587 upgraded to TLS; ssl: TLS from the start, port 465; "
            "none: a plain local relay)"
        )
    return normalized


class EmailResource(ConfigurableResource):
    """An SMTP server. Without `host` nothing is sent and deliveries go to the outbox.

    `security`: `starttls` (upgrade a plain connection, port 587), `ssl` (TLS from the start,
    port 465) or `none` (a local relay, port 25). Login happens only when `username` is set."""

    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = None
    sender: str = DEFAULT_SENDER
    # A plain string (not a Literal) so that it can come from an EnvVar; checked below.
    security: str = "starttls"
    # PEM bundle of a private CA that signed the server's certificate; None = system CAs.
    ca_file: str | None = None
    timeout_seconds: float = 30.0

    @field_validator("security", mode="before")
    @classmethod
    def _known_security(cls, value: Any) -> Any:
        # An EnvVar is checked once Dagster has resolved it (the resource is built again then).
        if isinstance(value, EnvVar) or not isinstance(value, str):
            return value
        return check_security(value)

    @property
    def configured(self) -> bool:
        return bool(self.host)

    @contextlib.contextmanager
    def connection(self) -> Iterator[SmtpConnection]:
        """One SMTP session (TLS and login as configured) for sending several messages."""
        if not self.host:
            raise RuntimeError("SMTP_HOST is not set")
        security = check_security(self.security)
        # Certificates and host names are always verified.
        context = ssl.create_default_context(cafile=self.ca_file)
        port = self.port or SECURITY_PORTS[security]
        smtp: smtplib.SMTP
        if security == "ssl":
            smtp = smtplib.SMTP_SSL(self.host, port, timeout=self.timeout_seconds, context=context)
        else:
            smtp = smtplib.SMTP(self.host, port, timeout=self.timeout_seconds)
        try:
            smtp.ehlo()
            if security == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self.password or "")
            yield SmtpConnection(smtp)
        finally:
            # Not `with smtp:` — it raises when QUIT is not answered 221. A message whose DATA
            # got its 250 is delivered whatever QUIT answers (421, or a dropped connection).
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()


class SmtpConnection:
    """An open SMTP session: one message per call, to one recipient."""

    def __init__(self, smtp: smtplib.SMTP) -> None:
        self._smtp = smtp

    def send(self, message: EmailMessage, recipient: str) -> None:
        """Returns once the server accepted the message (250 after DATA); raises otherwise
        (`SMTPRecipientsRefused` when the server refused the address)."""
        self._smtp.send_message(message, to_addrs=[recipient])

    def alive(self) -> bool:
        """Whether the session still answers (NOOP), e.g. after a failed message."""
        try:
            return self._smtp.noop()[0] == 250
        except (smtplib.SMTPException, OSError):
            return False


def email_resource_from_env() -> EmailResource:
    """The resource for `Definitions`: each setting as an `EnvVar` when that variable is set
    (resolved at run time; the password never lands in metadata), else its default.

    SMTP_SECURITY is also checked right away, so a wrong value stops the code location from
    loading with a message naming the variable instead of failing the first delivery."""
    present = {field: name for field, name in ENV_SMTP.items() if os.environ.get(name)}
    if "security" in present:
        check_security(os.environ[present["security"]])
    settings: dict[str, object] = {
        field: EnvVar.int(name) if field == "port" else EnvVar(name)
        for field, name in present.items()
    }
    return EmailResource(**settings)  # type: ignore[arg-type]


def canonical_recipient(address: str) -> str:
    """`address` as one recipient is spelled everywhere (ledger, envelope, To:): the local
    part as written, the domain lowercased and in its IDNA (punycode) form, so
    `ana@bücher.example` and `ana@xn--bcher-kva.example` are one recipient, not two
    deliveries. The ASCII domain also reaches servers without SMTPUTF8. Raises
    `EmailNotValidError` for anything that is not an address."""
    parsed = validate_email(address.strip(), check_deliverability=False)
    return f"{parsed.local_part}@{parsed.ascii_domain}"


def unique_recipients(addresses: Iterable[str]) -> list[str]:
    """The canonical form of each address, once each (case-insensitively, like the config
    check), in the order given."""
    unique: dict[str, str] = {}
    for address in addresses:
        canonical = canonical_recipient(address)
        unique.setdefault(canonical.lower(), canonical)
    return list(unique.values())


def report_message_id(
    week: str,
    recipient: str,
    sender: str,
    deployment: str | None = None,
    forced_run: str | None = None,
) -> str:
    """The Message-ID of week `week`'s report to `recipient` from one deployment: the same on
    every attempt, so a copy sent again after a crash has the Message-ID of the first (mail
    systems that keep one message per Message-ID show it once). `deployment` tells this
    install's message from another's for the same week and address; a forced resend
    (`forced_run`: the run it belongs to) is a new message. Without a deployment (the outbox,
    rows written by older versions) the ID is the week and recipient alone."""
    digest = hashlib.sha256(recipient.strip().lower().encode()).hexdigest()[:16]
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    parts = [f"onboarding-report.{week}.{digest}"]
    parts += [_id_atom(part) for part in (deployment, forced_run) if part]
    return f"<{'.'.join(parts)}@{domain}>"


def _id_atom(value: str) -> str:
    """`value` as a dot-atom part of a Message-ID (run ids are uuids; anything else is made so)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", value)


def build_email(
    *,
    subject: str,
    sender: str,
    recipient: str,
    message_id: str,
    text: str,
    html: str,
    images: dict[str, tuple[str, bytes]],
) -> EmailMessage:
    """multipart/alternative: the plain-text part, then multipart/related holding the HTML
    and its inline images. `images`: Content-ID (without <>) -> (filename, PNG bytes); the
    HTML refers to them as `cid:<Content-ID>`. One recipient per message: nobody sees who
    else receives the report."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = recipient
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    html_part: EmailMessage = message.get_payload()[1]  # type: ignore[index,assignment]
    for content_id, (filename, png) in images.items():
        html_part.add_related(
            png, maintype="image", subtype="png", cid=f"<{content_id}>", filename=filename
        )
    return message

"""`EmailResource`: SMTP settings from environment variables, and the report as a MIME message."""

from __future__ import annotations

import os
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Literal

from dagster import ConfigurableResource, EnvVar

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


class EmailResource(ConfigurableResource):
    """An SMTP server. Without `host` nothing is sent and deliveries go to the outbox.

    `security`: `starttls` (upgrade a plain connection, port 587), `ssl` (TLS from the start,
    port 465) or `none` (a local relay). Login happens only when `username` is set."""

    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = None
    sender: str = DEFAULT_SENDER
    security: Literal["starttls", "ssl", "none"] = "starttls"
    # PEM bundle of a private CA that signed the server's certificate; None = system CAs.
    ca_file: str | None = None
    timeout_seconds: float = 30.0

    @property
    def configured(self) -> bool:
        return bool(self.host)

    def send(self, message: EmailMessage, recipients: list[str]) -> dict[str, str]:
        """Send `message` to `recipients` in one SMTP transaction; returns the recipients
        the server refused (address -> reason). Raises on a failure of the whole message."""
        if not self.host:
            raise RuntimeError("SMTP_HOST is not set")
        # Certificates and host names are always verified.
        context = ssl.create_default_context(cafile=self.ca_file)
        port = self.port or {"ssl": 465, "starttls": 587}.get(self.security, 25)
        smtp: smtplib.SMTP
        if self.security == "ssl":
            smtp = smtplib.SMTP_SSL(self.host, port, timeout=self.timeout_seconds, context=context)
        else:
            smtp = smtplib.SMTP(self.host, port, timeout=self.timeout_seconds)
        with smtp:
            smtp.ehlo()
            if self.security == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self.password or "")
            refused = smtp.send_message(message, to_addrs=recipients)
        return {address: f"{code} {reply!r}" for address, (code, reply) in refused.items()}


def email_resource_from_env() -> EmailResource:
    """The resource for `Definitions`: each setting as an `EnvVar` when that variable is set
    (resolved at run time; the password never lands in metadata), else its default."""
    present = {field: name for field, name in ENV_SMTP.items() if os.environ.get(name)}
    settings: dict[str, object] = {
        field: EnvVar.int(name) if field == "port" else EnvVar(name)
        for field, name in present.items()
    }
    return EmailResource(**settings)  # type: ignore[arg-type]


def build_email(
    *,
    subject: str,
    sender: str,
    recipients: list[str],
    text: str,
    html: str,
    images: dict[str, tuple[str, bytes]],
) -> EmailMessage:
    """multipart/alternative: the plain-text part, then multipart/related holding the HTML
    and its inline images. `images`: Content-ID (without <>) -> (filename, PNG bytes); the
    HTML refers to them as `cid:<Content-ID>`."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "localhost")
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    html_part: EmailMessage = message.get_payload()[1]  # type: ignore[index,assignment]
    for content_id, (filename, png) in images.items():
        html_part.add_related(
            png, maintype="image", subtype="png", cid=f"<{content_id}>", filename=filename
        )
    return message

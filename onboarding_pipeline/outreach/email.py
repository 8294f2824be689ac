"""`email`: the nudge to the user's own address (raw_users.email, read only here and never
written to the ledger, a prompt or a log), one message per user over SMTP.

Each message has `List-Unsubscribe` (and `List-Unsubscribe-Post` for an https link, RFC 8058
one-click) and the same link in the body; the nudge text is HTML-escaped in the HTML part. Its
Message-ID is derived from the ledger key: after a crash between the server's 250 and the
ledger write, the next run sends it again with the same Message-ID (mail systems that keep one
message per Message-ID show it once); email cannot be looked up."""

from __future__ import annotations

import hashlib
import html
import smtplib
import urllib.parse
from datetime import date
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import Any

from onboarding_pipeline.config.engagement import DeliverySettings
from onboarding_pipeline.engagement.nudge_writer import render_message
from onboarding_pipeline.outreach.ledger import (
    FAILED,
    MAX_ERROR_CHARS,
    OUTBOX,
    SENT,
    DeliveryLedger,
    short_error,
)
from onboarding_pipeline.outreach.resource import OutreachResource
from onboarding_pipeline.reporting.mail import EmailResource


def message_id(idempotency_key: str, sender: str) -> str:
    """The same on every attempt of one ledger row (and different per deployment)."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    return f"<onboarding-intervention.{digest}@{domain}>"


def unsubscribe_link(
    user_id: str, settings: DeliverySettings, outreach: OutreachResource, sender: str
) -> str:
    """The configured template filled in (`{token}` needs ONBOARDING_UNSUBSCRIBE_SECRET), or
    a mailto: to the sender naming the user."""
    template = settings.unsubscribe_url
    quoted = urllib.parse.quote(user_id, safe="")
    if template is None:
        address = parseaddr(sender)[1] or sender
        return f"mailto:{address}?subject={urllib.parse.quote(f'unsubscribe {user_id}')}"
    token = outreach.unsubscribe_token(user_id)
    if "{token}" in template and token is None:
        raise RuntimeError(
            "interventions.delivery.unsubscribe_url uses {token}, but "
            "ONBOARDING_UNSUBSCRIBE_SECRET is not set"
        )
    return template.format(user_id=quoted, token=token or "")


def build_message(
    row: dict[str, Any],
    address: str,
    first_name: str | None,
    sender: str,
    settings: DeliverySettings,
    outreach: OutreachResource,
    msgid: str,
) -> EmailMessage:
    link = unsubscribe_link(str(row["user_id"]), settings, outreach, sender)
    text = str(row.get("message") or row["next_action"])
    message = EmailMessage()
    subject = settings.email_subject.format(
        next_action=row["next_action"], first_name=first_name or ""
    )
    message["Subject"] = " ".join(subject.split())  # no header injection through a newline
    message["From"] = sender
    message["To"] = address
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = msgid
    message["List-Unsubscribe"] = f"<{link}>"
    if link.startswith("https://"):
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(f"{render_message(text, 'text')}\n\n--\nUnsubscribe: {link}\n")
    message.add_alternative(
        "<html><body>"
        f"<p>{render_message(text, 'html')}</p>"
        f'<p style="font-size:small"><a href="{html.escape(link, quote=True)}">Unsubscribe</a>'
        "</p></body></html>",
        subtype="html",
    )
    return message


def deliver_email(
    ledger: DeliveryLedger,
    keys: list[str],
    people: dict[str, dict[str, Any]],
    email: EmailResource,
    outreach: OutreachResource,
    settings: DeliverySettings,
    message_key: Any,
    outbox: Path,
    today: date,
) -> None:
    """Send the rows of `keys` (already through suppression, limits and quiet hours).
    `people`: user id -> {email, first_name}."""
    if not keys:
        return

    def message_for(key: str, msgid: str) -> Any:
        row = ledger.rows[key]
        person = people[str(row["user_id"])]
        return build_message(
            row, person["email"], person.get("first_name"), email.sender, settings, outreach, msgid
        )

    if not email.configured:
        folder = outbox / "email"
        folder.mkdir(parents=True, exist_ok=True)
        for key in keys:
            message = message_for(key, message_id(f"outbox:{key}", email.sender))
            path = folder / f"{key}.eml"
            path.write_bytes(bytes(message))
            ledger.update(key, status=OUTBOX, outbox_path=str(path), last_attempt_on=today)
        ledger.save()
        return
    pending = list(keys)
    try:
        with email.connection() as smtp:
            while pending:
                key = pending[0]
                row = ledger.rows[key]
                person = people[str(row["user_id"])]
                idempotency_key = str(row.get("idempotency_key") or message_key(key))
                msgid = message_id(idempotency_key, email.sender)
                message = message_for(key, msgid)
                ledger.intend(key, idempotency_key, today)
                try:
                    smtp.send(message, person["email"])
                except smtplib.SMTPRecipientsRefused as error:
                    code, reply = next(iter(error.recipients.values()), (0, b""))
                    reason = f"refused: {code} {reply!r}"[:MAX_ERROR_CHARS]
                    ledger.update(key, status=FAILED, last_error=reason)
                else:
                    # The server's 250 after DATA: delivered, whatever happens to the session.
                    ledger.update(key, status=SENT, provider_id=msgid, last_error=None)
                ledger.save()
                pending.pop(0)
    except Exception as error:  # connection, TLS, login or a dropped session
        for key in pending:
            # A row left `sending` keeps its Message-ID: the retry is the same message.
            ledger.update(key, last_error=short_error(error))
            if ledger.rows[key]["status"] != "sending":
                ledger.update(key, status=FAILED)
        ledger.save()

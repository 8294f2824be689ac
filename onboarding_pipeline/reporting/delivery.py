"""Deliver a written weekly report to email, Slack and Notion exactly once, with a ledger.

The ledger (`report_deliveries`) holds one row per (report week, channel, recipient), and a
week's deliveries run under that week's lock in the warehouse: one deliverer at a time,
whatever started the run. Before a message leaves, its row says `sending` with the message's
idempotency key; once the service accepted it, `sent`. A run that finds `sending` (the last
one died, or got no answer) looks before it sends again: Slack, the channel's recent history
for a message carrying the key in its metadata; Notion, the database's pages created since,
for the one carrying the key (in its last block); email cannot be looked up, so it goes again
with the same Message-ID (mail systems that keep one message per Message-ID show it once).
A service that answered "no" leaves `failed`, tried again on the next run, like `outbox`;
`sent` is never sent again unless forced. Each channel is delivered on its own: a Slack failure does not stop email.
Without credentials the exact message is written to the outbox folder instead.

Every key carries the deployment's id (a random value kept in the warehouse, table
`deployment`), so two deployments posting the same week to one channel never take each
other's message for their own. A forced delivery's keys also carry the Dagster run it belongs
to (the root run: a run retry is the same run): the step retries of one forced run are one
delivery, and a new forced run is a new message."""

from __future__ import annotations

import json
import re
import smtplib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ibis
import pandas as pd
import pyarrow as pa
from notion_client import APIResponseError
from notion_client import Client as NotionClient
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from onboarding_pipeline.config.product import ReportSettings
from onboarding_pipeline.reporting import notion as notion_pages
from onboarding_pipeline.reporting.mail import (
    EmailResource,
    SmtpConnection,
    build_email,
    report_message_id,
    unique_recipients,
)
from onboarding_pipeline.reporting.notion import NotionResource
from onboarding_pipeline.reporting.report import (
    NOT_ENOUGH_DATA,
    ReportData,
    clean_value,
    content_id,
    fmt_change,
    fmt_kpi,
    render_html,
    render_markdown,
)
from onboarding_pipeline.reporting.slack import SlackResource
from onboarding_pipeline.warehouse import TableSpec, WarehouseResource
from onboarding_pipeline.warehouse.tables import REPORT_DELIVERIES, UTC_TIMESTAMP

SENT, OUTBOX, FAILED, POSTED, SENDING = "sent", "outbox", "failed", "posted", "sending"
_MAX_ERROR_CHARS = 500
# `event_type` of the metadata on the Slack message: how a rerun recognises its own post.
SLACK_METADATA_EVENT = "onboarding_weekly_report"
# How far before the recorded intent a rerun searches (clocks of this host and the service).
_CLOCK_SKEW = timedelta(minutes=10)

DEPLOYMENT = TableSpec(
    "deployment",
    ibis.schema({"deployment_id": "!string", "created_at": UTC_TIMESTAMP.copy(nullable=False)}),
    "This warehouse's deployment id (random, made on the first delivery to a service): part of "
    "every delivery key, so deployments sharing a channel never mistake each other's messages.",
)


def deployment_id(warehouse: WarehouseResource) -> str:
    """The id of the deployment that `warehouse` (and its ledger) belongs to: read from table
    `deployment`, made (uuid4) on first use under the warehouse's write lock, so concurrent
    first runs agree on one. A random value, not derived from the URL: two installs with the
    same URL on different machines (`postgresql://postgres:5432/...` in two containers) are
    still told apart, and nothing of the URL or its credentials is in it."""
    warehouse.connect()  # creates the schema and the declared tables
    with warehouse.transaction():
        warehouse.ensure_table(DEPLOYMENT)
        table = warehouse.table(DEPLOYMENT.name)
        existing = warehouse.execute(table.deployment_id.min())
        if isinstance(existing, str) and existing:
            return existing
        new = uuid.uuid4().hex
        row = pa.Table.from_pydict(
            {"deployment_id": [new], "created_at": [datetime.now(UTC)]},
            schema=DEPLOYMENT.schema.to_pyarrow(),
        )
        warehouse.replace_all(DEPLOYMENT.name, row)
        return new


class MessageKeys:
    """What makes this run's messages its own: the deployment and, when forced, the run."""

    def __init__(self, warehouse: WarehouseResource, force: bool, run_id: str | None) -> None:
        self._warehouse = warehouse
        self._deployment: str | None = None
        # A forced delivery outside Dagster (no run id) is a run of its own.
        self.forced_run = (run_id or uuid.uuid4().hex) if force else None

    @property
    def forced(self) -> bool:
        return self.forced_run is not None

    @property
    def deployment(self) -> str:
        """Read (or made) once, on the first message that goes to a service."""
        if self._deployment is None:
            self._deployment = deployment_id(self._warehouse)
        return self._deployment


@dataclass
class DeliveryResult:
    """What one run did, per channel."""

    rows: pd.DataFrame  # the week's ledger after the run
    sent: list[str] = field(default_factory=list)  # "email:a@x", "slack:#c", "notion:<db>"
    outbox: list[str] = field(default_factory=list)
    # Already sent: the ledger said `sent`, or an earlier, interrupted attempt's message was
    # found at the service (those are in `recovered` too). Nothing of them sent by this run.
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    outbox_files: list[Path] = field(default_factory=list)
    # Found already delivered by an earlier, interrupted attempt: recorded, not sent again.
    recovered: list[str] = field(default_factory=list)


class Ledger:
    """The week's rows of `report_deliveries`, rewritten as a whole after every change
    (delete the week, insert its rows, in one transaction: idempotent). Read it only while
    holding the week's delivery lock (`deliver_report` does)."""

    def __init__(self, warehouse: WarehouseResource, week: str) -> None:
        self.warehouse = warehouse
        self.week = week
        table = warehouse.table(REPORT_DELIVERIES.name)
        frame = warehouse.execute(table.filter(table.report_week == week))
        self.rows: dict[tuple[str, str], dict[str, Any]] = {
            (row["channel"], row["recipient"]): {
                key: clean_value(value) for key, value in row.items()
            }
            for row in frame.to_dict(orient="records")
        }

    def get(self, channel: str, recipient: str) -> dict[str, Any] | None:
        return self.rows.get((channel, recipient))

    def update(self, channel: str, recipient: str, **values: Any) -> None:
        now = datetime.now(UTC)
        row = self.rows.get((channel, recipient)) or {
            "report_week": self.week,
            "channel": channel,
            "recipient": recipient,
            "status": FAILED,
            "attempts": 0,
            "provider_id": None,
            "last_error": None,
            "outbox_path": None,
            "sent_at": None,
            "idempotency_key": None,
            "intent_at": None,
        }
        if values.get("status") in (FAILED, SENDING):
            # Not (or not yet) delivered: an id from an earlier send (a forced run's row
            # holds the previous message's) must not pass for this message's.
            values = {"provider_id": None, **values}
        row.update(values, updated_at=now)
        if values.get("status") == SENT:
            row["sent_at"] = now
        self.rows[(channel, recipient)] = row

    def intend(self, channel: str, recipient: str, key: str, attempts: int) -> None:
        """Record, durably, that message `key` is about to leave: a crash from here on leaves
        `sending`, and the next run checks before it sends again."""
        self.update(
            channel,
            recipient,
            status=SENDING,
            attempts=attempts,
            idempotency_key=key,
            intent_at=datetime.now(UTC),
            last_error=None,
            outbox_path=None,
        )
        self.save()

    def save(self) -> None:
        schema = REPORT_DELIVERIES.schema.to_pyarrow()
        columns = {name: [row.get(name) for row in self.rows.values()] for name in schema.names}
        table = pa.Table.from_pydict(columns, schema=schema)
        self.warehouse.replace_where_equal(REPORT_DELIVERIES.name, table, "report_week", self.week)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows.values()))


def _status(row: dict[str, Any] | None) -> str | None:
    return None if row is None else str(row["status"])


def idempotency_key(row: dict[str, Any] | None, fresh: Callable[[], str], forced: bool) -> str:
    """The key of the message a delivery sends: a forced run's own (`fresh()` carries the
    run); otherwise the earlier attempt's while the row is not known to be sent (a retry is the
    same message, whatever key format the row was written with), `fresh()` for a new row."""
    if forced or row is None or not row.get("idempotency_key"):
        return fresh()
    return str(row["idempotency_key"])


def _earlier(row: dict[str, Any] | None, key: str, forced: bool) -> dict[str, Any] | None:
    """The ledger row as far as message `key` is concerned. A forced run's message is not
    the one an earlier run sent: None, unless the row already holds this run's key (a step
    retry of the same forced run, which carries on from where its first attempt stopped)."""
    if forced and (row is None or row.get("idempotency_key") != key):
        return None
    return row


def _due(row: dict[str, Any] | None, key: str, forced: bool) -> bool:
    return _status(_earlier(row, key, forced)) != SENT


def _outbox_due(row: dict[str, Any] | None, forced: bool) -> bool:
    # The outbox is rewritten, never sent: a forced run (or its retry) just writes it again.
    return forced or _status(row) != SENT


def report_key(
    week: str, channel: str, target: str, deployment: str, forced_run: str | None = None
) -> str:
    """The idempotency key of a week's report on a channel of one deployment; a forced
    delivery adds its run. (Rows written before the deployment id keep their older keys.)"""
    key = f"onboarding-report:{deployment}:{week}:{channel}:{target}"
    return key + (f":forced:{forced_run}" if forced_run else "")


def _report_message_key(
    row: dict[str, Any] | None, week: str, channel: str, target: str, keys: MessageKeys
) -> str:
    """The key of this run's message of the week to `target` on `channel`."""
    return idempotency_key(
        row,
        lambda: report_key(week, channel, target, keys.deployment, keys.forced_run),
        keys.forced,
    )


def _attempts(row: dict[str, Any] | None) -> int:
    return int((row or {}).get("attempts") or 0) + 1


def _since(row: dict[str, Any] | None) -> datetime | None:
    """When the earlier attempt recorded its intent, minus the clock skew allowed."""
    value = (row or {}).get("intent_at")
    if value is None:
        return None
    return pd.Timestamp(value).to_pydatetime().astimezone(UTC) - _CLOCK_SKEW


def _short(error: BaseException) -> str:
    if isinstance(error, SlackApiError):
        # The HTTP status and Slack's error code say what to fix; the rest is noise.
        response = error.response
        return f"Slack API HTTP {response.status_code}: {response.get('error')}"[:_MAX_ERROR_CHARS]
    return f"{type(error).__name__}: {error}"[:_MAX_ERROR_CHARS]


def _file_name(text: str) -> str:
    """`text` as a safe file name (an address or a channel)."""
    return re.sub(r"[^A-Za-z0-9@._+-]", "_", text)[:120] or "_"


# ---------------------------------------------------------------- messages


def email_message(
    data: ReportData, charts: dict[str, bytes], sender: str, recipient: str, message_id: str
) -> Any:
    return build_email(
        subject=f"{data.title}: week of {data.week}",
        sender=sender,
        recipient=recipient,
        message_id=message_id,
        text=render_markdown(data),
        html=render_html(data, charts, images="cid"),
        images={content_id(name): (f"{name}.png", png) for name, png in charts.items()},
    )


def slack_escape(text: str) -> str:
    """Text from config or data as literal Slack text: `&`, `<` and `>` are Slack's control
    characters (`<!here>`, `<@U123>`, `<https://x|label>`), so they become entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fit(escaped: str, limit: int) -> str:
    """`escaped` cut to Slack's length limit without leaving half an entity (`&am`)."""
    if len(escaped) <= limit:
        return escaped
    return re.sub(r"&[a-z]{0,3}$", "", escaped[:limit])


def _mrkdwn(text: str, limit: int) -> dict[str, Any]:
    # verbatim: Slack must not turn plain words into links, channel names or mentions either.
    return {"type": "mrkdwn", "text": _fit(text, limit), "verbatim": True}


def slack_blocks(data: ReportData) -> tuple[str, list[dict[str, Any]]]:
    """The Block Kit summary and its fallback `text` (what notifications show).

    Every value from config or data is escaped before it goes into mrkdwn or the fallback
    text; only the formatting this function adds (`*bold*`, `_italic_`) stays markup. The
    header is `plain_text`, which Slack never parses, so the title goes there as it is."""
    title = f"{data.title}: week of {data.week}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {
            "type": "context",
            "elements": [
                _mrkdwn(
                    slack_escape(
                        f"{data.week} to {data.week_end} · data as of {data.watermark or '-'}"
                    ),
                    2000,
                )
            ],
        },
    ]
    if data.kpis:
        fields = []
        for kpi in data.kpis[:10]:
            mark = {True: ":white_check_mark:", False: ":warning:"}.get(kpi["meets_target"], "")
            line = fmt_kpi(kpi["value"], kpi["unit"])
            if kpi["change"] is not None:
                line += f" ({fmt_change(kpi['change'], kpi['unit'])} vs previous cohort)"
            if kpi["target"] is not None:
                line += f", target {fmt_kpi(kpi['target'], kpi['unit'])}"
            label = slack_escape(str(kpi["label"]))
            fields.append(_mrkdwn(f"*{label}* {mark}\n{slack_escape(line)}", 2000))
        blocks.append({"type": "section", "fields": fields})
    else:
        reason = slack_escape(str(data.missing.get("kpis", "no KPIs")))
        blocks.append(_section(f"_{NOT_ENOUGH_DATA}: {reason}._"))
    blocks.append({"type": "divider"})
    if data.review:
        lines = ["*Issues for the weekly review*"]
        for number, item in enumerate(data.review, start=1):
            heading, owner, evidence = (
                slack_escape(str(item[key])) for key in ("title", "owner", "evidence")
            )
            lines.append(f"{number}. *{heading}* ({owner})\n{evidence}")
        blocks.append(_section("\n".join(lines)))
    else:
        blocks.append(_section(f"_{NOT_ENOUGH_DATA} for a weekly review._"))
    return slack_escape(title), blocks


def _section(text: str) -> dict[str, Any]:
    """A mrkdwn section; `text` must already be escaped."""
    return {"type": "section", "text": _mrkdwn(text, 3000)}


# ---------------------------------------------------------------- channels


def deliver_email(
    ledger: Ledger,
    result: DeliveryResult,
    data: ReportData,
    charts: dict[str, bytes],
    settings: ReportSettings,
    email: EmailResource,
    outbox: Path,
    keys: MessageKeys,
) -> None:
    """One message per recipient (To: that address only), each with its ledger row."""
    recipients = unique_recipients(settings.recipients)
    if not email.configured:
        due = [r for r in recipients if _outbox_due(ledger.get("email", r), keys.forced)]
        result.skipped += [f"email:{r}" for r in recipients if r not in due]
        if not due:
            return
        folder = outbox / "email"
        folder.mkdir(parents=True, exist_ok=True)
        for recipient in due:
            # Written, not sent: nothing to tell apart from another deployment's message.
            message_id = report_message_id(data.week, recipient, email.sender)
            message = email_message(data, charts, email.sender, recipient, message_id)
            path = folder / f"{_file_name(recipient)}.eml"
            path.write_bytes(bytes(message))
            result.outbox_files.append(path)
            ledger.update("email", recipient, status=OUTBOX, outbox_path=str(path), last_error=None)
            result.outbox.append(f"email:{recipient}")
        ledger.save()
        return

    def key_for(recipient: str) -> str:
        return idempotency_key(
            ledger.get("email", recipient),
            lambda: report_message_id(
                data.week, recipient, email.sender, keys.deployment, keys.forced_run
            ),
            keys.forced,
        )

    message_ids = {recipient: key_for(recipient) for recipient in recipients}
    due = [r for r in recipients if _due(ledger.get("email", r), message_ids[r], keys.forced)]
    result.skipped += [f"email:{r}" for r in recipients if r not in due]
    if not due:
        return
    pending = list(due)
    while pending:
        reconnect = False
        try:
            with email.connection() as smtp:
                while pending and not reconnect:
                    recipient = pending[0]
                    key = message_ids[recipient]
                    message = email_message(data, charts, email.sender, recipient, key)
                    attempts = _attempts(ledger.get("email", recipient))
                    ledger.intend("email", recipient, key, attempts)
                    pending.pop(0)
                    # A dead session costs this recipient the attempt, not the ones after.
                    reconnect = not _send_one(ledger, result, smtp, message, recipient, key)
                    ledger.save()
        except Exception as error:  # connection, TLS or login: nobody left can be tried
            for recipient in pending:
                ledger.update("email", recipient, status=FAILED, last_error=_short(error))
                result.failed[f"email:{recipient}"] = _short(error)
            ledger.save()
            return


def _send_one(
    ledger: Ledger,
    result: DeliveryResult,
    smtp: SmtpConnection,
    message: Any,
    recipient: str,
    key: str,
) -> bool:
    """Send `message` to `recipient` and record the outcome in its own row; False when the
    session is dead afterwards (the caller reconnects for the next recipient).

    Any answer but a 250 after DATA fails this recipient only: an address the server refuses
    (RCPT), a message it rejects (DATA 554), an address it cannot take (non-ASCII without
    SMTPUTF8). A session that broke mid-message leaves it unknown whether the server kept
    it; the row is `failed` and the retry goes with the same Message-ID."""
    name = f"email:{recipient}"
    try:
        smtp.send(message, recipient)
    except smtplib.SMTPRecipientsRefused as error:
        code, reply = error.recipients.get(recipient, (0, b""))
        reason = f"refused: {code} {reply!r}"[:_MAX_ERROR_CHARS]
    except (smtplib.SMTPException, OSError, UnicodeError) as error:
        reason = _short(error)
    else:
        # The server's 250 after DATA: delivered, whatever happens to the session.
        ledger.update("email", recipient, status=SENT, provider_id=key, last_error=None)
        result.sent.append(name)
        return True
    ledger.update("email", recipient, status=FAILED, last_error=reason)
    result.failed[name] = reason
    return smtp.alive()


def slack_channel_id(client: WebClient, channel: str) -> str:
    """The id of `channel` (conversations.history needs it): as given when it is an id, else
    looked up by name (needs the channels:read / groups:read scope)."""
    if re.fullmatch(r"[CGD][A-Z0-9]{6,}", channel):
        return channel
    name = channel.removeprefix("#")
    for page in client.conversations_list(
        types="public_channel,private_channel", exclude_archived=True, limit=1000
    ):
        for conversation in page.get("channels") or []:
            if conversation.get("name") == name:
                return str(conversation["id"])
    raise RuntimeError(f"Slack channel {channel} not found by conversations.list")


def find_slack_post(
    client: WebClient,
    channel: str,
    key: str,
    since: datetime | None,
    event_type: str = SLACK_METADATA_EVENT,
) -> tuple[str, str] | None:
    """(channel id, ts) of the message of `event_type` carrying `key` in its metadata posted
    since `since` (conversations.history: the channels:history / groups:history scope), or
    None."""
    channel_id = slack_channel_id(client, channel)
    oldest = f"{since.timestamp():.6f}" if since else "0"
    for page in client.conversations_history(
        channel=channel_id, oldest=oldest, include_all_metadata=True, limit=200
    ):
        for message in page.get("messages") or []:
            metadata = message.get("metadata") or {}
            payload = metadata.get("event_payload") or {}
            if metadata.get("event_type") == event_type and payload.get("idempotency_key") == key:
                return channel_id, str(message["ts"])
    return None


def _charts_in_thread(client: WebClient, channel_id: str, ts: str) -> set[str]:
    """File names already uploaded in the message's thread (by an interrupted attempt)."""
    names: set[str] = set()
    for page in client.conversations_replies(channel=channel_id, ts=ts, limit=200):
        for message in page.get("messages") or []:
            names.update(str(f.get("name")) for f in message.get("files") or [])
    return names


def deliver_slack(
    ledger: Ledger,
    result: DeliveryResult,
    data: ReportData,
    charts: dict[str, bytes],
    channel: str,
    client: WebClient | None,
    outbox: Path,
    keys: MessageKeys,
) -> None:
    if not channel:
        return
    name = f"slack:{channel}"
    row = ledger.get("slack", channel)
    if client is None:
        if not _outbox_due(row, keys.forced):
            result.skipped.append(name)
            return
        text, blocks = slack_blocks(data)
        path = outbox / "slack.json"
        payload = {
            "chat.postMessage": {"channel": channel, "text": text, "blocks": blocks},
            "files_upload_v2": [
                {"filename": f"{chart}.png", "title": f"{chart.replace('_', ' ')} chart"}
                for chart in charts
            ],
        }
        path.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
        result.outbox_files.append(path)
        ledger.update("slack", channel, status=OUTBOX, outbox_path=str(path), last_error=None)
        result.outbox.append(name)
        ledger.save()
        return
    key = _report_message_key(row, data.week, "slack", channel, keys)
    if not _due(row, key, keys.forced):
        result.skipped.append(name)
        return
    text, blocks = slack_blocks(data)
    earlier = _earlier(row, key, keys.forced)
    status = _status(earlier)
    attempts = _attempts(row)
    step = "check"
    recovered = False
    try:
        posted: tuple[str, str] | None = None
        if status == POSTED and (earlier or {}).get("provider_id"):
            # The text went out on an earlier attempt; only the charts may be missing.
            channel_id, ts = str((earlier or {})["provider_id"]).split("/", 1)
            posted = (channel_id, ts)
        elif status == SENDING:
            # The last attempt may have posted before it died: look before posting again.
            posted = find_slack_post(client, channel, key, _since(earlier))
            if posted is not None:
                ledger.update(
                    "slack", channel, status=POSTED, provider_id="/".join(posted), last_error=None
                )
                ledger.save()
                result.recovered.append(name)
                recovered = True
        if posted is None:
            ledger.intend("slack", channel, key, attempts)
            step = "post"
            response = client.chat_postMessage(
                channel=channel,
                text=text,
                blocks=blocks,
                metadata={
                    "event_type": SLACK_METADATA_EVENT,
                    "event_payload": {"idempotency_key": key, "report_week": data.week},
                },
            )
            posted = (str(response["channel"]), str(response["ts"]))
            ledger.update("slack", channel, status=POSTED, provider_id="/".join(posted))
            ledger.save()  # a crash from here on must not post the text twice
            earlier = None  # a new message: its thread is empty
        step = "upload"
        channel_id, ts = posted
        present = _charts_in_thread(client, channel_id, ts) if charts and earlier else set()
        missing = {chart: png for chart, png in charts.items() if f"{chart}.png" not in present}
        if missing:
            client.files_upload_v2(
                file_uploads=[
                    {"file": png, "filename": f"{chart}.png", "title": f"{chart} chart"}
                    for chart, png in missing.items()
                ],
                channel=channel_id,
                thread_ts=ts,
            )
    except Exception as error:  # SlackApiError after the retry handlers gave up, or network
        ledger.update("slack", channel, attempts=attempts, last_error=_short(error))
        if step == "post" and isinstance(error, SlackApiError):
            # Slack answered "no": nothing was posted. Without an answer (timeout, dropped
            # connection) the row stays `sending` and the next run looks first.
            ledger.update("slack", channel, status=FAILED)
        elif step == "check":
            message = f"could not check whether an earlier attempt posted: {_short(error)}"
            ledger.update("slack", channel, last_error=message[:_MAX_ERROR_CHARS])
        result.failed[name] = str(ledger.get("slack", channel)["last_error"])  # type: ignore[index]
    else:
        ledger.update("slack", channel, status=SENT, attempts=attempts, last_error=None)
        if recovered:
            # Posted by an interrupted earlier attempt, found in the channel's history (its
            # missing charts uploaded now): already sent, not sent by this run.
            result.skipped.append(name)
        else:
            result.sent.append(name)
    ledger.save()


def deliver_notion(
    ledger: Ledger,
    result: DeliveryResult,
    data: ReportData,
    database_id: str | None,
    client: NotionClient | None,
    outbox: Path,
    keys: MessageKeys,
) -> None:
    """The week's page in the Notion database, once (the same ledger and `sending` check)."""
    if not database_id:
        return
    name = f"notion:{database_id}"
    row = ledger.get("notion", database_id)
    if client is None:
        if not _outbox_due(row, keys.forced):
            result.skipped.append(name)
            return
        path = outbox / "notion.json"
        payload = notion_pages.page_payload(data, "<data source of the database>", "title")
        payload["parent"] = {"database_id": notion_pages.database_of(database_id)}
        path.write_text(
            json.dumps({"pages.create": payload}, indent=2, ensure_ascii=False), encoding="utf-8"
        )
        result.outbox_files.append(path)
        ledger.update("notion", database_id, status=OUTBOX, outbox_path=str(path), last_error=None)
        result.outbox.append(name)
        ledger.save()
        return
    key = _report_message_key(row, data.week, "notion", database_id, keys)
    if not _due(row, key, keys.forced):
        result.skipped.append(name)
        return
    earlier = _earlier(row, key, keys.forced)
    attempts = _attempts(row)
    step = "check"
    recovered = False
    try:
        source_id, title_property = notion_pages.data_source_of(client, database_id)
        page_id = None
        if _status(earlier) == SENDING:
            page_id = notion_pages.find_page(client, source_id, key, _since(earlier))
            if page_id is not None:
                result.recovered.append(name)
                recovered = True
        if page_id is None:
            ledger.intend("notion", database_id, key, attempts)
            step = "create"
            page_id = notion_pages.create_page(
                client, notion_pages.page_payload(data, source_id, title_property, key)
            )
    except Exception as error:
        ledger.update("notion", database_id, attempts=attempts, last_error=_short(error))
        if step == "create" and isinstance(error, APIResponseError):
            # Notion answered with an error: no page. No answer: stays `sending`.
            ledger.update("notion", database_id, status=FAILED)
        result.failed[name] = _short(error)
    else:
        ledger.update(
            "notion",
            database_id,
            status=SENT,
            attempts=attempts,
            provider_id=page_id,
            last_error=None,
            outbox_path=None,
        )
        # A page an interrupted attempt created is already sent, not sent by this run.
        (result.skipped if recovered else result.sent).append(name)
    ledger.save()


def deliver_report(
    warehouse: WarehouseResource,
    data: ReportData,
    charts: dict[str, bytes],
    settings: ReportSettings,
    *,
    slack: SlackResource,
    email: EmailResource,
    notion: NotionResource | None = None,
    outbox_root: Path,
    force: bool = False,
    run_id: str | None = None,
    log: Callable[[str], None] = print,
) -> DeliveryResult:
    """Send the report of `data.week` over every configured channel that still needs it.

    The whole delivery holds the week's lock: a concurrent run waits, then finds the
    ledger's `sent` rows and sends nothing twice. `force`: send again what is `sent`, once
    per `run_id` (the Dagster run; a retry of that run sends nothing its earlier attempts
    sent; without a run id every call is a run of its own)."""
    outbox = outbox_root / data.week
    outbox.mkdir(parents=True, exist_ok=True)
    notion = notion or NotionResource()
    database_id = settings.notion_database_id or notion.database_id
    result = DeliveryResult(rows=pd.DataFrame())
    keys = MessageKeys(warehouse, force, run_id)
    with warehouse.exclusive(f"deliveries:{data.week}"):
        ledger = Ledger(warehouse, data.week)
        for name, deliver in (
            (
                "email",
                lambda: deliver_email(ledger, result, data, charts, settings, email, outbox, keys),
            ),
            (
                "slack",
                lambda: deliver_slack(
                    ledger,
                    result,
                    data,
                    charts,
                    settings.slack_channel,
                    slack.client(),
                    outbox,
                    keys,
                ),
            ),
            (
                "notion",
                lambda: deliver_notion(
                    ledger, result, data, database_id, notion.client(), outbox, keys
                ),
            ),
        ):
            try:
                deliver()
            except Exception as error:  # building the message failed: keep the others going
                result.failed[name] = _short(error)
                log(f"{name} delivery failed before sending: {_short(error)}")
        result.rows = ledger.frame()
    return result

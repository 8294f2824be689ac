"""Deliver a written weekly report to Slack and email exactly once, with a ledger.

The ledger (`report_deliveries`) holds one row per (report week, channel, recipient). A row
that is `sent` is never sent again unless forced; `failed` and `outbox` rows are tried again
on the next run. Each channel is delivered on its own: a Slack failure does not stop email.
Without credentials the exact message is written to the outbox folder instead."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from onboarding_pipeline.config.product import ReportSettings
from onboarding_pipeline.reporting.mail import EmailResource, build_email
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
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.tables import REPORT_DELIVERIES

SENT, OUTBOX, FAILED, POSTED = "sent", "outbox", "failed", "posted"
_MAX_ERROR_CHARS = 500


@dataclass
class DeliveryResult:
    """What one run did, per channel."""

    rows: pd.DataFrame  # the week's ledger after the run
    sent: list[str] = field(default_factory=list)  # "email:a@x", "slack:#c"
    outbox: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already sent
    failed: dict[str, str] = field(default_factory=dict)
    outbox_files: list[Path] = field(default_factory=list)


class Ledger:
    """The week's rows of `report_deliveries`, rewritten as a whole after every change
    (delete the week, insert its rows, in one transaction: idempotent)."""

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
        }
        row.update(values, updated_at=now)
        if values.get("status") == SENT:
            row["sent_at"] = now
        self.rows[(channel, recipient)] = row

    def save(self) -> None:
        schema = REPORT_DELIVERIES.schema.to_pyarrow()
        columns = {name: [row.get(name) for row in self.rows.values()] for name in schema.names}
        table = pa.Table.from_pydict(columns, schema=schema)
        self.warehouse.replace_where_equal(REPORT_DELIVERIES.name, table, "report_week", self.week)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows.values()))


def _due(ledger: Ledger, channel: str, recipient: str, force: bool) -> bool:
    row = ledger.get(channel, recipient)
    return force or row is None or row["status"] != SENT


def _short(error: BaseException) -> str:
    if isinstance(error, SlackApiError):
        # The HTTP status and Slack's error code say what to fix; the rest is noise.
        response = error.response
        return f"Slack API HTTP {response.status_code}: {response.get('error')}"[:_MAX_ERROR_CHARS]
    return f"{type(error).__name__}: {error}"[:_MAX_ERROR_CHARS]


# ---------------------------------------------------------------- messages


def email_message(
    data: ReportData, charts: dict[str, bytes], sender: str, recipients: list[str]
) -> Any:
    return build_email(
        subject=f"{data.title}: week of {data.week}",
        sender=sender,
        recipients=recipients,
        text=render_markdown(data),
        html=render_html(data, charts, images="cid"),
        images={content_id(name): (f"{name}.png", png) for name, png in charts.items()},
    )


def slack_escape(text: str) -> str:
    """Slack mrkdwn treats &, < and > as control characters (links, mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_blocks(data: ReportData) -> tuple[str, list[dict[str, Any]]]:
    """The Block Kit summary and its plain-text fallback."""
    title = f"{data.title}: week of {data.week}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": slack_escape(
                        f"{data.week} to {data.week_end} · data as of {data.watermark or '-'}"
                    ),
                }
            ],
        },
    ]
    if data.kpis:
        fields = []
        for kpi in data.kpis[:10]:
            mark = {True: ":white_check_mark:", False: ":warning:"}.get(kpi["meets_target"], "")
            line = f"*{kpi['label']}* {mark}\n{fmt_kpi(kpi['value'], kpi['unit'])}"
            if kpi["change"] is not None:
                line += f" ({fmt_change(kpi['change'], kpi['unit'])} vs previous cohort)"
            if kpi["target"] is not None:
                line += f", target {fmt_kpi(kpi['target'], kpi['unit'])}"
            fields.append({"type": "mrkdwn", "text": slack_escape(line)[:2000]})
        blocks.append({"type": "section", "fields": fields})
    else:
        blocks.append(_section(f"_{NOT_ENOUGH_DATA}: {data.missing.get('kpis', 'no KPIs')}._"))
    blocks.append({"type": "divider"})
    if data.review:
        lines = ["*Issues for the weekly review*"]
        for number, item in enumerate(data.review, start=1):
            lines.append(f"{number}. *{item['title']}* ({item['owner']})\n{item['evidence']}")
        blocks.append(_section(slack_escape("\n".join(lines))))
    else:
        blocks.append(_section(f"_{NOT_ENOUGH_DATA} for a weekly review._"))
    return title, blocks


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}


# ---------------------------------------------------------------- channels


def deliver_email(
    ledger: Ledger,
    result: DeliveryResult,
    data: ReportData,
    charts: dict[str, bytes],
    settings: ReportSettings,
    email: EmailResource,
    outbox: Path,
    force: bool,
) -> None:
    due = [r for r in settings.recipients if _due(ledger, "email", r, force)]
    result.skipped += [f"email:{r}" for r in settings.recipients if r not in due]
    if not due:
        return
    message = email_message(data, charts, email.sender, due)
    if not email.configured:
        path = outbox / "email.eml"
        path.write_bytes(bytes(message))
        result.outbox_files.append(path)
        for recipient in due:
            ledger.update("email", recipient, status=OUTBOX, outbox_path=str(path), last_error=None)
            result.outbox.append(f"email:{recipient}")
        ledger.save()
        return
    attempts = {r: int((ledger.get("email", r) or {}).get("attempts") or 0) + 1 for r in due}
    try:
        refused = email.send(message, due)
    except Exception as error:  # any SMTP or network failure: the whole message failed
        for recipient in due:
            ledger.update(
                "email",
                recipient,
                status=FAILED,
                attempts=attempts[recipient],
                last_error=_short(error),
            )
            result.failed[f"email:{recipient}"] = _short(error)
    else:
        for recipient in due:
            if recipient in refused:
                ledger.update(
                    "email",
                    recipient,
                    status=FAILED,
                    attempts=attempts[recipient],
                    last_error=f"refused: {refused[recipient]}"[:_MAX_ERROR_CHARS],
                )
                result.failed[f"email:{recipient}"] = refused[recipient]
            else:
                ledger.update(
                    "email",
                    recipient,
                    status=SENT,
                    attempts=attempts[recipient],
                    provider_id=message["Message-ID"],
                    last_error=None,
                    outbox_path=None,
                )
                result.sent.append(f"email:{recipient}")
    ledger.save()


def deliver_slack(
    ledger: Ledger,
    result: DeliveryResult,
    data: ReportData,
    charts: dict[str, bytes],
    channel: str,
    client: WebClient | None,
    outbox: Path,
    force: bool,
) -> None:
    if not channel:
        return
    key = f"slack:{channel}"
    if not _due(ledger, "slack", channel, force):
        result.skipped.append(key)
        return
    text, blocks = slack_blocks(data)
    if client is None:
        path = outbox / "slack.json"
        payload = {
            "chat.postMessage": {"channel": channel, "text": text, "blocks": blocks},
            "files_upload_v2": [
                {"filename": f"{name}.png", "title": f"{name.replace('_', ' ')} chart"}
                for name in charts
            ],
        }
        path.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
        result.outbox_files.append(path)
        ledger.update("slack", channel, status=OUTBOX, outbox_path=str(path), last_error=None)
        result.outbox.append(key)
        ledger.save()
        return
    row = ledger.get("slack", channel) or {}
    attempts = int(row.get("attempts") or 0) + 1
    try:
        if row.get("status") == POSTED and row.get("provider_id") and not force:
            # The text went out on an earlier run; only the charts are missing.
            channel_id, ts = str(row["provider_id"]).split("/", 1)
        else:
            response = client.chat_postMessage(channel=channel, text=text, blocks=blocks)
            channel_id, ts = str(response["channel"]), str(response["ts"])
            ledger.update(
                "slack",
                channel,
                status=POSTED,
                attempts=attempts,
                provider_id=f"{channel_id}/{ts}",
                outbox_path=None,
            )
            ledger.save()  # a crash from here on must not post the text twice
        if charts:
            client.files_upload_v2(
                file_uploads=[
                    {"file": png, "filename": f"{name}.png", "title": f"{name} chart"}
                    for name, png in charts.items()
                ],
                channel=channel_id,
                thread_ts=ts,
            )
    except Exception as error:  # SlackApiError after the retry handlers gave up, or network
        ledger.update("slack", channel, attempts=attempts, last_error=_short(error))
        if (ledger.get("slack", channel) or {}).get("status") != POSTED:
            ledger.update("slack", channel, status=FAILED)
        result.failed[key] = _short(error)
    else:
        ledger.update("slack", channel, status=SENT, attempts=attempts, last_error=None)
        result.sent.append(key)
    ledger.save()


def deliver_report(
    warehouse: WarehouseResource,
    data: ReportData,
    charts: dict[str, bytes],
    settings: ReportSettings,
    *,
    slack: SlackResource,
    email: EmailResource,
    outbox_root: Path,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> DeliveryResult:
    """Send the report of `data.week` over every configured channel that still needs it."""
    outbox = outbox_root / data.week
    outbox.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(warehouse, data.week)
    result = DeliveryResult(rows=pd.DataFrame())
    for name, deliver in (
        (
            "email",
            lambda: deliver_email(ledger, result, data, charts, settings, email, outbox, force),
        ),
        (
            "slack",
            lambda: deliver_slack(
                ledger, result, data, charts, settings.slack_channel, slack.client(), outbox, force
            ),
        ),
    ):
        try:
            deliver()
        except Exception as error:  # building the message failed: keep the other channel going
            result.failed[name] = _short(error)
            log(f"{name} delivery failed before sending: {_short(error)}")
    result.rows = ledger.frame()
    return result

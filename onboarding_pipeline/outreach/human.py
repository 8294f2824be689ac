"""`human`: a hand-off to the owner's Slack channel (`interventions.delivery.owner_channels`,
default the report's channel): who (user id, name, company; never the email address), why
(the queue's evidence), the next action, and the user's timeline (milestones done and due,
latest events). Every value from data is escaped for mrkdwn.

The message carries its idempotency key in Slack message metadata: a run that finds a row
`sending` (the last one died or got no answer) searches the channel's history for it before
posting again."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from onboarding_pipeline.outreach.ledger import (
    FAILED,
    MAX_ERROR_CHARS,
    OUTBOX,
    SENDING,
    SENT,
    DeliveryLedger,
    short_error,
)
from onboarding_pipeline.reporting.delivery import find_slack_post, slack_escape

# `event_type` of the hand-off's metadata: how a rerun recognises its own post.
SLACK_METADATA_EVENT = "onboarding_intervention_handoff"
_CLOCK_SKEW = timedelta(minutes=10)


def _when(value: Any) -> str:
    if value is None or value is pd.NaT:
        return "-"
    return pd.Timestamp(value).tz_convert("UTC").strftime("%Y-%m-%d %H:%M UTC")


def handoff_text(
    row: dict[str, Any],
    person: dict[str, Any],
    milestones: list[dict[str, Any]],
    events: list[dict[str, Any]],
) -> str:
    """The hand-off as mrkdwn: only the `*bold*` and bullets added here are markup."""
    name = " ".join(str(person.get(k) or "") for k in ("first_name",)).strip() or "(no name)"
    company = person.get("company") or "(no company)"
    lines = [
        f"*Onboarding hand-off: {slack_escape(name)}, {slack_escape(str(company))}*",
        f"User id: {slack_escape(str(row['user_id']))}",
        f"*Why:* {slack_escape(str(row.get('reason') or 'no evidence recorded'))}",
        f"*Next action:* {slack_escape(str(row['next_action']))} "
        f"(escalation step {int(row['escalation_step'])}, "
        f"{slack_escape(str(row.get('intervention_type') or '-'))})",
        "*Milestones:*",
    ]
    if not milestones:
        lines.append("• none recorded")
    for milestone in milestones:
        label = slack_escape(str(milestone["milestone_label"]))
        if milestone["completed"]:
            lines.append(f"• done: {label} ({_when(milestone['completed_at'])})")
        else:
            due = f"due day {int(milestone['due_day'])}"
            marker = "next" if milestone.get("is_next") else "open"
            lines.append(f"• {marker}: {label} ({due})")
    lines.append("*Latest events:*")
    if not events:
        lines.append("• none")
    for event in events:
        lines.append(f"• {slack_escape(str(event['event_name']))} ({_when(event['timestamp'])})")
    return "\n".join(lines)


def handoff_blocks(text: str) -> list[dict[str, Any]]:
    # verbatim: Slack must not turn names or ids into links, channels or mentions.
    return [{"type": "section", "text": {"type": "mrkdwn", "text": text[:3000], "verbatim": True}}]


def deliver_human(
    ledger: DeliveryLedger,
    keys: list[str],
    texts: dict[str, str],
    client: WebClient | None,
    message_key: Any,
    outbox: Path,
    today: date,
) -> None:
    """Post the hand-offs of `keys` (`texts`: key -> mrkdwn) to each row's `recipient`."""
    if not keys:
        return
    if client is None:
        folder = outbox / "human"
        folder.mkdir(parents=True, exist_ok=True)
        for key in keys:
            row = ledger.rows[key]
            path = folder / f"{key}.json"
            body = {
                "channel": row["recipient"],
                "text": texts[key],
                "blocks": handoff_blocks(texts[key]),
            }
            path.write_text(
                json.dumps({"chat.postMessage": body}, indent=2, ensure_ascii=False),
                encoding="utf-8",
            )
            ledger.update(key, status=OUTBOX, outbox_path=str(path), last_attempt_on=today)
        ledger.save()
        return
    for key in keys:
        row = ledger.rows[key]
        channel = str(row["recipient"])
        idempotency_key = str(row.get("idempotency_key") or message_key(key))
        step = "check"
        try:
            posted = None
            if row["status"] == SENDING:
                # The last attempt may have posted before it died: look before posting again.
                since = row.get("intent_at")
                posted = find_slack_post(
                    client,
                    channel,
                    idempotency_key,
                    pd.Timestamp(since).to_pydatetime() - _CLOCK_SKEW
                    if since is not None
                    else None,
                    event_type=SLACK_METADATA_EVENT,
                )
            if posted is None:
                ledger.intend(key, idempotency_key, today)
                step = "post"
                response = client.chat_postMessage(
                    channel=channel,
                    text=texts[key],
                    blocks=handoff_blocks(texts[key]),
                    metadata={
                        "event_type": SLACK_METADATA_EVENT,
                        "event_payload": {
                            "idempotency_key": idempotency_key,
                            "user_id": str(row["user_id"]),
                        },
                    },
                )
                posted = (str(response["channel"]), str(response["ts"]))
        except Exception as error:  # SlackApiError after the retry handlers, or the network
            ledger.update(key, last_error=short_error(error)[:MAX_ERROR_CHARS])
            if step == "post" and isinstance(error, SlackApiError):
                # Slack answered "no": nothing was posted. No answer: stays `sending`.
                ledger.update(key, status=FAILED)
            elif step == "check":
                ledger.update(
                    key,
                    last_error=f"could not check an earlier attempt: {short_error(error)}"[
                        :MAX_ERROR_CHARS
                    ],
                )
        else:
            ledger.update(key, status=SENT, provider_id="/".join(posted), last_error=None)
        ledger.save()

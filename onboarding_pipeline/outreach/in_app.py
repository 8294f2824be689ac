"""`in_app`: the nudge POSTed as JSON to a webhook that in-app guidance tools can receive.

The body is signed like Stripe's webhooks: header `Onboarding-Signature: t=<unix>,v1=<hex>`,
`v1` = HMAC-SHA256 under the shared secret of `"<t>.<body>"` (the receiver recomputes it and
rejects old timestamps). Every request carries `Idempotency-Key`: retries (urllib3, on
timeouts and 5xx, with exponential backoff) and a rerun after a crash send the same key, and
the receiver keeps one delivery per key. A JSONL file of the day's payloads is written under
the output directory on every run, sent or not."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import date
from pathlib import Path
from typing import Any

import requests

from onboarding_pipeline.outreach.ledger import (
    FAILED,
    MAX_ERROR_CHARS,
    OUTBOX,
    SENT,
    DeliveryLedger,
    short_error,
)
from onboarding_pipeline.outreach.resource import OutreachResource

SIGNATURE_HEADER = "Onboarding-Signature"
EVENT_TYPE = "onboarding.intervention"


def payload(row: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
    """What the in-app tool receives: who, what to show and why; never an email address."""
    return {
        "id": idempotency_key,
        "type": EVENT_TYPE,
        "user_id": row["user_id"],
        "next_action": row["next_action"],
        "intervention_type": row.get("intervention_type"),
        "escalation_step": int(row["escalation_step"]),
        "experiment": row["experiment"],
        "message": row.get("message"),
        "queued_on": str(row["queued_on"]),
    }


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The signature header's value: `t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(body: bytes, header: str, secret: str, tolerance_seconds: float = 300) -> bool:
    """What a receiver does with the header (used by the tests' receiver)."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_seconds:
        return False
    expected = sign(body, secret, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def deliver_in_app(
    ledger: DeliveryLedger,
    keys: list[str],
    outreach: OutreachResource,
    message_key: Any,
    outbox: Path,
    today: date,
) -> list[dict[str, Any]]:
    """Send the rows of `keys` (already through suppression, limits and quiet hours); returns
    the payloads of this run (for the JSONL export)."""
    sent_payloads: list[dict[str, Any]] = []
    if not keys:
        return sent_payloads
    if not outreach.inapp_configured:
        folder = outbox / "in_app"
        folder.mkdir(parents=True, exist_ok=True)
        for key in keys:
            row = ledger.rows[key]
            written = payload(row, None)
            path = folder / f"{key}.json"
            path.write_text(json.dumps(written, indent=2, ensure_ascii=False), encoding="utf-8")
            ledger.update(key, status=OUTBOX, outbox_path=str(path), last_attempt_on=today)
            sent_payloads.append(written)
        ledger.save()
        return sent_payloads
    session = outreach.webhook_session()
    url, secret = str(outreach.inapp_webhook_url), str(outreach.inapp_webhook_secret)
    try:
        for key in keys:
            row = ledger.rows[key]
            # A row left `sending` keeps its key: the receiver recognises the message.
            idempotency_key = str(row.get("idempotency_key") or message_key(key))
            body_json = payload(row, idempotency_key)
            body = json.dumps(body_json, separators=(",", ":"), ensure_ascii=False).encode()
            ledger.intend(key, idempotency_key, today)
            headers = {
                "Content-Type": "application/json",
                "Idempotency-Key": idempotency_key,
                SIGNATURE_HEADER: sign(body, secret, int(time.time())),
            }
            try:
                response = session.post(
                    url, data=body, headers=headers, timeout=outreach.timeout_seconds
                )
            except requests.RequestException as error:
                # No answer after the retries: it may have arrived. Stays `sending`; the next
                # run sends it again with the same key and the receiver dedupes.
                ledger.update(key, last_error=short_error(error))
                ledger.save()
                continue
            if response.ok:
                ledger.update(key, status=SENT, provider_id=_response_id(response), last_error=None)
                sent_payloads.append(body_json)
            else:
                # The receiver answered "no" (4xx, or 5xx after the retries): not delivered.
                error_text = f"HTTP {response.status_code}: {response.text[:200]}"
                ledger.update(key, status=FAILED, last_error=error_text[:MAX_ERROR_CHARS])
            ledger.save()
    finally:
        session.close()
    return sent_payloads


def _response_id(response: requests.Response) -> str:
    """The receiver's id of the delivery (JSON `id`), else the Idempotency-Key it echoed."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict) and answer.get("id"):
        return str(answer["id"])
    return str(response.headers.get("Idempotency-Key") or f"HTTP {response.status_code}")


def write_export(folder: Path, today: date, payloads: list[dict[str, Any]]) -> Path:
    """`<folder>/<day>.jsonl`: the day's in-app payloads, one JSON object a line; a later run
    of the day adds its own (a payload already in the file is not written twice)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{today.isoformat()}.jsonl"
    seen: set[tuple[Any, ...]] = set()
    lines: list[str] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                lines.append(line)
                seen.add(_identity(json.loads(line)))
    for item in payloads:
        marker = _identity(item)
        if marker not in seen:
            seen.add(marker)
            lines.append(json.dumps(item, ensure_ascii=False, sort_keys=True))
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def _identity(item: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(
        item.get(name) for name in ("experiment", "user_id", "escalation_step", "next_action")
    )

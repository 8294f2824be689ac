"""Mixpanel raw event export: `GET /api/2.0/export`, one day per request, gzip JSON Lines.

Each line is `{"event": name, "properties": {"time": epoch seconds, "distinct_id": ...,
"$insert_id": ..., ...}}`. The export has no pagination; a day is one request.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import requests

from onboarding_pipeline.connectors.base import ConnectorSource, Fetch
from onboarding_pipeline.connectors.http import (
    TransientError,
    check_status,
    gunzip_if_needed,
    read_body,
)
from onboarding_pipeline.connectors.landing import Record

HOSTS = {
    "us": "https://data.mixpanel.com",
    "eu": "https://data-eu.mixpanel.com",
    "in": "https://data-in.mixpanel.com",
}
ENV_USERNAME = "MIXPANEL_SERVICE_ACCOUNT_USERNAME"
ENV_SECRET = "MIXPANEL_SERVICE_ACCOUNT_SECRET"
ENV_API_SECRET = "MIXPANEL_API_SECRET"
_MOVED_TO_COLUMNS = ("time", "distinct_id", "$insert_id")


def normalize_event(line: str) -> Record:
    """One export line in contract columns; a line that is not an event object stays raw text."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError:
        return line
    if not isinstance(raw, dict) or not isinstance(raw.get("properties", {}), dict):
        return line
    properties: dict[str, Any] = dict(raw.get("properties") or {})
    moment = properties.get("time")
    return {
        "event_id": _text(properties.get("$insert_id")),
        "user_id": _text(properties.get("distinct_id")),
        "event_name": _text(raw.get("event")),
        "timestamp": _epoch_to_iso(moment),
        "session_id": None,
        "properties": {k: v for k, v in properties.items() if k not in _MOVED_TO_COLUMNS},
    }


def _epoch_to_iso(value: Any) -> str | None:
    """Epoch seconds as ISO-8601 UTC; anything else is passed on as text for the quarantine."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC).isoformat()
        except (OverflowError, OSError, ValueError):
            return str(value)
    return str(value)


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


class MixpanelSource(ConnectorSource):
    """Mixpanel project events via the raw export API (service account or project secret)."""

    project_id: int | None = None
    # Service account username, or empty with a project API secret.
    username: str = ""
    secret: str
    # The environment variables holding the credentials, named in error messages.
    credentials_env: str = f"{ENV_USERNAME} / {ENV_SECRET}"
    project_timezone: str = "UTC"

    @property
    def kind(self) -> str:
        return "mixpanel"

    def last_day(self, now: datetime) -> date:
        # Export dates are the project's days; a later date than its today is refused.
        return now.astimezone(ZoneInfo(self.project_timezone)).date()

    def session(self) -> requests.Session:
        session = requests.Session()
        session.auth = (self.username, self.secret)
        session.headers["Accept-Encoding"] = "gzip"
        return session

    def fetch_day(
        self, session: requests.Session, day: date, now: datetime, fetch: Fetch
    ) -> list[Record]:
        params: dict[str, str | int] = {"from_date": day.isoformat(), "to_date": day.isoformat()}
        if self.project_id is not None:
            params["project_id"] = self.project_id
        url = f"{self.base_url.rstrip('/')}/api/2.0/export"
        what = f"Mixpanel export of {day}"
        permanent = {
            401: f"credentials rejected: check {self.credentials_env}",
            403: f"no access to the project: check source.project_id in onboarding.yaml and "
            f"the project role of the account in {self.credentials_env}",
            404: "export endpoint not found: check source.region / source.base_url",
        }

        def attempt() -> list[Record]:
            with session.get(
                url, params=params, timeout=self.timeout_seconds, stream=True
            ) as response:
                check_status(response, what, permanent)
                body = gunzip_if_needed(
                    read_body(response), response.headers.get("Content-Encoding")
                )
            text = body.decode("utf-8", errors="replace")
            lines = text.split("\n")
            if lines and lines[-1].strip():
                # Lines end in a newline; a last line without one may have been cut off.
                try:
                    json.loads(lines[-1])
                except json.JSONDecodeError as error:
                    raise TransientError("truncated export (last line incomplete)") from error
            fetch.stats.pages += 1
            return [normalize_event(line) for line in lines if line.strip()]

        return fetch(attempt, what)

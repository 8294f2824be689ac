"""Amplitude export API: `GET /api/2/export?start=YYYYMMDDTHH&end=YYYYMMDDTHH`.

The answer is a zip archive with one gzipped JSON Lines file per hour (and per part of a busy
hour); 404 means there is no data in the range. One request fetches one UTC day (up to the
last complete hour of today).
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zipfile
import zlib
from datetime import date, datetime
from typing import Any

import requests

from onboarding_pipeline.connectors.base import ConnectorSource, Fetch
from onboarding_pipeline.connectors.http import TransientError, check_status, read_body
from onboarding_pipeline.connectors.landing import Record

HOSTS = {"us": "https://amplitude.com", "eu": "https://analytics.eu.amplitude.com"}
ENV_API_KEY = "AMPLITUDE_API_KEY"
ENV_SECRET_KEY = "AMPLITUDE_SECRET_KEY"
_MISSING_SESSION = (None, -1, "-1", "")


def normalize_event(line: str) -> Record:
    """One export line in contract columns; `user_properties` feed the users table."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError:
        return line
    if not isinstance(raw, dict):
        return line
    session = raw.get("session_id")
    event_properties = raw.get("event_properties")
    return {
        "event_id": _text(raw.get("$insert_id")) or _text(raw.get("uuid")),
        # Anonymous users have only a device id until they are identified.
        "user_id": _text(raw.get("user_id")) or _text(raw.get("device_id")),
        "event_name": _text(raw.get("event_type")),
        # UTC without a zone ("2026-01-02 10:00:00.123000"); ingestion reads naive as UTC.
        "timestamp": _text(raw.get("event_time")),
        "session_id": None if session in _MISSING_SESSION else str(session),
        # Kept as they came: ingestion quarantines a value that is not an object.
        "properties": event_properties if event_properties not in (None, {}) else None,
        "user_properties": raw.get("user_properties") or None,
        "user_created_at": _text(raw.get("user_creation_time")),
    }


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def read_archive(body: bytes) -> list[str]:
    """The lines of every gzipped member of the zip, in hour order; damage is transient."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            lines: list[str] = []
            for name in sorted(archive.namelist(), key=_natural):
                if name.endswith("/"):
                    continue
                data = archive.read(name)
                if name.endswith(".gz"):
                    data = gzip.decompress(data)
                lines.extend(
                    line
                    for line in data.decode("utf-8", errors="replace").split("\n")
                    if line.strip()
                )
            return lines
    except (zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise TransientError(f"truncated or corrupt export archive: {error}") from error


def _natural(name: str) -> list[Any]:
    """`..._9#0` before `..._13#0`: hours are not zero-padded in member names."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class AmplitudeSource(ConnectorSource):
    """Amplitude project events via the export API (Basic auth with API key and secret key)."""

    api_key: str
    secret_key: str

    @property
    def kind(self) -> str:
        return "amplitude"

    def session(self) -> requests.Session:
        session = requests.Session()
        session.auth = (self.api_key, self.secret_key)
        return session

    def fetch_day(
        self, session: requests.Session, day: date, now: datetime, fetch: Fetch
    ) -> list[Record]:
        # Hours are inclusive; today's current hour is not exported yet.
        last_hour = 23 if day < now.date() else max(0, now.hour - 1)
        params = {"start": f"{day:%Y%m%d}T00", "end": f"{day:%Y%m%d}T{last_hour:02d}"}
        url = f"{self.base_url.rstrip('/')}/api/2/export"
        what = f"Amplitude export of {day}"
        credentials = f"{ENV_API_KEY} / {ENV_SECRET_KEY}"
        permanent = {
            401: f"credentials rejected: check {credentials}",
            403: f"no export permission for this project: check {credentials}",
        }

        def attempt() -> list[Record]:
            with session.get(
                url, params=params, timeout=self.timeout_seconds, stream=True
            ) as response:
                if response.status_code == 404:
                    return []  # Amplitude's way of saying: no events in the range
                check_status(response, what, permanent)
                body = read_body(response)
            lines = read_archive(body)
            fetch.stats.pages += 1
            return [normalize_event(line) for line in lines]

        return fetch(attempt, what)

"""PostHog query API: `POST /api/projects/:id/query/` with a HogQL query.

Pages are cut by timestamp, not offset (offsets get slower and shift while events arrive):
each page asks for the events after the last (timestamp, uuid) seen, in that order, until
`hasMore` is false. Values reach the query as HogQL placeholders, never pasted into its text.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import requests

from onboarding_pipeline.connectors.base import ConnectorSource, Fetch
from onboarding_pipeline.connectors.http import SourceError, TransientError, check_status
from onboarding_pipeline.connectors.landing import Record, parse_instant

ENV_API_KEY = "POSTHOG_PERSONAL_API_KEY"
_SELECT = """
SELECT uuid, event, timestamp, distinct_id, person_id, properties,
       person.properties AS person_properties, person.created_at AS person_created_at
FROM events
WHERE timestamp < toDateTime64({before}, 6, 'UTC') AND {page_start}
ORDER BY timestamp, toString(uuid)
LIMIT {page_size}
"""
FIRST_PAGE = _SELECT.replace("{page_start}", "timestamp >= toDateTime64({after}, 6, 'UTC')")
# Keyset on (timestamp, uuid): events sharing the last page's instant are neither lost nor repeated.
NEXT_PAGE = _SELECT.replace(
    "{page_start}",
    "(timestamp > toDateTime64({after}, 6, 'UTC') OR "
    "(timestamp = toDateTime64({after}, 6, 'UTC') AND toString(uuid) > {after_uuid}))",
)


def _as_object(value: Any) -> Any:
    """HogQL returns property bags as JSON text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def normalize_row(row: dict[str, Any], user_id: str) -> Record:
    properties = _as_object(row.get("properties"))
    person = _as_object(row.get("person_properties"))
    session = properties.get("$session_id") if isinstance(properties, dict) else None
    return {
        "event_id": _text(row.get("uuid")),
        "user_id": _text(row.get(user_id)),
        "event_name": _text(row.get("event")),
        "timestamp": _text(row.get("timestamp")),
        "session_id": _text(session),
        "properties": properties or None,
        "user_properties": person if isinstance(person, dict) else None,
        "user_created_at": _text(row.get("person_created_at")),
    }


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _hogql_instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class PostHogSource(ConnectorSource):
    """PostHog project events via HogQL (personal API key with the `query:read` scope)."""

    project_id: int
    api_key: str
    user_id_column: str = "distinct_id"
    page_size: int = 10_000

    @property
    def kind(self) -> str:
        return "posthog"

    def session(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.api_key}"
        return session

    def fetch_day(
        self, session: requests.Session, day: date, now: datetime, fetch: Fetch
    ) -> list[Record]:
        url = f"{self.base_url.rstrip('/')}/api/projects/{self.project_id}/query/"
        permanent = {
            401: f"personal API key rejected: check {ENV_API_KEY}",
            403: f"the key in {ENV_API_KEY} lacks the query:read scope or access to project "
            f"{self.project_id} (source.project_id)",
            404: f"project {self.project_id} not found: check source.project_id in onboarding.yaml "
            "(and source.host for EU or self-hosted PostHog)",
        }
        start = datetime.combine(day, time.min, UTC)
        values: dict[str, Any] = {
            "after": _hogql_instant(start),
            "before": _hogql_instant(start + timedelta(days=1)),
            "page_size": self.page_size,
        }
        records: list[Record] = []
        while True:
            what = f"PostHog events of {day} from {values['after']}"
            body = {
                "query": {
                    "kind": "HogQLQuery",
                    "query": NEXT_PAGE if "after_uuid" in values else FIRST_PAGE,
                    "values": dict(values),
                },
                # A re-fetched day must see late events, not a cached answer.
                "refresh": "force_blocking",
                "name": "onboarding-pipeline export",
            }

            def attempt(payload: dict[str, Any] = body, label: str = what) -> dict[str, Any]:
                response = session.post(url, json=payload, timeout=self.timeout_seconds)
                check_status(response, label, permanent)
                try:
                    answer = response.json()
                except ValueError as error:
                    raise TransientError("truncated or invalid JSON answer") from error
                if not isinstance(answer, dict) or not {"results", "columns"} <= answer.keys():
                    raise TransientError("answer without results/columns")
                return answer

            answer = fetch(attempt, what)
            fetch.stats.pages += 1
            rows = [dict(zip(answer["columns"], row, strict=True)) for row in answer["results"]]
            records.extend(normalize_row(row, self.user_id_column) for row in rows)
            if not rows or not (answer.get("hasMore") or len(rows) >= self.page_size):
                return records
            last = parse_instant(rows[-1].get("timestamp"))
            if last is None or rows[-1].get("uuid") is None:
                raise SourceError(f"{what}: a row without timestamp or uuid: {rows[-1]!r}")
            values["after"], values["after_uuid"] = _hogql_instant(last), str(rows[-1]["uuid"])

"""Amplitude connector against a local stub of the export API (zip of gzipped JSON Lines)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.connectors.amplitude import AmplitudeSource
from onboarding_pipeline.connectors.http import SourceError
from onboarding_pipeline.connectors.landing import Landing
from onboarding_pipeline.ingestion.load import ingest_events, ingest_users
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.tables import RAW_EVENTS, RAW_USERS

NOW = datetime(2026, 1, 10, 12, tzinfo=UTC)
PROJECT = 187520


def event(kind: str, when: str, *, user: str | None = "u1", **fields: Any) -> dict[str, Any]:
    return {
        "event_type": kind,
        "event_time": when,  # UTC, no zone, as Amplitude writes it
        "user_id": user,
        "device_id": "device-" + (user or "anon"),
        "uuid": f"uuid-{kind}-{when}",
        "$insert_id": f"ins-{kind}-{when}",
        "session_id": 1767258000000,
        "event_properties": {},
        "user_properties": {},
        **fields,
    }


def archive(events: list[dict[str, Any]]) -> bytes:
    """One gzipped JSON Lines member per hour, named like Amplitude's files."""
    by_hour: dict[str, list[str]] = {}
    for item in events:
        try:
            stamp = datetime.fromisoformat(item["event_time"])
            name = f"{PROJECT}/{PROJECT}_{stamp:%Y-%m-%d}_{stamp.hour}#0.json.gz"
        except ValueError:  # a broken event_time still sits in some hour's file
            name = f"{PROJECT}/{PROJECT}_misc#0.json.gz"
        by_hour.setdefault(name, []).append(json.dumps(item))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for name, lines in by_hour.items():
            out.writestr(name, gzip.compress(("\n".join(lines) + "\n").encode()))
    return buffer.getvalue()


class StubAmplitude:
    def __init__(self, server: HTTPServer) -> None:
        self.days: dict[str, list[dict[str, Any]]] = {}
        self.failures: dict[str, list[Response]] = {}
        self.requests: list[dict[str, str]] = []
        server.expect_request("/api/2/export", method="GET").respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        self.requests.append({**request.args, "auth": request.headers.get("Authorization", "")})
        day = datetime.strptime(request.args["start"], "%Y%m%dT%H").date().isoformat()
        if self.failures.get(day):
            return self.failures[day].pop(0)
        events = self.days.get(day)
        if not events:
            return Response("No data", status=404)
        return Response(archive(events), content_type="application/zip")


@pytest.fixture
def stub(httpserver: HTTPServer) -> StubAmplitude:
    return StubAmplitude(httpserver)


def source(server: HTTPServer, tmp_path: Path, **overrides: Any) -> AmplitudeSource:
    settings: dict[str, Any] = {
        "landing_dir": str(tmp_path / "landing"),
        "start_date": "2026-01-01",
        "end_date": "2026-01-02",
        "base_url": server.url_for("/"),
        "api_key": "amp-key",
        "secret_key": "amp-secret-do-not-leak",
        "backoff_seconds": 0,
        "max_attempts": 3,
        **overrides,
    }
    return AmplitudeSource(**settings)


def landed(tmp_path: Path, day: str) -> list[dict[str, Any]]:
    path = tmp_path / "landing" / "events" / f"{day}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sync_reads_hourly_gzip_members_and_404_means_no_data(
    stub: StubAmplitude, httpserver: HTTPServer, tmp_path: Path
) -> None:
    stub.days["2026-01-01"] = [
        event("signup", "2026-01-01 09:00:00.250000", user_properties={"plan": "pro"}),
        event("search", "2026-01-01 13:30:00", event_properties={"q": "kpi"}, session_id=-1),
        event("search", "2026-01-01 14:00:00", user=None, **{"$insert_id": None}),
    ]

    report = source(httpserver, tmp_path).sync(now=NOW)

    assert [(r["start"], r["end"]) for r in stub.requests] == [
        ("20260101T00", "20260101T23"),
        ("20260102T00", "20260102T23"),
    ]
    assert (
        stub.requests[0]["auth"]
        == "Basic " + base64.b64encode(b"amp-key:amp-secret-do-not-leak").decode()
    )
    first, second, anonymous = landed(tmp_path, "2026-01-01")
    assert first == {
        "event_id": "ins-signup-2026-01-01 09:00:00.250000",
        "user_id": "u1",
        "event_name": "signup",
        "timestamp": "2026-01-01 09:00:00.250000",
        "session_id": "1767258000000",
        "properties": None,
    }
    assert second["session_id"] is None and second["properties"] == {"q": "kpi"}
    # No user id: the device id; no insert id: the uuid.
    assert anonymous["user_id"] == "device-anon"
    assert anonymous["event_id"] == "uuid-search-2026-01-01 14:00:00"
    # Jan 2 answered 404: landed as a complete, empty day.
    assert landed(tmp_path, "2026-01-02") == []
    assert report.cursor_after == date(2026, 1, 2) and report.rows_fetched == 3


def test_today_is_fetched_up_to_the_last_complete_hour(
    stub: StubAmplitude, httpserver: HTTPServer, tmp_path: Path
) -> None:
    now = datetime(2026, 1, 2, 5, 30, tzinfo=UTC)
    source(httpserver, tmp_path, end_date=None).sync(now=now)
    assert stub.requests[-1]["end"] == "20260102T04"


def test_truncated_archive_and_5xx_are_retried(
    stub: StubAmplitude, httpserver: HTTPServer, tmp_path: Path
) -> None:
    stub.days["2026-01-01"] = [event("signup", "2026-01-01 09:00:00")]
    whole = archive(stub.days["2026-01-01"])
    bad_member = io.BytesIO()
    with zipfile.ZipFile(bad_member, "w") as out:
        out.writestr(f"{PROJECT}/{PROJECT}_2026-01-01_9#0.json.gz", gzip.compress(b"{}\n")[:-8])
    stub.failures["2026-01-01"] = [
        Response(whole[: len(whole) - 30], content_type="application/zip"),  # cut-off zip
        Response(bad_member.getvalue(), content_type="application/zip"),  # cut-off gz inside
        Response("upstream timeout", status=504),
    ]
    waits: list[float] = []

    report = source(httpserver, tmp_path, max_attempts=4, end_date="2026-01-01").sync(
        now=NOW, sleep=waits.append
    )

    assert report.stats.retries == 3 and len(waits) == 3
    assert [e["event_name"] for e in landed(tmp_path, "2026-01-01")] == ["signup"]


def test_401_names_the_environment_variables(
    stub: StubAmplitude, httpserver: HTTPServer, tmp_path: Path
) -> None:
    stub.failures["2026-01-01"] = [Response("Invalid API key", status=401)]
    with pytest.raises(SourceError) as failure:
        source(httpserver, tmp_path).sync(now=NOW)
    message = str(failure.value)
    assert "AMPLITUDE_API_KEY" in message and "AMPLITUDE_SECRET_KEY" in message
    assert "amp-secret-do-not-leak" not in message
    assert Landing(tmp_path / "landing").cursor() is None


def test_users_come_from_creation_time_first_events_and_user_properties(
    stub: StubAmplitude, httpserver: HTTPServer, tmp_path: Path, config: ProductConfig
) -> None:
    stub.days["2026-01-01"] = [
        event("page_view", "2026-01-01 08:00:00", user_properties={"plan": "free"}),
        # u2 was created before the first day fetched: that, not its first event, is its signup.
        event(
            "page_view", "2026-01-01 09:30:00", user="u2", user_creation_time="2025-12-31 23:00:00"
        ),
        event("upgrade", "2026-01-01 09:00:00", user_properties={"plan": "pro", "role": "pm"}),
        event("page_view", "2026-01-01 10:00:00", user="u2"),
    ]
    stub.days["2026-01-02"] = [
        event("search", "2026-01-02 01:00:00", event_time="not a time"),
        # A later day's snapshot of the user's properties wins.
        event("search", "2026-01-02 02:00:00", user_properties={"plan": "team", "role": "pm"}),
    ]
    connector = source(httpserver, tmp_path)  # no signup_event: the first event is the signup
    connector.sync(now=NOW)

    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'w.duckdb'}")
    try:
        ingest_users(warehouse, connector, config)
        events = ingest_events(
            warehouse, connector, config, datetime(2026, 1, 1, tzinfo=UTC), NOW, clock=NOW
        )
        users = warehouse.execute(warehouse.table(RAW_USERS.name).order_by("user_id"))
        assert users.user_id.tolist() == ["u1", "u2"]
        assert users.signup_at.tolist() == [
            datetime(2026, 1, 1, 8, tzinfo=UTC),
            datetime(2025, 12, 31, 23, tzinfo=UTC),
        ]
        assert (users.plan.iloc[0], users.role.iloc[0]) == ("team", "pm")  # latest properties
        assert dict(events.quarantined_by_reason) == {"unparseable_timestamp": 1}
        assert warehouse.execute(warehouse.table(RAW_EVENTS.name).count()) == 5
    finally:
        warehouse.close()

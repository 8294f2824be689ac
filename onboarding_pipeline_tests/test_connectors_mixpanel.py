"""Mixpanel connector against a local stub of the raw export API (gzip JSON Lines per day)."""

from __future__ import annotations

import base64
import gzip
import json
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.connectors.http import SourceError
from onboarding_pipeline.connectors.landing import Landing
from onboarding_pipeline.connectors.mixpanel import MixpanelSource
from onboarding_pipeline.ingestion.load import ingest_events, ingest_users
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.tables import QUARANTINE, RAW_EVENTS, RAW_USERS

NOW = datetime(2026, 1, 10, 12, tzinfo=UTC)
SECRET = "mp-secret-do-not-leak"


def epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def event(name: str, user: str, when: str, insert_id: str | None, **props: Any) -> dict:
    properties: dict[str, Any] = {"time": epoch(when), "distinct_id": user}
    if insert_id is not None:
        properties["$insert_id"] = insert_id
    return {"event": name, "properties": {**properties, **props}}


class StubMixpanel:
    """Speaks `/api/2.0/export`: one day per request, gzip JSON Lines when asked for it."""

    def __init__(self, server: HTTPServer) -> None:
        self.days: dict[str, list[dict | str]] = {}
        self.requests: list[dict[str, str]] = []
        # day -> list of canned failures served before the real answer
        self.failures: dict[str, list[Response]] = {}
        server.expect_request("/api/2.0/export", method="GET").respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        self.requests.append({**request.args, "auth": request.headers.get("Authorization", "")})
        day = request.args["from_date"]
        assert request.args["to_date"] == day
        if self.failures.get(day):
            return self.failures[day].pop(0)
        lines = [e if isinstance(e, str) else json.dumps(e) for e in self.days.get(day, [])]
        body = "".join(line + "\n" for line in lines).encode()
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return Response(gzip.compress(body), headers={"Content-Encoding": "gzip"})
        return Response(body)

    def requested_days(self) -> list[str]:
        return [r["from_date"] for r in self.requests]


@pytest.fixture
def stub(httpserver: HTTPServer) -> StubMixpanel:
    return StubMixpanel(httpserver)


def source(server: HTTPServer, tmp_path: Path, **overrides: Any) -> MixpanelSource:
    settings: dict[str, Any] = {
        "landing_dir": str(tmp_path / "landing"),
        "start_date": "2026-01-01",
        "end_date": "2026-01-03",
        "overlap_days": 1,
        "signup_event": "Sign Up",
        "base_url": server.url_for("/"),
        "project_id": 4242,
        "username": "svc.onboarding",
        "secret": SECRET,
        "backoff_seconds": 0,
        "max_attempts": 3,
        **overrides,
    }
    return MixpanelSource(**settings)


def landed(tmp_path: Path, day: str) -> list[dict]:
    path = tmp_path / "landing" / "events" / f"{day}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sync_lands_each_day_and_moves_the_cursor(
    stub: StubMixpanel, httpserver: HTTPServer, tmp_path: Path
) -> None:
    stub.days["2026-01-01"] = [
        event("Sign Up", "u1", "2026-01-01T09:00:00", "i1", plan="pro"),
        event("Report Viewed", "u1", "2026-01-01T09:05:00", "i2", mp_lib="web"),
    ]
    stub.days["2026-01-03"] = [event("Report Viewed", "u1", "2026-01-03T10:00:00", "i3")]

    report = source(httpserver, tmp_path).sync(now=NOW)

    assert stub.requested_days() == ["2026-01-01", "2026-01-02", "2026-01-03"]
    first = stub.requests[0]
    assert first["project_id"] == "4242"
    assert (
        first["auth"] == "Basic " + base64.b64encode(f"svc.onboarding:{SECRET}".encode()).decode()
    )
    assert landed(tmp_path, "2026-01-01") == [
        {
            "event_id": "i1",
            "user_id": "u1",
            "event_name": "Sign Up",
            "timestamp": "2026-01-01T09:00:00+00:00",
            "session_id": None,
            "properties": {"plan": "pro"},
        },
        {
            "event_id": "i2",
            "user_id": "u1",
            "event_name": "Report Viewed",
            "timestamp": "2026-01-01T09:05:00+00:00",
            "session_id": None,
            "properties": {"mp_lib": "web"},
        },
    ]
    assert landed(tmp_path, "2026-01-02") == []  # fetched, nothing that day
    assert report.rows_fetched == 3
    assert (report.cursor_before, report.cursor_after) == (None, date(2026, 1, 3))
    assert Landing(tmp_path / "landing").cursor() == date(2026, 1, 3)
    assert report.stats.pages == 3 and report.stats.retries == 0


def test_overlap_refetches_late_events_and_repeats_collapse(
    stub: StubMixpanel, httpserver: HTTPServer, tmp_path: Path, config: ProductConfig
) -> None:
    stub.days["2026-01-01"] = [event("Sign Up", "u1", "2026-01-01T09:00:00", "i1")]
    stub.days["2026-01-02"] = [event("search", "u1", "2026-01-02T08:00:00", "i2")]
    source(httpserver, tmp_path, end_date="2026-01-02").sync(now=NOW)
    assert stub.requested_days() == ["2026-01-01", "2026-01-02"]

    # A mobile event of Jan 2 arrives late; Mixpanel also exports one event twice.
    stub.days["2026-01-02"].append(event("search", "u1", "2026-01-02T23:00:00", "late"))
    stub.days["2026-01-03"] = [
        event("search", "u1", "2026-01-03T07:00:00", "i3"),
        event("search", "u1", "2026-01-02T08:00:00", "i2"),
    ]
    stub.requests.clear()
    connector = source(httpserver, tmp_path)
    report = connector.sync(now=NOW)

    # Cursor was Jan 2, overlap one day: Jan 1 and 2 again, then Jan 3.
    assert stub.requested_days() == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert [e["event_id"] for e in landed(tmp_path, "2026-01-02")] == ["i2", "late"]
    assert (report.cursor_before, report.cursor_after) == (date(2026, 1, 2), date(2026, 1, 3))

    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'w.duckdb'}")
    try:
        ingest_users(warehouse, connector, config)
        events = ingest_events(
            warehouse, connector, config, datetime(2026, 1, 1, tzinfo=UTC), NOW, clock=NOW
        )
        assert (events.rows_read, events.accepted, events.duplicates) == (5, 4, 1)
        ids = warehouse.execute(warehouse.table(RAW_EVENTS.name).event_id).tolist()
        assert sorted(ids) == ["i1", "i2", "i3", "late"]
    finally:
        warehouse.close()


def test_days_follow_the_project_time_zone(
    stub: StubMixpanel, httpserver: HTTPServer, tmp_path: Path
) -> None:
    # 02:00 UTC on Jan 3 is still Jan 2 in Los Angeles: Mixpanel would refuse to_date=Jan 3.
    now = datetime(2026, 1, 3, 2, tzinfo=UTC)
    connector = source(httpserver, tmp_path, end_date=None, project_timezone="America/Los_Angeles")
    report = connector.sync(now=now)
    assert stub.requested_days() == ["2026-01-01", "2026-01-02"]
    assert report.cursor_after == date(2026, 1, 2)


def test_429_is_retried_after_the_time_the_server_asks_for(
    stub: StubMixpanel, httpserver: HTTPServer, tmp_path: Path
) -> None:
    stub.days["2026-01-01"] = [event("Sign Up", "u1", "2026-01-01T09:00:00", "i1")]
    stub.failures["2026-01-01"] = [Response("slow down", status=429, headers={"Retry-After": "7"})]
    waits: list[float] = []

    report = source(httpserver, tmp_path, end_date="2026-01-01").sync(now=NOW, sleep=waits.append)

    assert waits == [7.0]
    assert (report.stats.requests, report.stats.retries, report.rows_fetched) == (2, 1, 1)
    assert [e["event_id"] for e in landed(tmp_path, "2026-01-01")] == ["i1"]


def test_a_timeout_is_retried(stub: StubMixpanel, httpserver: HTTPServer, tmp_path: Path) -> None:
    stub.days["2026-01-01"] = [event("Sign Up", "u1", "2026-01-01T09:00:00", "i1")]
    slow = {"left": 1}
    answer = stub.handle

    def slow_once(request: Request) -> Response:
        if slow["left"]:
            slow["left"] -= 1
            time.sleep(1.0)
        return answer(request)

    httpserver.clear_all_handlers()
    httpserver.expect_request("/api/2.0/export").respond_with_handler(slow_once)
    connector = source(httpserver, tmp_path, end_date="2026-01-01", timeout_seconds=0.4)
    report = connector.sync(now=NOW)
    assert report.stats.retries >= 1
    assert [e["event_id"] for e in landed(tmp_path, "2026-01-01")] == ["i1"]


def test_401_names_the_environment_variables_and_lands_nothing(
    stub: StubMixpanel, httpserver: HTTPServer, tmp_path: Path
) -> None:
    stub.failures["2026-01-01"] = [Response('{"error": "Unauthorized"}', status=401)]

    with pytest.raises(SourceError) as failure:
        source(httpserver, tmp_path).sync(now=NOW)

    message = str(failure.value)
    assert "MIXPANEL_SERVICE_ACCOUNT_SECRET" in message and "401" in message
    assert SECRET not in message
    assert len(stub.requests) == 1  # a permanent failure is not retried
    assert Landing(tmp_path / "landing").cursor() is None
    assert not list((tmp_path / "landing").glob("events/*.jsonl"))


def test_truncated_gzip_is_retried_and_a_day_that_stays_broken_is_never_landed(
    stub: StubMixpanel, httpserver: HTTPServer, tmp_path: Path
) -> None:
    stub.days["2026-01-01"] = [event("Sign Up", "u1", "2026-01-01T09:00:00", "i1")]
    stub.days["2026-01-02"] = [
        event("search", "u1", "2026-01-02T09:00:00", f"e{n}") for n in range(50)
    ]
    whole = gzip.compress("".join(json.dumps(e) + "\n" for e in stub.days["2026-01-02"]).encode())
    cut = Response(whole[: len(whole) // 2], headers={"Content-Encoding": "gzip"})
    # Jan 1: cut once, then whole. Jan 2: cut on every attempt.
    stub.failures["2026-01-01"] = [Response(whole[:40], headers={"Content-Encoding": "gzip"})]
    stub.failures["2026-01-02"] = [cut, cut, cut]

    with pytest.raises(SourceError, match="truncated gzip"):
        source(httpserver, tmp_path).sync(now=NOW)

    assert [e["event_id"] for e in landed(tmp_path, "2026-01-01")] == ["i1"]
    assert not (tmp_path / "landing" / "events" / "2026-01-02.jsonl").exists()
    # The users of the day that landed are there for ingestion all the same.
    assert (tmp_path / "landing" / "users.jsonl").read_text().count('"user_id":"u1"') == 1
    # The cursor stays on the last complete day: the next sync starts again at Jan 2.
    assert Landing(tmp_path / "landing").cursor() == date(2026, 1, 1)
    assert stub.requested_days() == ["2026-01-01", "2026-01-01", *["2026-01-02"] * 3]


def test_bad_timestamps_unknown_users_and_broken_lines_land_in_quarantine(
    stub: StubMixpanel, httpserver: HTTPServer, tmp_path: Path, config: ProductConfig
) -> None:
    stub.days["2026-01-01"] = [
        event("Sign Up", "u1", "2026-01-01T09:00:00", "i1"),
        event("search", "u1", "2026-01-01T09:30:00", "bad-time", time="yesterday"),
        '{"event": "search", "properties": {"time": 17',  # a broken line inside the export
        event("search", "stranger", "2026-01-01T10:00:00", "no-signup"),
        event("search", "u1", "2026-01-01T11:00:00", "ok"),
    ]
    connector = source(httpserver, tmp_path, end_date="2026-01-01")
    connector.sync(now=NOW)

    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'w.duckdb'}")
    try:
        users = ingest_users(warehouse, connector, config)
        events = ingest_events(
            warehouse, connector, config, datetime(2026, 1, 1, tzinfo=UTC), NOW, clock=NOW
        )
        assert users.accepted == 1
        assert warehouse.execute(warehouse.table(RAW_USERS.name).user_id).tolist() == ["u1"]
        assert dict(events.quarantined_by_reason) == {
            "unparseable_timestamp": 1,
            "unknown_user": 1,
            "malformed_row": 1,
        }
        assert events.rows_read == events.accepted + events.duplicates + events.quarantined == 5
        quarantine = warehouse.execute(warehouse.table(QUARANTINE.name))
        bad_time = quarantine[quarantine.reason == "unparseable_timestamp"].iloc[0]
        assert bad_time.source == "mixpanel/events/2026-01-01.jsonl"
        assert bad_time.row_number == 2
        assert json.loads(bad_time.raw)["timestamp"] == "yesterday"
    finally:
        warehouse.close()

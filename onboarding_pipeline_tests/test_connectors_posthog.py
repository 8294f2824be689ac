"""PostHog connector against a local stub of the query API (HogQL results/columns/hasMore)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.connectors.http import SourceError
from onboarding_pipeline.connectors.landing import Landing
from onboarding_pipeline.connectors.posthog import PostHogSource
from onboarding_pipeline.ingestion.load import ingest_events, ingest_users
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.tables import RAW_USERS

NOW = datetime(2026, 1, 10, 12, tzinfo=UTC)
PROJECT = 31337
KEY = "phx_personal_key_do_not_leak"
COLUMNS = [
    "uuid",
    "event",
    "timestamp",
    "distinct_id",
    "person_id",
    "properties",
    "person_properties",
    "person_created_at",
]


def ph_event(
    uuid: str, name: str, when: str, user: str = "u1", session: str | None = None, **properties: Any
) -> dict[str, Any]:
    return {
        "uuid": uuid,
        "event": name,
        "timestamp": when,  # as PostHog returns it: ISO 8601 with the offset
        "distinct_id": user,
        "person_id": f"person-{user}",
        "properties": json.dumps({"$session_id": session or f"s-{user}", **properties}),
        "person_properties": json.dumps({"email": f"{user}@example.com"}),
        "person_created_at": "2025-12-30T08:00:00Z",
    }


def _instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


class StubPostHog:
    """Answers the connector's HogQL page queries the way PostHog would evaluate them."""

    def __init__(self, server: HTTPServer) -> None:
        self.events: list[dict[str, Any]] = []
        self.failures: list[Response] = []
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str] = []
        server.expect_request(
            f"/api/projects/{PROJECT}/query/", method="POST"
        ).respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        self.auth.append(request.headers.get("Authorization", ""))
        if self.failures:
            return self.failures.pop(0)
        body = json.loads(request.data)
        self.bodies.append(body)
        query = body["query"]
        assert query["kind"] == "HogQLQuery"
        values = query["values"]
        after, before = _instant(values["after"]), _instant(values["before"])
        key = (after, values.get("after_uuid"))

        def selected(item: dict[str, Any]) -> bool:
            moment = _instant(item["timestamp"])
            if moment >= before:
                return False
            if key[1] is None:
                return moment >= after
            return (moment, item["uuid"]) > key

        rows = sorted(
            (e for e in self.events if selected(e)),
            key=lambda e: (_instant(e["timestamp"]), e["uuid"]),
        )
        page = rows[: values["page_size"]]
        return Response(
            json.dumps(
                {
                    "columns": COLUMNS,
                    "types": [],
                    "results": [[e[c] for c in COLUMNS] for e in page],
                    "hasMore": len(rows) > len(page),
                    "limit": values["page_size"],
                }
            ),
            content_type="application/json",
        )


@pytest.fixture
def stub(httpserver: HTTPServer) -> StubPostHog:
    return StubPostHog(httpserver)


def source(server: HTTPServer, tmp_path: Path, **overrides: Any) -> PostHogSource:
    settings: dict[str, Any] = {
        "landing_dir": str(tmp_path / "landing"),
        "start_date": "2026-01-01",
        "end_date": "2026-01-01",
        "base_url": server.url_for("/"),
        "project_id": PROJECT,
        "api_key": KEY,
        "page_size": 2,
        "signup_event": "user signed up",
        "backoff_seconds": 0,
        "max_attempts": 3,
        **overrides,
    }
    return PostHogSource(**settings)


def landed(tmp_path: Path, day: str) -> list[dict[str, Any]]:
    path = tmp_path / "landing" / "events" / f"{day}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pages_by_timestamp_until_has_more_is_false(
    stub: StubPostHog, httpserver: HTTPServer, tmp_path: Path
) -> None:
    stub.events = [
        ph_event("a", "user signed up", "2026-01-01T09:00:00.000000Z"),
        # Three events share one instant across a page boundary: none lost, none repeated.
        ph_event("b", "search", "2026-01-01T10:00:00.500000Z"),
        ph_event("c", "search", "2026-01-01T10:00:00.500000Z"),
        ph_event("d", "search", "2026-01-01T10:00:00.500000Z"),
        ph_event("e", "report viewed", "2026-01-01T23:59:59.999999Z", plan="pro"),
        ph_event("next-day", "search", "2026-01-02T00:00:00.000000Z"),
    ]

    report = source(httpserver, tmp_path).sync(now=NOW)

    events = landed(tmp_path, "2026-01-01")
    assert [e["event_id"] for e in events] == ["a", "b", "c", "d", "e"]
    assert events[-1] == {
        "event_id": "e",
        "user_id": "u1",
        "event_name": "report viewed",
        "timestamp": "2026-01-01T23:59:59.999999Z",
        "session_id": "s-u1",
        "properties": {"$session_id": "s-u1", "plan": "pro"},
    }
    assert report.stats.pages == 3
    assert set(stub.auth) == {f"Bearer {KEY}"}
    values = [body["query"]["values"] for body in stub.bodies]
    assert values[0] == {
        "after": "2026-01-01 00:00:00.000000",
        "before": "2026-01-02 00:00:00.000000",
        "page_size": 2,
    }
    assert (values[1]["after"], values[1]["after_uuid"]) == ("2026-01-01 10:00:00.500000", "b")
    assert (values[2]["after"], values[2]["after_uuid"]) == ("2026-01-01 10:00:00.500000", "d")
    # Values travel as placeholders; the query text never contains them.
    assert all("2026-01-01" not in body["query"]["query"] for body in stub.bodies)


def test_overlap_refetch_replaces_the_day_and_picks_up_late_events(
    stub: StubPostHog, httpserver: HTTPServer, tmp_path: Path, config: ProductConfig
) -> None:
    stub.events = [
        ph_event("a", "user signed up", "2026-01-01T09:00:00Z"),
        ph_event("b", "search", "2026-01-02T09:00:00Z"),
    ]
    source(httpserver, tmp_path, end_date="2026-01-02").sync(now=NOW)
    stub.events.append(ph_event("late", "search", "2026-01-02T22:00:00Z"))
    stub.events.append(ph_event("c", "search", "2026-01-03T01:00:00Z"))

    connector = source(httpserver, tmp_path, end_date="2026-01-03", overlap_days=1)
    report = connector.sync(now=NOW)

    assert report.days == [date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)]
    assert [e["event_id"] for e in landed(tmp_path, "2026-01-02")] == ["b", "late"]
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'w.duckdb'}")
    try:
        ingest_users(warehouse, connector, config)
        events = ingest_events(
            warehouse, connector, config, datetime(2026, 1, 1, tzinfo=UTC), NOW, clock=NOW
        )
        # Re-fetched days replaced their files: nothing counted twice.
        assert (events.rows_read, events.accepted, events.duplicates) == (4, 4, 0)
        users = warehouse.execute(warehouse.table(RAW_USERS.name))
        assert users.email.tolist() == ["u1@example.com"]  # from the person properties
    finally:
        warehouse.close()


@pytest.mark.parametrize(
    ("status", "setting"),
    [(401, "POSTHOG_PERSONAL_API_KEY"), (403, "query:read"), (404, "source.project_id")],
)
def test_permanent_failures_name_the_setting_to_fix(
    stub: StubPostHog, httpserver: HTTPServer, tmp_path: Path, status: int, setting: str
) -> None:
    stub.failures = [Response(json.dumps({"detail": "nope"}), status=status)]
    with pytest.raises(SourceError) as failure:
        source(httpserver, tmp_path).sync(now=NOW)
    assert setting in str(failure.value) and KEY not in str(failure.value)
    assert len(stub.auth) == 1
    assert Landing(tmp_path / "landing").cursor() is None


def test_429_and_a_cut_off_answer_are_retried(
    stub: StubPostHog, httpserver: HTTPServer, tmp_path: Path
) -> None:
    stub.events = [ph_event("a", "user signed up", "2026-01-01T09:00:00Z")]
    stub.failures = [
        Response("throttled", status=429, headers={"Retry-After": "3"}),
        Response('{"columns": ["uuid"], "results": [["a"', content_type="application/json"),
    ]
    waits: list[float] = []
    report = source(httpserver, tmp_path).sync(now=NOW, sleep=waits.append)
    assert waits == [3.0, 0.0]
    assert report.stats.retries == 2
    assert [e["event_id"] for e in landed(tmp_path, "2026-01-01")] == ["a"]


def test_without_a_signup_event_the_person_creation_time_is_the_signup(
    stub: StubPostHog, httpserver: HTTPServer, tmp_path: Path, config: ProductConfig
) -> None:
    # A user created before the first day fetched: not a new signup on that day.
    stub.events = [ph_event("a", "search", "2026-01-01T09:00:00Z")]
    connector = source(httpserver, tmp_path, signup_event=None)
    connector.sync(now=NOW)
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'w.duckdb'}")
    try:
        ingest_users(warehouse, connector, config)
        users = warehouse.execute(warehouse.table(RAW_USERS.name))
        assert users.signup_at.tolist() == [datetime(2025, 12, 30, 8, tzinfo=UTC)]
    finally:
        warehouse.close()


def test_a_bad_base_url_fails_at_once_naming_the_setting(tmp_path: Path) -> None:
    connector = PostHogSource(
        landing_dir=str(tmp_path / "landing"),
        start_date="2026-01-01",
        end_date="2026-01-01",
        base_url="us.posthog.com",  # no scheme
        project_id=PROJECT,
        api_key=KEY,
    )
    with pytest.raises(SourceError, match=r"source\.base_url"):
        connector.sync(now=NOW, sleep=lambda _: pytest.fail("a bad URL is not retried"))


def test_person_id_can_be_the_user(
    stub: StubPostHog, httpserver: HTTPServer, tmp_path: Path
) -> None:
    stub.events = [ph_event("a", "user signed up", "2026-01-01T09:00:00Z", user="anon-123")]
    source(httpserver, tmp_path, user_id_column="person_id").sync(now=NOW)
    assert landed(tmp_path, "2026-01-01")[0]["user_id"] == "person-anon-123"

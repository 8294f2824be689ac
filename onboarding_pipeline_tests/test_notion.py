"""The weekly report as a Notion page: the real notion-client against a local stub of the
Notion API (databases, data sources, query, pages), once per week through the ledger, the
outbox without a token, and an interrupted attempt found instead of created twice."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from onboarding_pipeline.config import ProductConfig, load_config
from onboarding_pipeline.config.product import ConfigError, ReportSettings
from onboarding_pipeline.reporting.delivery import FAILED, SENDING, SENT, deliver_report
from onboarding_pipeline.reporting.mail import EmailResource
from onboarding_pipeline.reporting.notion import NotionResource, notion_resource_from_env
from onboarding_pipeline.reporting.report import ReportData
from onboarding_pipeline.reporting.slack import SlackResource

WEEK = "2026-10-26"
DATABASE = "1f2e3d4c5b6a47988877665544332211"  # as copied from a Notion URL
DATABASE_UUID = "1f2e3d4c-5b6a-4798-8877-665544332211"  # how the client sends it
SOURCE = "aaaa1111-2222-3333-4444-555566667777"
TOKEN = "secret_notion_test"


class NotionStub:
    """GET databases/{id}, GET data_sources/{id}, POST data_sources/{id}/query, POST pages,
    GET blocks/{page}/children.
    `hang_after_create`: the page is stored, the reply comes after the client gave up."""

    def __init__(self, server: HTTPServer) -> None:
        self.pages: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.creates = 0
        self.queries: list[dict[str, Any]] = []
        self.hang_after_create = 0.0
        self.reject_create: dict[str, Any] | None = None
        self.lock = threading.Lock()
        server.expect_request(f"/v1/databases/{DATABASE_UUID}", method="GET").respond_with_handler(
            self._json(
                lambda r: {
                    "object": "database",
                    "id": DATABASE,
                    "data_sources": [{"id": SOURCE, "name": "Reports"}],
                }
            )
        )
        server.expect_request(f"/v1/data_sources/{SOURCE}", method="GET").respond_with_handler(
            self._json(
                lambda r: {
                    "object": "data_source",
                    "id": SOURCE,
                    "properties": {
                        "Week": {"id": "a1", "type": "rich_text"},
                        "Report": {"id": "title", "type": "title"},
                    },
                }
            )
        )
        server.expect_request(
            f"/v1/data_sources/{SOURCE}/query", method="POST"
        ).respond_with_handler(self._json(self._query))
        server.expect_request("/v1/pages", method="POST").respond_with_handler(self._create)
        server.expect_request(
            re.compile(r"/v1/blocks/[^/]+/children"), method="GET"
        ).respond_with_handler(self._children)

    def _json(self, build: Any) -> Any:
        def respond(request: Request) -> Response:
            self.headers.append(dict(request.headers))
            return Response(json.dumps(build(request)), content_type="application/json")

        return respond

    def _query(self, request: Request) -> dict[str, Any]:
        body = request.get_json()
        self.queries.append(body)
        condition = body.get("filter") or {}
        since = (condition.get("created_time") or {}).get("on_or_after")
        with self.lock:
            found = [
                page
                for page in self.pages
                if since is None or page["created_time"] >= datetime.fromisoformat(since)
            ]
        return {
            "object": "list",
            "results": [{"object": "page", "id": p["id"]} for p in found],
            "has_more": False,
            "next_cursor": None,
        }

    def _children(self, request: Request) -> Response:
        page_id = request.path.split("/")[3]
        with self.lock:
            blocks = next(p["body"]["children"] for p in self.pages if p["id"] == page_id)
        listed = {"object": "list", "results": blocks, "has_more": False, "next_cursor": None}
        return Response(json.dumps(listed), content_type="application/json")

    def add_page(self, title: str, children: list[dict[str, Any]]) -> None:
        """A page made by someone else (a person, another deployment), just now."""
        with self.lock:
            self.pages.append(
                {
                    "id": f"other-{len(self.pages) + 1}",
                    "title": title,
                    "created_time": datetime.now(UTC),
                    "body": {"children": children},
                }
            )

    def _create(self, request: Request) -> Response:
        self.headers.append(dict(request.headers))
        body = request.get_json()
        if self.reject_create is not None:
            return Response(
                json.dumps(self.reject_create), status=400, content_type="application/json"
            )
        with self.lock:
            self.creates += 1
            page = {
                "id": f"page-{len(self.pages) + 1}",
                "title": body["properties"]["Report"]["title"][0]["text"]["content"],
                "created_time": datetime.now(UTC),
                "body": body,
            }
            self.pages.append(page)
        if self.hang_after_create:
            time.sleep(self.hang_after_create)
        return Response(
            json.dumps({"object": "page", "id": page["id"], "url": "https://notion.so/x"}),
            content_type="application/json",
        )


@pytest.fixture
def report() -> ReportData:
    return ReportData(
        title="Weekly onboarding report",
        week=WEEK,
        week_end="2026-11-01",
        watermark="2026-11-01 00:57 UTC",
        generated_at="2026-11-02 08:00 UTC",
        language="en",
        kpis=[
            {
                "kpi": "activation_rate",
                "label": "Activation rate",
                "unit": "rate",
                "value": 0.35,
                "change": -0.05,
                "target": 0.4,
                "meets_target": False,
            }
        ],
        review=[
            {"title": "Activation misses its target", "evidence": "35% vs 40%", "owner": "Maria"}
        ],
    )


def deliver(warehouse, report, tmp_path, notion: NotionResource, force: bool = False):  # type: ignore[no-untyped-def]
    return deliver_report(
        warehouse,
        report,
        {},
        ReportSettings(slack_channel="", notion_database_id=DATABASE),
        slack=SlackResource(),
        email=EmailResource(),
        notion=notion,
        outbox_root=tmp_path / "outbox",
        force=force,
        log=lambda line: None,
    )


def notion_row(warehouse) -> Any:  # type: ignore[no-untyped-def]
    rows = warehouse.execute(warehouse.table("report_deliveries"))
    assert rows.channel.tolist() == ["notion"]
    return rows.iloc[0]


def resource(httpserver: HTTPServer, **settings: Any) -> NotionResource:
    return NotionResource(token=TOKEN, base_url=httpserver.url_for("/").rstrip("/"), **settings)


def test_one_page_per_week_through_the_ledger(
    httpserver: HTTPServer, warehouse, report, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    stub = NotionStub(httpserver)
    result = deliver(warehouse, report, tmp_path, resource(httpserver))
    assert result.failed == {} and result.sent == [f"notion:{DATABASE}"]
    assert stub.creates == 1
    body = stub.pages[0]["body"]
    assert body["parent"] == {"type": "data_source_id", "data_source_id": SOURCE}
    # The title goes to the data source's title property, whatever it is called.
    assert stub.pages[0]["title"] == f"Weekly onboarding report: week of {WEEK}"
    texts = [block[block["type"]]["rich_text"][0]["text"]["content"] for block in body["children"]]
    assert "Issues for the weekly review" in texts
    assert "Activation misses its target — 35% vs 40% Owner: Maria" in texts
    assert any(t.startswith("Activation rate: 35") for t in texts)
    assert all(h.get("Authorization") == f"Bearer {TOKEN}" for h in stub.headers)
    assert {h.get("Notion-Version") for h in stub.headers} == {"2025-09-03"}
    row = notion_row(warehouse)
    assert (row.status, row.provider_id, row.attempts) == (SENT, "page-1", 1)

    again = deliver(warehouse, report, tmp_path, resource(httpserver))
    assert again.skipped == [f"notion:{DATABASE}"] and stub.creates == 1
    forced = deliver(warehouse, report, tmp_path, resource(httpserver), force=True)
    assert forced.sent == [f"notion:{DATABASE}"] and stub.creates == 2


def test_without_a_token_the_page_goes_to_the_outbox(warehouse, report, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = deliver(warehouse, report, tmp_path, NotionResource())
    assert result.outbox == [f"notion:{DATABASE}"] and result.sent == []
    payload = json.loads((tmp_path / "outbox" / WEEK / "notion.json").read_text())
    page = payload["pages.create"]
    assert page["parent"] == {"database_id": DATABASE_UUID}
    assert page["properties"]["title"]["title"][0]["text"]["content"].endswith(WEEK)
    assert notion_row(warehouse).status == "outbox"


def test_interrupted_create_is_found_not_created_twice(
    httpserver: HTTPServer, warehouse, report, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Notion stored the page but the client gave up waiting: the row stays `sending`, and
    the next run finds the page (its key, created since the intent) instead of creating it."""
    stub = NotionStub(httpserver)
    stub.hang_after_create = 2.5
    first = deliver(warehouse, report, tmp_path, resource(httpserver, timeout_seconds=1))
    assert f"notion:{DATABASE}" in first.failed
    row = notion_row(warehouse)
    assert row.status == SENDING and row.idempotency_key
    assert stub.creates == 1
    time.sleep(2)  # let the stub finish its reply

    stub.hang_after_create = 0
    second = deliver(warehouse, report, tmp_path, resource(httpserver))
    # Found, not created: already sent (by the interrupted attempt), nothing sent by this run.
    assert second.recovered == second.skipped == [f"notion:{DATABASE}"] and second.sent == []
    assert stub.creates == 1
    assert stub.queries and "created_time" in json.dumps(stub.queries[-1])
    row = notion_row(warehouse)
    assert (row.status, row.provider_id, row.attempts) == (SENT, "page-1", 2)


def test_recovery_matches_the_page_on_its_key_not_its_title(
    httpserver: HTTPServer, warehouse, report, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """After an interrupted create, a page of the same title made meanwhile by someone else
    (another deployment, a person) is not taken for ours; ours is found by the key in its
    last block even once its title was edited."""
    stub = NotionStub(httpserver)
    stub.hang_after_create = 2.5
    deliver(warehouse, report, tmp_path, resource(httpserver, timeout_seconds=1))
    row = notion_row(warehouse)
    assert row.status == SENDING
    time.sleep(2)
    ours = stub.pages[0]
    key_block = ours["body"]["children"][-1]
    assert key_block["paragraph"]["rich_text"][0]["text"]["content"] == (
        f"Delivery key: {row.idempotency_key}"
    )
    ours["title"] = "Renamed by a reader"
    stub.add_page(f"Weekly onboarding report: week of {WEEK}", [])  # same title, no key
    stub.hang_after_create = 0
    second = deliver(warehouse, report, tmp_path, resource(httpserver))
    assert second.recovered == [f"notion:{DATABASE}"] and stub.creates == 1
    assert notion_row(warehouse).provider_id == ours["id"]


def test_a_page_of_the_same_title_without_our_key_is_not_ours(
    httpserver: HTTPServer, warehouse, report, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The create was refused by the connection (nothing stored) and someone else made a
    page titled like ours: the rerun creates our page instead of recording theirs."""
    stub = NotionStub(httpserver)
    stub.hang_after_create = 2.5
    deliver(warehouse, report, tmp_path, resource(httpserver, timeout_seconds=1))
    time.sleep(2)
    with stub.lock:
        stub.pages.clear()  # as if the interrupted create never reached Notion
    stub.add_page(f"Weekly onboarding report: week of {WEEK}", [])
    stub.hang_after_create = 0
    second = deliver(warehouse, report, tmp_path, resource(httpserver))
    assert second.sent == [f"notion:{DATABASE}"] and second.recovered == []
    assert stub.creates == 2
    assert notion_row(warehouse).provider_id == stub.pages[-1]["id"] != "other-1"


def test_an_error_answer_is_failed_and_retried(
    httpserver: HTTPServer, warehouse, report, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    stub = NotionStub(httpserver)
    stub.reject_create = {
        "object": "error",
        "status": 400,
        "code": "validation_error",
        "message": "body failed validation",
    }
    first = deliver(warehouse, report, tmp_path, resource(httpserver))
    assert "body failed validation" in first.failed[f"notion:{DATABASE}"]
    assert notion_row(warehouse).status == FAILED and stub.creates == 0

    stub.reject_create = None
    second = deliver(warehouse, report, tmp_path, resource(httpserver))
    assert second.sent == [f"notion:{DATABASE}"] and stub.creates == 1
    assert notion_row(warehouse).status == SENT


def test_settings_from_the_environment_and_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NOTION_TOKEN", raising=False)
    assert notion_resource_from_env().token is None
    monkeypatch.setenv("NOTION_TOKEN", "secret_x")
    monkeypatch.setenv("NOTION_DATABASE_ID", DATABASE)
    env = notion_resource_from_env()
    # EnvVars, resolved at run time: the token is never a literal in the definitions.
    assert type(env.token).__name__ == "EnvVar" and env.token == "NOTION_TOKEN"
    config = ProductConfig(
        aha_events=["a"],
        report={"notion_database_id": f"https://www.notion.so/x/Reports-{DATABASE}"},
    )
    assert config.report.notion_database_id.endswith(DATABASE)  # type: ignore[union-attr]
    path = tmp_path / "onboarding.yaml"
    path.write_text('aha_events: [a]\nreport: {notion_database_id: "abc\\r\\nX"}\n')
    with pytest.raises(ConfigError, match=r"report.notion_database_id: .*one line"):
        load_config(path)

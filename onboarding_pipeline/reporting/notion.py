"""`NotionResource` and the weekly report as a Notion page (notion-client, API 2025-09-03).

One page per week in a configured database: its title is the report's title and week, its
body the summary (review items, KPIs, funnel) and, last, the delivery's idempotency key (what a
rerun after a crash matches the page on). Notion stores rich text as plain text (no
markup is parsed), so values from config or data go in as they are, cut to Notion's limits."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from dagster import ConfigurableResource, EnvVar
from notion_client import Client
from notion_client.helpers import extract_notion_id, iterate_paginated_api

from onboarding_pipeline.reporting.report import NOT_ENOUGH_DATA, ReportData, fmt_change, fmt_kpi

ENV_NOTION_TOKEN = "NOTION_TOKEN"
ENV_NOTION_DATABASE_ID = "NOTION_DATABASE_ID"
# Optional: another API root (a local stub in tests, or a proxy in front of Notion).
ENV_NOTION_BASE_URL = "NOTION_API_BASE_URL"
_TEXT_LIMIT = 2000  # characters per rich-text object
_BLOCK_LIMIT = 100  # children per request
# The text before the delivery key in the page's last block.
KEY_LABEL = "Delivery key: "


class NotionResource(ConfigurableResource):
    """Notion integration access. `token` comes from `NOTION_TOKEN`; without it `client()` is
    None and the page goes to the outbox folder instead."""

    token: str | None = None
    # The database that receives the pages (id or URL); report.notion_database_id of
    # onboarding.yaml takes precedence.
    database_id: str | None = None
    # Root of the API, e.g. "http://127.0.0.1:8080"; None = https://api.notion.com.
    base_url: str | None = None
    timeout_seconds: float = 30.0

    def client(self) -> Client | None:
        if not self.token:
            return None
        options: dict[str, Any] = {
            "auth": self.token,
            "timeout_ms": int(self.timeout_seconds * 1000),
        }
        if self.base_url:
            options["base_url"] = self.base_url.rstrip("/")
        return Client(**options)


def notion_resource_from_env() -> NotionResource:
    """The resource for `Definitions`: each setting as an `EnvVar` when its variable is set
    (resolved at run time; the token never lands in metadata), else None."""
    return NotionResource(
        token=EnvVar(ENV_NOTION_TOKEN) if os.environ.get(ENV_NOTION_TOKEN) else None,
        database_id=EnvVar(ENV_NOTION_DATABASE_ID)
        if os.environ.get(ENV_NOTION_DATABASE_ID)
        else None,
        base_url=EnvVar(ENV_NOTION_BASE_URL) if os.environ.get(ENV_NOTION_BASE_URL) else None,
    )


def database_of(configured: str) -> str:
    """The database id of a configured id or Notion URL (as copied from the browser)."""
    return extract_notion_id(configured) or configured.strip()


def page_title(data: ReportData) -> str:
    return f"{data.title}: week of {data.week}"


# ---------------------------------------------------------------- page content


def _text(content: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": {"content": content[:_TEXT_LIMIT]}}]


def _block(kind: str, content: str) -> dict[str, Any]:
    return {"object": "block", "type": kind, kind: {"rich_text": _text(content)}}


def page_blocks(data: ReportData) -> list[dict[str, Any]]:
    """The report's summary as Notion blocks (at most 100, Notion's limit per request)."""
    blocks = [
        _block(
            "paragraph",
            f"Week of {data.week} to {data.week_end} · data as of {data.watermark or '-'} · "
            f"generated {data.generated_at}",
        )
    ]
    state_note = getattr(data, "state_note", None)
    if state_note:
        blocks.append(_block("callout", state_note))
    blocks.append(_block("heading_2", "Issues for the weekly review"))
    if data.review:
        for item in data.review:
            blocks.append(
                _block(
                    "numbered_list_item",
                    f"{item['title']} — {item['evidence']} Owner: {item['owner']}",
                )
            )
    else:
        blocks.append(_block("paragraph", f"{NOT_ENOUGH_DATA} for a weekly review."))
    blocks.append(_block("heading_2", "Headline KPIs"))
    if data.kpis:
        for kpi in data.kpis:
            line = f"{kpi['label']}: {fmt_kpi(kpi['value'], kpi['unit'])}"
            if kpi.get("change") is not None:
                line += f" ({fmt_change(kpi['change'], kpi['unit'])} vs previous cohort)"
            if kpi.get("target") is not None:
                line += f", target {fmt_kpi(kpi['target'], kpi['unit'])}"
            blocks.append(_block("bulleted_list_item", line))
    else:
        blocks.append(
            _block("paragraph", f"{NOT_ENOUGH_DATA}: {data.missing.get('kpis', 'no KPIs')}.")
        )
    blocks.append(_block("heading_2", "Funnel"))
    if data.funnel:
        for step in data.funnel:
            share = step.get("conversion_from_start")
            shown = f"{share:.0%}" if isinstance(share, int | float) else "-"
            blocks.append(
                _block(
                    "bulleted_list_item",
                    f"{step['step']}: {step['users_reached']} users ({shown} of those who started)",
                )
            )
    else:
        blocks.append(
            _block("paragraph", f"{NOT_ENOUGH_DATA}: {data.missing.get('funnel', 'no funnel')}.")
        )
    return blocks[:_BLOCK_LIMIT]


def key_block(key: str) -> dict[str, Any]:
    """The block that carries the page's delivery key: how a rerun recognises the page an
    interrupted attempt created, whatever its title has become (and never another
    deployment's page of the same week, whose key differs)."""
    block = _block("paragraph", f"{KEY_LABEL}{key}")
    block["paragraph"]["color"] = "gray"
    return block


def page_payload(
    data: ReportData, data_source_id: str, title_property: str, key: str | None = None
) -> dict[str, Any]:
    """The body of `pages.create` for the week's page; with `key`, its last block carries it."""
    children = page_blocks(data)
    if key is not None:
        children = [*children[: _BLOCK_LIMIT - 1], key_block(key)]
    return {
        "parent": {"type": "data_source_id", "data_source_id": data_source_id},
        "properties": {title_property: {"title": _text(page_title(data))}},
        "children": children,
    }


# ---------------------------------------------------------------- API calls


def data_source_of(client: Client, database_id: str) -> tuple[str, str]:
    """The database's (first) data source and the name of its title property."""
    database: Any = client.databases.retrieve(database_id=database_of(database_id))
    sources = database.get("data_sources") or []
    if not sources:
        raise RuntimeError(f"Notion database {database_id} has no data source to add pages to")
    source_id = str(sources[0]["id"])
    source: Any = client.data_sources.retrieve(data_source_id=source_id)
    for name, spec in (source.get("properties") or {}).items():
        if spec.get("type") == "title":
            return source_id, str(name)
    raise RuntimeError(f"Notion data source {source_id} has no title property")


def find_page(client: Client, data_source_id: str, key: str, since: datetime | None) -> str | None:
    """The id of the page carrying delivery key `key` (its key block) created at or after
    `since` (an earlier attempt that reached Notion), or None. Matched on the key, not the
    title: a title may be edited, and another deployment's page of the week has the same."""
    options: dict[str, Any] = {"data_source_id": data_source_id, "page_size": 100}
    if since is not None:
        options["filter"] = {
            "timestamp": "created_time",
            "created_time": {"on_or_after": since.isoformat()},
        }
    for page in iterate_paginated_api(client.data_sources.query, **options):
        if _carries_key(client, str(page["id"]), key):
            return str(page["id"])
    return None


def _carries_key(client: Client, page_id: str, key: str) -> bool:
    wanted = f"{KEY_LABEL}{key}"
    for block in iterate_paginated_api(client.blocks.children.list, block_id=page_id):
        if block.get("type") != "paragraph":
            continue
        text = "".join(
            str((part.get("text") or {}).get("content", ""))
            for part in block["paragraph"].get("rich_text") or []
        )
        if text == wanted:
            return True
    return False


def create_page(client: Client, payload: dict[str, Any]) -> str:
    page: Any = client.pages.create(**payload)
    return str(page["id"])

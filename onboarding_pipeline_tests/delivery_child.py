"""A delivery in a process of its own, for tests that SIGKILL it at a chosen point:
`python -m onboarding_pipeline_tests.delivery_child '<json settings>'`.

Settings: warehouse_url, schema, report_folder, outbox, recipients, slack_channel, and
optionally slack_base_url, smtp_port, notion_base_url, notion_database_id."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from onboarding_pipeline.config.product import ReportSettings
from onboarding_pipeline.reporting.delivery import deliver_report
from onboarding_pipeline.reporting.mail import EmailResource
from onboarding_pipeline.reporting.notion import NotionResource
from onboarding_pipeline.reporting.report import load_report
from onboarding_pipeline.reporting.slack import SlackResource
from onboarding_pipeline.warehouse import WarehouseResource


def main(settings: dict[str, object]) -> None:
    warehouse = WarehouseResource(
        url=str(settings["warehouse_url"]), schema_name=str(settings["schema"])
    )
    data, charts = load_report(Path(str(settings["report_folder"])))
    slack = (
        SlackResource(token="xoxb-test", base_url=str(settings["slack_base_url"]))
        if settings.get("slack_base_url")
        else SlackResource()
    )
    email = (
        EmailResource(
            host="127.0.0.1",
            port=int(settings["smtp_port"]),  # type: ignore[call-overload]
            security="none",
            sender="reports@example.com",
        )
        if settings.get("smtp_port")
        else EmailResource()
    )
    notion = (
        NotionResource(
            token="secret_test", base_url=str(settings["notion_base_url"]), timeout_seconds=5
        )
        if settings.get("notion_base_url")
        else NotionResource()
    )
    report = ReportSettings(
        recipients=list(settings.get("recipients") or []),  # type: ignore[call-overload]
        slack_channel=str(settings.get("slack_channel") or ""),
        notion_database_id=settings.get("notion_database_id"),  # type: ignore[arg-type]
    )
    result = deliver_report(
        warehouse,
        data,
        charts,
        report,
        slack=slack,
        email=email,
        notion=notion,
        outbox_root=Path(str(settings["outbox"])),
    )
    warehouse.close()
    print(json.dumps({"sent": result.sent, "failed": result.failed}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))

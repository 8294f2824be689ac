"""An outreach delivery in a process of its own, for tests that SIGKILL it at a chosen point:
`python -m onboarding_pipeline_tests.outreach_child '<json settings>'`.

Settings: warehouse_url, outbox, export, and optionally webhook_url, webhook_secret,
smtp_port."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.outreach.deliver import deliver_interventions
from onboarding_pipeline.outreach.resource import OutreachResource
from onboarding_pipeline.reporting.mail import EmailResource
from onboarding_pipeline.reporting.slack import SlackResource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline_tests.outreach_world import NOW


def main(settings: dict[str, object]) -> None:
    warehouse = WarehouseResource(url=str(settings["warehouse_url"]))
    email = (
        EmailResource(
            host="127.0.0.1",
            port=int(settings["smtp_port"]),  # type: ignore[call-overload]
            security="none",
            sender="hi@example.com",
        )
        if settings.get("smtp_port")
        else EmailResource()
    )
    outreach = OutreachResource(
        inapp_webhook_url=settings.get("webhook_url"),  # type: ignore[arg-type]
        inapp_webhook_secret=settings.get("webhook_secret"),  # type: ignore[arg-type]
        timeout_seconds=60,
        max_retries=0,
    )
    config = ProductConfig(
        aha_events=["dashboard_shared"],
        partitions_start_date="2026-06-01",
        interventions={"delivery": {"quiet_hours": None}},
    )
    result = deliver_interventions(
        warehouse,
        config,
        email=email,
        slack=SlackResource(),
        outreach=outreach,
        outbox_root=Path(str(settings["outbox"])),
        export_root=Path(str(settings["export"])),
        now=NOW,
        log=lambda line: None,
    )
    warehouse.close()
    print(json.dumps({str(k): v for k, v in result.outcomes.items()}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))

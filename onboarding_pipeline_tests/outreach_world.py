"""A small warehouse for the outreach tests: users, today's queue (one held-out row), nudges,
milestones and events written straight into the tables the delivery reads, plus a webhook
receiver that verifies signatures and keeps one delivery per Idempotency-Key."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from onboarding_pipeline.activation.assets import table_to_arrow
from onboarding_pipeline.outreach.in_app import SIGNATURE_HEADER, verify
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.tables import (
    INTERVENTION_LEDGER,
    INTERVENTION_QUEUE,
    MILESTONE_PROGRESS,
    NUDGES,
    RAW_EVENTS,
    RAW_USERS,
)

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
SECRET = "whsec_test"
EXPERIMENT = "onboarding-interventions"

# user id -> (channel, owner, holdout, email, first name, company, attributes)
USERS: dict[str, tuple[str, str, bool, str | None, str, str, dict[str, str]]] = {
    "u_app": ("in_app", "growth", False, "app@example.com", "Ana", "Acme", {}),
    "u_mail": ("email", "growth", False, "mail@example.com", "Ben", "Bolt <b>&</b> Co", {}),
    "u_tokyo": (
        "email",
        "growth",
        False,
        "tokyo@example.com",
        "Chi",
        "Kobo",
        {"timezone": "Asia/Tokyo"},
    ),
    "u_listed": ("email", "growth", False, "Listed@Example.com", "Dan", "Dune", {}),
    "u_unsub": ("email", "growth", False, "unsub@example.com", "Eve", "Echo", {}),
    "u_human": ("human", "support", False, "human@example.com", "Fay", "Fir <!here>", {}),
    "u_hold": ("none", "none", True, "hold@example.com", "Gus", "Gale", {}),
}


def seed(
    warehouse: WarehouseResource, now: datetime = NOW, users: dict[str, Any] | None = None
) -> None:
    users = USERS if users is None else users
    ids = list(users)
    raw = pd.DataFrame(
        {
            "user_id": ids,
            "signup_at": [now - timedelta(days=5)] * len(ids),
            "email": [users[u][3] for u in ids],
            "first_name": [users[u][4] for u in ids],
            "company": [users[u][5] for u in ids],
            "attributes": [json.dumps(users[u][6]) if users[u][6] else None for u in ids],
        }
    )
    queue = pd.DataFrame(
        {
            "user_id": ids,
            "path": "self_serve",
            "next_action": "Connect a data source",
            "target_step": "data_connected",
            "intervention_type": "nudge",
            "channel": [users[u][0] for u in ids],
            "owner": [users[u][1] for u in ids],
            "escalation_step": 1,
            "reason": "stalled: integration_failed twice <@U1>",
            "holdout": [users[u][2] for u in ids],
            "priority": [0.1 - i / 100 for i in range(len(ids))],
            "failure_label": None,
            "experiment": EXPERIMENT,
            "queued_on": now.date(),
            "queued_at": now,
            "message": [None if users[u][2] else f"Template for {u}" for u in ids],
        }
    )
    treated = [u for u in ids if not users[u][2]]
    nudges = pd.DataFrame(
        {
            "user_id": treated,
            "next_action": "Connect a data source",
            "intervention_type": "nudge",
            "channel": [users[u][0] for u in treated],
            "language": "en",
            "message": [
                f"Hi {users[u][4]}, connect your data at {users[u][5]} <script>" for u in treated
            ],
            "message_source": "template",
            "written_at": now,
        }
    )
    progress = pd.DataFrame(
        {
            "user_id": ["u_human", "u_human"],
            "path": "self_serve",
            "milestone": ["workspace_ready", "data_connected"],
            "milestone_label": ["Create your workspace", "Connect a data source"],
            "position": [1, 2],
            "weight": 1.0,
            "due_day": [2, 4],
            "completed": [True, False],
            "completed_at": [now - timedelta(days=4), None],
            "completed_on_time": [True, False],
            "is_next": [False, True],
        }
    )
    events = pd.DataFrame(
        {
            "event_id": ["e1", "e2", "e3"],
            "user_id": ["u_human", "u_human", "u_unsub"],
            "event_name": ["workspace_created", "integration_failed", "unsubscribed"],
            "timestamp": [
                now - timedelta(days=4),
                now - timedelta(days=2),
                now - timedelta(days=1),
            ],
        }
    )
    for spec, frame in (
        (RAW_USERS, raw),
        (INTERVENTION_QUEUE, queue),
        (INTERVENTION_LEDGER, queue.drop(columns="message")),
        (NUDGES, nudges),
        (MILESTONE_PROGRESS, progress),
        (RAW_EVENTS, events),
    ):
        for name in spec.schema.names:  # columns the delivery does not read
            if name not in frame:
                frame[name] = None
        frame = frame[list(spec.schema.names)]
        warehouse.replace_all(spec.name, table_to_arrow(frame, spec.schema))


class WebhookReceiver:
    """A real HTTP receiver: checks the signature (401 otherwise), keeps one delivery per
    Idempotency-Key (a repeat gets the first one's id), can fail the first `fail_first`
    requests with 503, and can hold its reply (`hold`) after recording a delivery."""

    def __init__(self, server: HTTPServer, secret: str = SECRET) -> None:
        self.server = server
        self.secret = secret
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.deliveries: dict[str, dict[str, Any]] = {}
        self.fail_first = 0
        self.slow_first = 0.0  # seconds the first delivery's reply is late (a client timeout)
        self.hold = False
        self.received = threading.Event()
        self.release = threading.Event()
        server.expect_request("/hooks/onboarding", method="POST").respond_with_handler(self._handle)

    @property
    def url(self) -> str:
        return self.server.url_for("/hooks/onboarding")

    def _handle(self, request: Request) -> Response:
        body = request.get_data()
        key = request.headers.get("Idempotency-Key", "")
        valid = verify(body, request.headers.get(SIGNATURE_HEADER, ""), self.secret)
        with self.lock:
            self.requests.append({"key": key, "valid": valid, "body": json.loads(body)})
            if not valid:
                return Response('{"error":"bad signature"}', status=401)
            if self.fail_first > 0:
                self.fail_first -= 1
                return Response('{"error":"busy"}', status=503)
            first = self.deliveries.setdefault(
                key, {"id": f"dlv_{len(self.deliveries) + 1}", "body": json.loads(body)}
            )
        self.received.set()
        if self.slow_first and len(self.requests) == 1:
            time.sleep(self.slow_first)
        if self.hold:
            self.release.wait(60)
        return Response(json.dumps({"id": first["id"]}), content_type="application/json")

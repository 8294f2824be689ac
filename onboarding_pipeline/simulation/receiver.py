"""A local in-app webhook receiver for the simulation: what an in-app guidance tool would do
with the pipeline's deliveries (check the signature, keep one delivery per Idempotency-Key)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from onboarding_pipeline.outreach.in_app import SIGNATURE_HEADER, verify


class NudgeReceiver:
    """Runs on 127.0.0.1 on a free port; `take()` returns what arrived since the last call."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.fresh: list[dict[str, Any]] = []
        self.rejected = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.headers.get("Idempotency-Key", "")
                if not verify(body, self.headers.get(SIGNATURE_HEADER, ""), receiver.secret):
                    with receiver.lock:
                        receiver.rejected += 1
                    self._reply(401, {"error": "bad signature"})
                    return
                with receiver.lock:
                    if key not in receiver.seen:
                        receiver.seen.add(key)
                        receiver.fresh.append(json.loads(body))
                self._reply(200, {"id": key})

            def _reply(self, status: int, answer: dict[str, str]) -> None:
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: the simulation prints its own summary

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/onboarding"

    def __enter__(self) -> NudgeReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def take(self) -> list[dict[str, Any]]:
        with self.lock:
            fresh, self.fresh = self.fresh, []
        return fresh

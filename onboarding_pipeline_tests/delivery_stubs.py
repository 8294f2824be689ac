"""Local stand-ins for the services the report goes to, shared by the fault tests: a Slack Web
API stub that remembers what was posted (and serves it back through conversations.history and
conversations.replies, as Slack does), an aiosmtpd inbox, and a free port."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

CHANNEL_ID = "C0ONBOARD"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _form(request: Request) -> dict[str, Any]:
    if request.is_json:
        return dict(request.get_json())
    return {key: request.form[key] for key in request.form}


class SlackStub:
    """chat.postMessage, files_upload_v2's three calls, conversations.history/replies/list.

    `block_after_post` / `block_after_upload`: the stub does its work, then holds the reply
    until `release` is set (a process killed meanwhile never hears that it succeeded)."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.lock = threading.Lock()
        self.messages: list[dict[str, Any]] = []  # posted, with ts, metadata and files
        self.calls: list[str] = []
        self.block_after_post = False
        self.block_after_upload = False
        self.posted = threading.Event()
        self.uploaded = threading.Event()
        self.release = threading.Event()
        self._pending_files: list[str] = []
        routes = {
            "chat.postMessage": self._post,
            "files.getUploadURLExternal": self._upload_url,
            "files.completeUploadExternal": self._complete,
            "conversations.history": self._history,
            "conversations.replies": self._replies,
            "conversations.list": self._list,
        }
        for method, handler in routes.items():
            server.expect_request(f"/api/{method}").respond_with_handler(
                self._recorded(method, handler)
            )
        server.expect_request("/upload/F1", method="POST").respond_with_handler(
            self._recorded("upload", lambda request: {"ok": True})
        )

    def _recorded(self, name: str, handler: Any) -> Any:
        def respond(request: Request) -> Response:
            with self.lock:
                self.calls.append(name)
            body = handler(request)
            return Response(json.dumps(body), content_type="application/json")

        return respond

    def _post(self, request: Request) -> dict[str, Any]:
        form = _form(request)
        metadata = form.get("metadata")
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        with self.lock:
            ts = f"{1730419200 + len(self.messages)}.000100"
            self.messages.append(
                {"ts": ts, "text": form.get("text"), "metadata": metadata, "files": []}
            )
        self.posted.set()
        if self.block_after_post:
            self.release.wait(60)
        return {"ok": True, "channel": CHANNEL_ID, "ts": ts}

    def _upload_url(self, request: Request) -> dict[str, Any]:
        with self.lock:
            self._pending_files.append(str(_form(request).get("filename")))
        return {"ok": True, "upload_url": self.server.url_for("/upload/F1"), "file_id": "F1"}

    def _complete(self, request: Request) -> dict[str, Any]:
        thread_ts = _form(request).get("thread_ts")
        with self.lock:
            for message in self.messages:
                if message["ts"] == thread_ts:
                    message["files"] += [{"name": name} for name in self._pending_files]
            self._pending_files = []
        self.uploaded.set()
        if self.block_after_upload:
            self.release.wait(60)
        return {"ok": True, "files": [{"id": "F1"}]}

    def _history(self, request: Request) -> dict[str, Any]:
        with self.lock:
            shown = [
                {"type": "message", "ts": m["ts"], "text": m["text"], "metadata": m["metadata"]}
                for m in reversed(self.messages)
            ]
        return {"ok": True, "messages": shown, "has_more": False}

    def _replies(self, request: Request) -> dict[str, Any]:
        ts = _form(request).get("ts") or request.args.get("ts")
        with self.lock:
            replies = [
                {"type": "message", "ts": ts, "files": m["files"]}
                for m in self.messages
                if m["ts"] == ts
            ]
        return {"ok": True, "messages": replies, "has_more": False}

    def _list(self, request: Request) -> dict[str, Any]:
        return {"ok": True, "channels": [{"id": CHANNEL_ID, "name": "onboarding"}]}

    def count(self, name: str) -> int:
        with self.lock:
            return self.calls.count(name)


class Inbox:
    """aiosmtpd handler keeping every accepted envelope; `block_data` holds the reply to
    DATA (the message is already received) until `release` is set."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.block_data = False
        self.received = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        self.received.set()
        if self.block_data:
            import asyncio

            while not self.release.is_set():
                await asyncio.sleep(0.05)
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(e.content, policy=email.policy.default)  # type: ignore[misc]
            for e in self.envelopes
        ]


@contextmanager
def smtp_server(inbox: Inbox, **settings: Any) -> Iterator[int]:
    """An aiosmtpd server on a free port (the Controller's own port=0 check fails)."""
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **settings)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def wait_for(event: threading.Event, seconds: float, what: str) -> None:
    started = time.monotonic()
    if not event.wait(seconds):
        raise AssertionError(f"{what} did not happen within {time.monotonic() - started:.0f} s")

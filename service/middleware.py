"""One pure ASGI middleware: request ids, the access log line and the request metrics.

Pure ASGI rather than ``BaseHTTPMiddleware``, which runs the route behind its own receive channel so
the route never sees ``http.disconnect`` and keeps working for clients that already left.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ClientDisconnectedError
from service.logs import request_id_var
from service.metrics import Metrics

__all__ = ["REQUEST_ID_HEADER", "RequestMiddleware"]

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is kept only if it is short and plain, so it cannot forge log lines or bloat them.
_ACCEPTED_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
CLIENT_LEFT = str(ClientDisconnectedError.status)  # pose_requests_total's label for clients that left

access_log = logging.getLogger("pose.access")


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if _ACCEPTED_ID.fullmatch(given):
                return given
    return uuid.uuid4().hex


class RequestMiddleware:
    """Tags every HTTP request with an id (the client's ``X-Request-ID`` or a new one), returns it on every
    response, logs one access line, and records ``POST /v1/pose`` in the Prometheus metrics. A request whose
    client disconnected before the answer, or before the end of a streamed one, is counted under its own
    status label (499)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, pose_path: str = "/v1/pose") -> None:
        self.app = app
        self.metrics = metrics
        self.pose_path = pose_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # a stream's log lines and error messages carry its id
            request_id_var.set(_request_id(scope))
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500  # what an exception that escapes the app becomes
        started = completed = disconnected = False
        start = time.perf_counter()

        async def receive_watching() -> Message:
            nonlocal disconnected
            message = await receive()
            disconnected |= message["type"] == "http.disconnect" and not started
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, started, completed
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)
            completed |= message["type"] == "http.response.body" and not message.get("more_body", False)

        counted = scope["path"] == self.pose_path
        if counted:
            self.metrics.inflight.inc()
        try:
            await self.app(scope, receive_watching, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            # A client gone before the answer, or in the middle of a streamed one (NDJSON), never received it.
            label = CLIENT_LEFT if disconnected or (started and not completed) else str(status)
            if counted:
                self.metrics.inflight.dec()
                self.metrics.request_seconds.observe(elapsed)
                self.metrics.requests.labels(status=label).inc()
            access_log.info(
                "%s %s %s %.1f ms", scope["method"], scope["path"], label, 1000 * elapsed, extra={"status": label}
            )

"""What a request may cost the gateway: the token before the body, a cap on the body, and
bounds on what a valid token may ask for.

FastAPI reads a route's whole body before any dependency runs, so the token check of
`gateway.auth.Writer` alone came after a 200 MB upload had been buffered. `RequestGuard`
answers before the body is read: 401/403 for a write without the right token, 413 for a
Content-Length above `[api] max_body_bytes`, and 413 as soon as a body without one (chunked)
streams past it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fastapi import APIRouter, HTTPException, status
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgetwin.agent.contract import SensorSettings
from edgetwin.gateway.auth import bearer_token, check_token, require_writer
from edgetwin.gateway.config import ApiSection

_TOO_LARGE = 413


class BodyTooLarge(HTTPException):
    """Raised from `receive`: FastAPI passes an HTTPException raised while it reads the body on
    to the app's handler, which answers with it."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        of = f"of {size} bytes " if size is not None else ""
        super().__init__(
            _TOO_LARGE, f"request body {of}exceeds [api] max_body_bytes ({limit} bytes)"
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class RequestGuard:
    """Pure ASGI middleware (a BaseHTTPMiddleware would not see the body as it streams)."""

    def __init__(self, app: ASGIApp, routers: Iterable[APIRouter], api: ApiSection) -> None:
        self.app = app
        self.api = api
        # From the routers as declared: the app's own route list wraps included routers in
        # types private to FastAPI.
        self.writes = [
            route
            for router in routers
            for route in router.routes
            if isinstance(route, APIRoute)
            and any(depends.dependency is require_writer for depends in route.dependencies)
        ]

    def _needs_token(self, scope: Scope) -> bool:
        return any(route.matches(scope)[0] is Match.FULL for route in self.writes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._needs_token(scope):
            try:
                check_token(self.api, bearer_token(_header(scope, b"authorization")))
            except HTTPException as refusal:
                await _answer(refusal, scope, receive, send)
                return
        limit = self.api.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                bad = HTTPException(status.HTTP_400_BAD_REQUEST, "Content-Length is no number")
                await _answer(bad, scope, receive, send)
                return
            if int(declared) > limit:
                await _answer(BodyTooLarge(limit, int(declared)), scope, receive, send)
                return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge as exc:
            # Read by something that does not hand HTTPExceptions on (none of ours today).
            if started:
                raise
            await _answer(exc, scope, receive, watched_send)


async def _answer(refusal: HTTPException, scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(
        {"detail": refusal.detail}, status_code=refusal.status_code, headers=refusal.headers
    )
    await response(scope, receive, send)


def check_sensors(api: ApiSection, sensors: Mapping[str, SensorSettings]) -> None:
    """422 for a sensor set beyond `[api] max_sensors`, or one polled faster than
    `[api] min_interval`: each costs the gateway a stand-in stream when its agent is away."""
    if len(sensors) > api.max_sensors:
        raise HTTPException(
            422, f"{len(sensors)} sensors exceed [api] max_sensors ({api.max_sensors}) per device"
        )
    for name, settings in sensors.items():
        check_interval(api, settings.interval, f"sensor {name!r}: interval")


def check_interval(api: ApiSection, interval: float, what: str) -> None:
    if interval < api.min_interval:
        raise HTTPException(
            422, f"{what} {interval} s is below [api] min_interval ({api.min_interval} s)"
        )

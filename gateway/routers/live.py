"""GET /events: the fleet's changes as Server-Sent Events (gateway/live.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from edgetwin.agent.contract import ID_PATTERN
from edgetwin.gateway.live import LiveFilter, LiveHub

router = APIRouter(tags=["fleet"])


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`snapshot` first (the page of matching devices sorted by id, with "
            "sparklines, `total`, and `fleet` counts), then `devices` (changed devices of the "
            "page, coalesced per [live] interval) and `fleet` (changed counts); a new snapshot "
            "when devices enter or leave the filter or the client fell behind. With `engine`: "
            "only `engine` events (status, and points for the engine panel's charts)",
        }
    },
    summary="Live changes of the fleet, pushed (Server-Sent Events)",
)
async def events(
    request: Request,
    *,
    device: Annotated[str | None, Query(pattern=ID_PATTERN, description="one device")] = None,
    prefix: Annotated[
        str | None, Query(pattern=r"^[a-z0-9_-]{0,64}$", description="device id prefix")
    ] = None,
    site: Annotated[str | None, Query(max_length=64, description="exact site")] = None,
    q: Annotated[
        str | None, Query(max_length=100, description="text in the id, site or a label")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    engine: Annotated[
        bool,
        Query(
            description="the scale engine's figures instead of devices: `engine` events, "
            "the first with the last few minutes' points, then one a second while it runs"
        ),
    ] = False,
) -> StreamingResponse:
    hub: LiveHub = request.app.state.live
    client = hub.open(
        LiveFilter(
            device=device,
            prefix=prefix,
            site=site,
            q=q,
            offset=offset,
            limit=limit,
            engine=engine,
        )
    )
    return StreamingResponse(
        hub.stream(client),
        media_type="text/event-stream",
        # No caching, and no buffering by a reverse proxy (nginx honours this header).
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

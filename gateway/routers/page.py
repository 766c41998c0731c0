"""GET /: the fleet page, a small self-contained HTML page on the JSON API and its event stream.

The page is static (gateway/static: HTML, vanilla JS and CSS, no build step and no CDN); its
script follows GET /events (Server-Sent Events, gateway/live.py) for the devices of the page
it shows, and GET /devices/{id}/history for a device's charts, which it draws as plain SVG. It
writes text with textContent only, so a device id or label from the network can never become
markup. Pushed changes rather than polling: at 10,000 devices a poll of the whole fleet every
second is megabytes a second per open page and a full redraw, where the feed sends only the
changed rows of the page shown; EventSource reconnects by itself, and every connection starts
with a snapshot, so a lost connection heals as a poll would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC: Final = Path(__file__).resolve().parent.parent / "static"

# The page loads only its own script and style sheet and talks only to this gateway; no inline
# script or style anywhere, so a strict policy costs nothing and fences off injected markup.
PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["page"])
# Relative asset and API URLs in the page keep it working behind a reverse proxy's path prefix.
router.mount("/static", StaticFiles(directory=STATIC), name="static")


@router.get("/", include_in_schema=False, response_class=FileResponse)
def fleet_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)

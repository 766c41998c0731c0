"""GET /: the fleet page, a small self-contained HTML page that polls the JSON API.

The page is static (gateway/static: HTML, vanilla JS and CSS, no build step and no CDN); its
script asks GET /devices and GET /fleet once a second and draws the table with textContent
only, so a device id or label from the network can never become markup. Polling rather than
Server-Sent Events: every poll is a complete, consistent snapshot that needs no change feed from
the registry, a lost connection heals on the next tick, proxies and the threadpool hold no
long-lived streams, and one request a second per open page is nothing next to the fleet's MQTT
traffic.
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

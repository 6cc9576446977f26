"""The explorer page: pick a served model, drop an image (or take a generated sample) and see the
prediction and every attention map the model has, by kind and depth, over the image. Plain HTML, CSS and
one script shipped here (no build step, nothing from a CDN), talking to the server only through the
vision API's JSON (service/http/vision.py), so it is also an example of using it.

    GET /                 the page (index.html)
    GET /explorer/FILE    its script, style sheet and samples (static/)
"""

from pathlib import Path

from aiohttp import web

from attnserve.service.auth import EXPLORER_PREFIX

FOLDER = Path(__file__).parent
# The page runs only its own script and style and talks only to this server; maps arrive as data: URLs
# and are drawn through blob: ones.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def routes() -> list[web.AbstractRouteDef]:
    return [web.get("/", page), web.static(EXPLORER_PREFIX.rstrip("/"), FOLDER / "static")]


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(FOLDER / "index.html", headers=HEADERS)

"""The agent console: a static page (HTML, CSS, JavaScript, no build step) served at `/`.

The files live in `hub/console/` (package data) and are read once, when the app is built, so
serving them never touches the disk. They are small and change only with the hub's version:
`Cache-Control: no-cache` with an `ETag` lets a browser keep them and revalidate cheaply.

Every answer carries a strict Content-Security-Policy: scripts and styles only from this
origin (the page has no inline script or style), connections only to this origin (the API and
the SSE stream), no frames. Recording links are navigations to the hub's `/v1/recordings/…`,
which redirects to the vendor, so no media source has to be allowed here. `Referrer-Policy:
no-referrer` keeps the `?token=` of a recording link out of the vendor's logs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.exceptions import NotFound

__all__ = ["routes", "CONTENT_SECURITY_POLICY", "ASSETS"]

#: The page's own files: name in `hub/console/` -> media type.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str

    def respond(self, request: Request) -> Response:
        headers = {**_HEADERS, "ETag": self.etag}
        if self.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def load_assets() -> dict[str, Asset]:
    folder = resources.files("hub.http").joinpath("console")
    assets = {}
    for name, media_type in ASSETS.items():
        body = folder.joinpath(name).read_bytes()
        assets[name] = Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return assets


def routes() -> list[Route]:
    """`GET /` (the page) and `GET /console/{name}` (its stylesheet and script)."""
    assets = load_assets()
    page = assets["index.html"]

    async def index(request: Request) -> Response:
        return page.respond(request)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None or found is page:
            raise NotFound("no such console file")
        return found.respond(request)

    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Route("/console/{name}", asset, methods=["GET", "HEAD"]),
    ]

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

from hub.apidoc import described, ok, operation
from hub.exceptions import NotFound

__all__ = ["routes", "CONTENT_SECURITY_POLICY", "ASSETS", "Asset", "asset"]

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


def asset(body: bytes, media_type: str) -> Asset:
    """A static file served with the console's headers and an ETag from its content (also `/docs`)."""
    return Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')


def load_assets() -> dict[str, Asset]:
    folder = resources.files("hub.http").joinpath("console")
    return {name: asset(folder.joinpath(name).read_bytes(), media_type) for name, media_type in ASSETS.items()}


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
        described(Route("/", index, methods=["GET", "HEAD"]), get=operation(
            "The agent console", tag="console", roles=None, description="docs/CONSOLE.md; it signs in through the API.",
            responses={200: ok({"type": "string"}, "The console's page", media_type="text/html"),
                       304: ok(None, "Not modified (ETag)")})),
        described(Route("/console/{name}", asset, methods=["GET", "HEAD"]), get=operation(
            "A file of the console", tag="console", roles=None, errors=[404],
            responses={200: {"description": "The console's script or stylesheet", "content": {
                "text/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}}}},
                       304: ok(None, "Not modified (ETag)")})),
    ]

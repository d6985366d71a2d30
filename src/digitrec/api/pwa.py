"""The installable page: its web manifest, its service worker and its offline page.

The service worker (``web/sw.js``) is written once per app from a template: the server
lists the page's shell (the page, the offline page, the manifest, the scripts, styles and
icons it loads) and a version made of the SHA-256 of every one of those files, so any
change to them gives browsers a new worker and a fresh cache, and nothing else does.
The model and ONNX Runtime Web for offline use are not part of the shell: the page
stores them only when the person asks (``static/pwa.js``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from digitrec.api.web import STATIC_DIR, WEB_DIR

NO_CACHE = {"cache-control": "no-cache"}
MANIFEST = WEB_DIR / "manifest.webmanifest"
OFFLINE_PAGE = WEB_DIR / "offline.html"
WORKER_TEMPLATE = WEB_DIR / "sw.js"
# The shell: pages by URL and file, then the static files the page loads.
PAGES = {"/": WEB_DIR / "index.html", "/offline": OFFLINE_PAGE, "/manifest.webmanifest": MANIFEST}
SHELL_GLOBS = ("*.js", "*.css", "*.svg", "icons/*.png")  # example images are uploads: server
NOT_SHELL = {"dashboard.js", "dashboard.css", "docs.js"}  # pages that need the server anyway

pwa = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Worker:
    """The service worker's source and what it caches."""

    version: str  # 16 hex digits of the SHA-256 over every shell file's hash
    shell: list[str]  # URLs
    source: bytes

    @classmethod
    def build(cls, static: Path = STATIC_DIR) -> Worker:
        files = dict(PAGES)
        for pattern in SHELL_GLOBS:
            for path in sorted(static.glob(pattern)):
                if path.is_file() and path.name not in NOT_SHELL:
                    files[f"/static/{path.relative_to(static).as_posix()}"] = path
        digest = hashlib.sha256()
        for url, path in sorted(files.items()):
            digest.update(f"{url}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
        digest.update(WORKER_TEMPLATE.read_bytes())
        version = digest.hexdigest()[:16]
        shell = sorted(files)
        source = (
            WORKER_TEMPLATE.read_text(encoding="utf-8")
            .replace("__VERSION__", version)
            .replace("__SHELL__", json.dumps(shell))
        )
        return cls(version, shell, source.encode())


def worker(request: Request) -> Worker:
    """This app's worker, built on first use (the files do not change while it runs)."""
    built: Worker | None = getattr(request.app.state, "service_worker", None)
    if built is None:
        built = request.app.state.service_worker = Worker.build()
    return built


@pwa.get("/sw.js")
async def service_worker(request: Request) -> Response:
    return Response(
        worker(request).source,
        media_type="text/javascript",
        headers={**NO_CACHE, "service-worker-allowed": "/"},
    )


@pwa.get("/manifest.webmanifest")
async def web_manifest() -> FileResponse:
    return FileResponse(MANIFEST, media_type="application/manifest+json", headers=NO_CACHE)


@pwa.get("/offline")
async def offline_page() -> FileResponse:
    return FileResponse(OFFLINE_PAGE, media_type="text/html", headers=NO_CACHE)

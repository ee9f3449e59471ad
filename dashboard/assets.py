"""The dashboard's own files (CSS, scripts, the vendored chart library) served under /static.

Pages link every asset as ``/static/<path>?v=<content hash>``. A request carrying the current
hash is answered with ``Cache-Control: immutable`` for a year, so a phone on a weak network
fetches each file once per release; any other request gets ``no-cache`` and is revalidated
with its ETag (a 304 without a body). Nothing is ever loaded from another host.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import parse_qs

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


class AssetVersions:
    """Content hashes of the static files, computed once per file and process."""

    def __init__(self, root: Path = STATIC_DIR) -> None:
        self.root = root
        self._hashes: dict[str, str] = {}

    def version(self, path: str) -> str:
        """The first 12 hex digits of the file's SHA-256; FileNotFoundError names a missing
        asset (a template bug, caught by the page tests)."""
        known = self._hashes.get(path)
        if known is None:
            file = (self.root / path).resolve()
            if not file.is_relative_to(self.root.resolve()) or not file.is_file():
                raise FileNotFoundError(f"dashboard asset {path!r} does not exist in {self.root}")
            known = hashlib.sha256(file.read_bytes()).hexdigest()[:12]
            self._hashes[path] = known
        return known

    def url(self, path: str) -> str:
        return f"/static/{path}?v={self.version(path)}"


class CachedStaticFiles(StaticFiles):
    """Starlette's StaticFiles (ETag, Last-Modified, 304) plus the cache policy above."""

    def __init__(self, versions: AssetVersions) -> None:
        super().__init__(directory=versions.root)
        self.versions = versions

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result,
                      scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        relative = Path(full_path).resolve().relative_to(self.versions.root.resolve()).as_posix()
        asked = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("v", [""])[0]
        current = self.versions.version(relative)
        response.headers["Cache-Control"] = IMMUTABLE if asked == current else REVALIDATE
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

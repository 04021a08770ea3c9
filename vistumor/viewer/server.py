"""HTTP: a small router over :class:`ViewerApp` and a pooled server (:mod:`.pool`: a bounded
number of worker threads, idle connections parked and closed after a timeout).

Every URL is split into segments and each segment is decoded once; a segment that is
empty, ``.``/``..``, or holds ``..``, a slash, a backslash or NUL (raw or percent-encoded)
ends the request with 404 before any lookup. Names are then looked up in the run (never
joined onto a path), static files in a table built at start-up. Unknown names, levels and
tiles are 404; any other failure is logged here with its traceback and answered with a
bare 500.

While the server is bound to loopback, every request (GET, HEAD, POST) must name it in its
``Host`` header: ``127.0.0.1``, ``localhost`` or ``[::1]`` with the server's port (no port
only when that is 80, as browsers send it). Anything else is 421 Misdirected Request before
any lookup: a hostile page whose domain is rebound to 127.0.0.1 (DNS rebinding) sends its
own name as ``Host``, so it can read nothing (``/api/run`` holds paths, checkpoints and
reviewer names), and learns nothing of which slides exist.

The one write is a review (``POST /api/review/<model>/<slide>``, :mod:`.review`): JSON
only (a cross-site form cannot send it without a preflight this server never answers), from
a page of this server (``Origin``) reached by a loopback name (``Host``: no DNS rebinding),
at most :data:`~vistumor.viewer.review.MAX_BYTES` by its ``Content-Length``, which is
checked before the body is read. A refused save is 400 (403 for another origin, 409 for a
save based on an older version of the review) with one line, and closes the connection (its
body may be unread).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote

from vistumor.errors import VisTumorError
from vistumor.viewer import pages
from vistumor.viewer.guards import LOOPBACK, Misdirected, Refused, content_length, loopback_hosts, same_origin
from vistumor.viewer.layers import HeatTiles
from vistumor.viewer.pool import TIMEOUT, PooledHTTPServer
from vistumor.viewer.review import MAX_BYTES, ReviewConflict, ReviewError, ReviewStore
from vistumor.viewer.run import NotFound, RunFolder, safe_name
from vistumor.viewer.tiles import ByteLRU, DziGeometry, SlideTiles

log = logging.getLogger(__name__)

NUMBER = re.compile(r"^[0-9]{1,7}$")
_TILE = re.compile(r"^([0-9]{1,7})_([0-9]{1,7})\.(jpeg|png)$")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "style-src 'self' 'unsafe-inline'; object-src 'none'; frame-ancestors 'none'",
}
TILE_CACHE = "private, max-age=600"
STATIC = resources.files("vistumor.viewer") / "static"
#: threads answering requests: the slide tiles' decoding runs in parallel (OpenSlide, JPEG)
WORKERS = min(32, (os.cpu_count() or 1) + 4)


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def not_found(reason: str = "not found") -> Response:
    return Response(HTTPStatus.NOT_FOUND, f"404 {reason}\n".encode())


def refused(status: int, reason: str) -> Response:
    """A refused write: one line, and the connection closed (the body may be unread)."""
    line = " ".join(reason.split())
    return Response(status, f"{status} {line}\n".encode(), headers={"Connection": "close"})


def segments(target: str) -> list[str]:
    """The decoded segments of a request target's path; :class:`NotFound` for anything that
    could name a parent folder, another root or a different separator."""
    path = target.partition("?")[0].partition("#")[0]
    if not path.startswith("/") or path.startswith("//") or "\\" in path:  # origin-form only
        raise NotFound("bad path")
    if path == "/":
        return []
    parts = [unquote(part, errors="strict") for part in path[1:].split("/")]
    if not all(safe_name(part) and part != "." for part in parts):
        raise NotFound("bad path segment")
    return parts


def static_files() -> dict[str, tuple[bytes, str]]:
    """The files under ``static/`` by their URL path (the pages are ``templates/``)."""
    table = {}
    root = Path(str(STATIC))
    for path in sorted(root.rglob("*")):
        if path.is_file():
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind.endswith("javascript"):
                kind += "; charset=utf-8"
            table[path.relative_to(root).as_posix()] = (path.read_bytes(), kind)
    return table


class ViewerApp:
    """The viewer of one run folder: ``handle(target)`` answers a GET, ``post(...)`` saves a review."""

    def __init__(self, run: RunFolder | str | Path, cache_mb: int = 256):
        self.run = run if isinstance(run, RunFolder) else RunFolder(run)
        self.cache = ByteLRU(cache_mb << 20)
        self.heat = HeatTiles(self.run, self.cache)
        self.reviews = ReviewStore(self.run)
        #: reviews only from pages reached by a loopback name (False when served on another interface)
        self.loopback_only = True
        #: the ``Host`` headers answered; None: any (set by :class:`ViewerServer` on loopback)
        self.hosts: frozenset[str] | None = None
        self.static = static_files()
        self._slides: dict[str, SlideTiles] = {}
        self.routes: list[tuple[tuple[str, ...], Callable[..., Response]]] = [
            ((), self.index), (("view", "*"), self.view), (("api", "run"), self.api_run),
            (("api", "slide", "*"), self.api_slide), (("api", "lesions", "*", "*"), self.api_lesions),
            (("api", "truth", "*"), self.api_truth), (("api", "review", "*", "*"), self.api_review),
            (("slide", "*"), self.slide_dzi),
            (("slide", "*", "*", "*"), self.slide_tile), (("heat", "*", "*", "*"), self.heat_dzi),
            (("heat", "*", "*", "*", "*", "*"), self.heat_tile), (("thumb", "*"), self.thumbnail),
            (("figure", "*", "*"), self.figure),
        ]

    def handle(self, target: str, headers: Any = None) -> Response:
        """Answer a GET with the request's ``headers`` (``.get(name)``; None: none sent)."""
        return self._guarded(target, lambda: self._route(target), headers)

    def post(self, target: str, headers: Any, body: BinaryIO) -> Response:
        """Answer a POST (a review) with ``headers`` (``.get(name)``) and ``body`` to read from."""
        response = self._guarded(target, lambda: self._save_review(target, headers, body), headers)
        if response.status >= 400:
            response.headers["Connection"] = "close"
        return response

    def _route(self, target: str) -> Response:
        parts = segments(target)
        if parts and parts[0] == "static":
            return self.static_file("/".join(parts[1:]))
        for pattern, handler in self.routes:
            if len(pattern) == len(parts) and all(p in ("*", s) for p, s in zip(pattern, parts, strict=True)):
                args = [s for p, s in zip(pattern, parts, strict=True) if p == "*"]
                return handler(*args)
        return not_found()

    def check_host(self, headers: Any) -> None:
        """:class:`Misdirected` unless the ``Host`` header is one this server answers to."""
        if self.hosts is None:
            return
        host = ((headers.get("Host") if headers is not None else None) or "").strip().lower()
        if host not in self.hosts:
            raise Misdirected(f"host {host[:80]!r} is not this server; it answers to {sorted(self.hosts)}"
                              if host else "a Host header is required")

    def _guarded(self, target: str, answer: Callable[[], Response], headers: Any = None) -> Response:
        try:
            self.check_host(headers)
            return answer()
        except Misdirected as err:
            return refused(HTTPStatus.MISDIRECTED_REQUEST, str(err))
        except (NotFound, UnicodeDecodeError) as err:
            return not_found(str(err) if isinstance(err, NotFound) else "bad encoding")
        except ReviewError as err:
            return refused(HTTPStatus.BAD_REQUEST, str(err))
        except ReviewConflict as err:
            return refused(HTTPStatus.CONFLICT, str(err))
        except Refused as err:
            return refused(HTTPStatus.FORBIDDEN, str(err))
        except TimeoutError:  # the socket's timeout, reading a body that stopped coming
            return refused(HTTPStatus.REQUEST_TIMEOUT, "the request body stopped arriving")
        except VisTumorError as err:  # a slide or annotation that cannot be read: said, not traced
            log.warning("%s: %s", target, err)
            return not_found("cannot be read")
        except Exception:
            log.exception("error answering %s", target)
            return Response(HTTPStatus.INTERNAL_SERVER_ERROR, b"500 internal error\n")

    # -- pages and data --------------------------------------------------------------------

    def index(self) -> Response:
        return _html(pages.index_page(self.run))

    def view(self, name: str) -> Response:
        return _html(pages.slide_page(self.run, name))

    def static_file(self, name: str) -> Response:
        if name not in self.static:
            raise NotFound(f"no static file {name!r}")
        body, kind = self.static[name]
        return Response(HTTPStatus.OK, body, kind, {"Cache-Control": "public, max-age=3600"})

    def api_run(self) -> Response:
        return _json(pages.run_info(self.run))

    def api_slide(self, name: str) -> Response:
        entry = self.run.slide(name)
        tiles = self.tiles(name) if entry.path else None
        size = tiles.slide.dimensions if tiles else None
        return _json(pages.slide_info(self.run, self.heat, name, size, tiles.slide.mpp if tiles else None))

    def api_lesions(self, model: str, name: str) -> Response:
        self.run.model(model)
        return _json({"slide": self.run.slide(name).name, "model": model,
                      "lesions": self.run.lesions(model, name)})

    def api_truth(self, name: str) -> Response:
        return _json({"slide": self.run.slide(name).name, "rings": self.run.truth(name)})

    def api_review(self, model: str, name: str) -> Response:
        return _json(self.reviews.load(model, name))

    def _save_review(self, target: str, headers: Any, body: BinaryIO) -> Response:
        """``POST /api/review/<model>/<slide>``: the request is checked before its body is read."""
        parts = segments(target)
        if len(parts) != 4 or parts[:2] != ["api", "review"]:
            raise NotFound("nothing to post here")
        model, name = parts[2:]
        self.reviews.paths(model, name)  # known model and slide, or 404
        same_origin(headers, self.loopback_only)
        kind = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise ReviewError(f"a review is sent as application/json, not {kind or 'nothing'!r}")
        length = content_length(headers, MAX_BYTES)
        data = body.read(length)
        if len(data) != length:
            raise ReviewError("the body is shorter than its Content-Length")
        slide = self.tiles(name).slide
        return _json(self.reviews.save(model, name, data, slide.dimensions, slide.mpp))

    # -- tiles -----------------------------------------------------------------------------

    def tiles(self, name: str) -> SlideTiles:
        """The slide's tile source, opened on first use (the run names it; its file exists)."""
        found = self._slides.get(name)
        if found is None:
            entry = self.run.slide(name)
            if entry.path is None:
                raise NotFound(f"slide file of {name!r} not found (moved? the viewer's --slides DIR finds it by name)")
            found = self._slides.setdefault(name, SlideTiles(name, entry.path, self.cache))
        return found

    def slide_dzi(self, file: str) -> Response:
        return Response(HTTPStatus.OK, self.tiles(_stem(file, ".dzi")).dzi().encode(), "application/xml")

    def slide_tile(self, folder: str, level: str, file: str) -> Response:
        col, row = _tile(file, "jpeg")
        data = self.tiles(_stem(folder, "_files")).tile(_int(level), col, row)
        return Response(HTTPStatus.OK, data, "image/jpeg", {"Cache-Control": TILE_CACHE})

    def heat_dzi(self, model: str, layer: str, file: str) -> Response:
        name = _stem(file, ".dzi")
        self.heat.layer(model, layer, name)
        return Response(HTTPStatus.OK, self.tiles(name).geometry.dzi("png").encode(), "application/xml")

    def heat_tile(self, model: str, layer: str, folder: str, level: str, file: str) -> Response:
        name = _stem(folder, "_files")
        col, row = _tile(file, "png")
        geometry: DziGeometry = self.tiles(name).geometry
        data = self.heat.tile(model, layer, name, geometry, _int(level), col, row)
        return Response(HTTPStatus.OK, data, "image/png", {"Cache-Control": TILE_CACHE})

    def thumbnail(self, file: str) -> Response:
        return Response(HTTPStatus.OK, self.tiles(_stem(file, ".jpeg")).thumbnail(), "image/jpeg",
                        {"Cache-Control": TILE_CACHE})

    def figure(self, model: str, file: str) -> Response:
        path = self.run.file(model, "figures", _stem(file, ".png"), ".png")
        return Response(HTTPStatus.OK, path.read_bytes(), "image/png")


def _stem(file: str, suffix: str) -> str:
    if not file.endswith(suffix) or len(file) == len(suffix):
        raise NotFound(f"{file!r} does not end with {suffix}")
    return file[: -len(suffix)]


def _int(text: str) -> int:
    if not NUMBER.match(text):
        raise NotFound(f"{text!r} is not a level")
    return int(text)


def _tile(file: str, fmt: str) -> tuple[int, int]:
    found = _TILE.match(file)
    if not found or found.group(3) != fmt:
        raise NotFound(f"{file!r} is not a {fmt} tile name")
    return int(found.group(1)), int(found.group(2))


def _html(text: str) -> Response:
    return Response(HTTPStatus.OK, text.encode(), "text/html; charset=utf-8", {"Cache-Control": "no-cache"})


def _json(data: Any) -> Response:
    return Response(HTTPStatus.OK, json.dumps(data, allow_nan=False, default=_plain).encode(),
                    "application/json", {"Cache-Control": "no-cache"})


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and paths."""
    return value.item() if hasattr(value, "item") else str(value)


class Handler(BaseHTTPRequestHandler):
    """GET, HEAD and POST through the server's :class:`ViewerApp`; keep-alive (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"
    server_version = "vistumor-viewer"
    sys_version = ""
    # headers and body leave in two writes: with Nagle's algorithm on, the body waits for the
    # client's delayed ACK (~40 ms a tile on a keep-alive connection)
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def do_POST(self) -> None:  # noqa: N802
        self._send(self.server.app.post(self.path, self.headers, self.rfile), send_body=True)  # type: ignore[attr-defined]

    def _answer(self, send_body: bool) -> None:
        self._send(self.server.app.handle(self.path, self.headers), send_body)  # type: ignore[attr-defined]

    def _send(self, response: Response, send_body: bool) -> None:
        self.send_response(response.status)
        for key, value in {**SECURITY_HEADERS, **response.headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if send_body:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the standard library's name)
        log.debug("%s %s", self.address_string(), format % args)


class ViewerServer(PooledHTTPServer):
    """The viewer on ``host:port``: ``workers`` threads answer, a connection idle for
    ``timeout`` seconds is closed (:mod:`.pool`)."""

    # many tiles are asked for at once: a deeper backlog than socketserver's 5
    request_queue_size = 64

    def __init__(self, app: ViewerApp, host: str = "127.0.0.1", port: int = 0, workers: int = WORKERS,
                 timeout: float = TIMEOUT):
        self.app = app
        app.loopback_only = host in LOOPBACK
        super().__init__((host, port), Handler, workers, timeout)
        app.hosts = loopback_hosts(self.server_address[1]) if app.loopback_only else None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

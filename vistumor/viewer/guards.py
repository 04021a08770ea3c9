"""Request guards of the viewer's server: the ``Host`` every request must name while the
server is bound to loopback (no DNS rebinding), the origin and size of the one write."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from vistumor.viewer.review import ReviewError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Refused(PermissionError):
    """A write from another origin (HTTP 403)."""


class Misdirected(PermissionError):
    """A request naming another host (HTTP 421): DNS rebinding, or a proxy's mistake."""


def loopback_hosts(port: int) -> frozenset[str]:
    """The ``Host`` headers of a server on loopback ``port`` (lower case)."""
    names = ("127.0.0.1", "localhost", "[::1]")
    return frozenset({f"{name}:{port}" for name in names} | (set(names) if port == 80 else set()))


def content_length(headers: Any, limit: int) -> int:
    """The request's ``Content-Length``, at most ``limit`` (so the body can be read whole)."""
    if headers.get("Transfer-Encoding"):
        raise ReviewError("chunked bodies are not accepted; send a Content-Length")
    text = (headers.get("Content-Length") or "").strip()
    if not (text.isascii() and text.isdigit() and len(text) < 19):
        raise ReviewError("a Content-Length is required" if not text else f"bad Content-Length {text[:20]!r}")
    length = int(text)
    if length > limit:
        raise ReviewError(f"the review is {length} bytes; the limit is {limit}")
    return length


def same_origin(headers: Any, loopback_only: bool) -> None:
    """:class:`Refused` unless the request comes from a page of this server (``Origin`` equal
    to ``Host`` when sent) reached by a loopback name (when serving on loopback)."""
    host = headers.get("Host") or ""
    origin = headers.get("Origin")
    if origin is not None and origin != f"http://{host}":
        raise Refused(f"a review is saved from this server's own page, not from {origin[:80]!r}")
    try:
        hostname = urlsplit(f"http://{host}").hostname
    except ValueError:
        hostname = None
    if loopback_only and hostname not in LOOPBACK:
        raise Refused(f"host {host[:80]!r} is not this machine's loopback address")

"""The explorer's local web server: one static page and a JSON API over an
:class:`~cxr_vlp.explore.session.ExploreSession`, on the standard library's ``ThreadingHTTPServer``.

Routes (all answers ``application/json`` unless said otherwise):

=========================================  ===========================================================
``GET /``                                  the page (``static/index.html``); ``GET /static/<file>`` its assets
``GET /api/info``                          model, split, labels, thresholds, what the head offers
``GET /api/studies?offset=&limit=&q=``     split studies for the picker
``GET /api/image/<i>.png?size=``           study ``i``'s image (PNG, longer side ≤ ``size``)
``GET /api/upload/<id>.png?size=``         an uploaded image (PNG)
``POST /api/upload``                       body: the PNG / JPEG bytes → ``{"upload": id, "width", "height"}``
``POST /api/query/image``                  ``{"index": i | "upload": id, "k", "label"}``
``POST /api/query/text``                   ``{"text", "k"}``
``POST /api/explain``                      ``{"index": i | "upload": id, "target": label or prompt}``
=========================================  ===========================================================

Every answer carries a Content-Security-Policy that lets the page load from this server only (images also as
``data:`` URIs): no CDN, font or telemetry request can leave the machine. Bad input answers 400 with
``{"error": message}``; a method the model lacks 501.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlparse

from cxr_vlp.explore.session import MAX_UPLOAD_BYTES, ExploreSession, QueryError, png_bytes
from cxr_vlp.inference.base import UnsupportedByModel

log = logging.getLogger(__name__)

__all__ = ["CSP", "ExplorerServer", "STATIC_FILES", "make_server", "static_text"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
MAX_JSON_BYTES = 1 << 20
MAX_IMAGE_SIDE = 1024


def static_text(name: str) -> str:
    """One of the page's assets (package data under ``cxr_vlp/explore/static/``)."""
    if name not in STATIC_FILES:
        raise KeyError(name)
    return resources.files("cxr_vlp.explore").joinpath("static", name).read_text(encoding="utf-8")


def _int_param(params: dict[str, list[str]], key: str, default: int) -> int:
    raw = params.get(key, [str(default)])[0]
    try:
        return int(raw)
    except ValueError:
        raise QueryError(f"{key}={raw!r}: expected an integer") from None


class _Handler(BaseHTTPRequestHandler):
    server: ExplorerServer
    protocol_version = "HTTP/1.1"
    server_version = "cxr_vlp-explorer"

    def setup(self) -> None:
        super().setup()
        # one small JSON answer per request: send it at once (Nagle + delayed ACK would add ~40 ms)
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------ responses
    def _send(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "max-age=300" if cache else "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: Any, status: int = 200) -> None:
        self._send(status, json.dumps(payload, allow_nan=False).encode("utf-8"), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def _body(self, limit: int) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise QueryError("a request body with Content-Length is required")
        try:
            n = int(length)
        except ValueError:
            raise QueryError(f"Content-Length={length!r}: expected an integer") from None
        if n < 0 or n > limit:
            raise QueryError(f"request body of {n} bytes: at most {limit} accepted")
        return self.rfile.read(n)

    def _json_body(self) -> dict[str, Any]:
        raw = self._body(MAX_JSON_BYTES)
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as err:
            raise QueryError(f"request body: not valid JSON ({err})") from None
        if not isinstance(body, dict):
            raise QueryError("request body: expected a JSON object")
        return body

    def _dispatch(self, work) -> None:
        try:
            work()
        except QueryError as err:
            self._error(HTTPStatus.BAD_REQUEST, str(err))
        except UnsupportedByModel as err:
            self._error(HTTPStatus.NOT_IMPLEMENTED, str(err))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as err:  # noqa: BLE001 - the page shows the message, the log has the trace
            log.exception("explorer request %s %s failed", self.command, self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(err).__name__}: {err}")

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._dispatch(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(self._post)

    def _get(self) -> None:
        url = urlparse(self.path)
        path, params = url.path, parse_qs(url.query)
        session = self.server.session
        if path in ("/", "/index.html"):
            return self._send(200, static_text("index.html").encode(), STATIC_FILES["index.html"])
        if path.startswith("/static/"):
            name = path[len("/static/") :]
            if name not in STATIC_FILES:
                return self._error(HTTPStatus.NOT_FOUND, f"{path}: no such file")
            return self._send(200, static_text(name).encode(), STATIC_FILES[name], cache=True)
        if path == "/api/info":
            return self._json(session.info())
        if path == "/api/studies":
            return self._json(
                session.studies(
                    _int_param(params, "offset", 0), _int_param(params, "limit", 50), params.get("q", [""])[0]
                )
            )
        size = max(16, min(MAX_IMAGE_SIDE, _int_param(params, "size", 256)))
        if path.startswith("/api/image/") and path.endswith(".png"):
            raw = path[len("/api/image/") : -len(".png")]
            if not raw.isdigit():
                raise QueryError(f"{path}: expected /api/image/<study index>.png")
            return self._send(200, png_bytes(session.split_image(int(raw)), size), "image/png", cache=True)
        if path.startswith("/api/upload/") and path.endswith(".png"):
            key = path[len("/api/upload/") : -len(".png")]
            return self._send(200, png_bytes(session.upload_image(key), size), "image/png", cache=True)
        if path == "/favicon.ico":
            return self._send(204, b"", "image/x-icon", cache=True)
        return self._error(HTTPStatus.NOT_FOUND, f"{path}: no such page")

    def _post(self) -> None:
        path = urlparse(self.path).path
        session = self.server.session
        if path == "/api/upload":
            key = session.upload(self._body(MAX_UPLOAD_BYTES), self.headers.get("X-File-Name", "upload"))
            image = session.upload_image(key)
            return self._json({"upload": key, "height": int(image.shape[0]), "width": int(image.shape[1])})
        body = self._json_body()
        if path == "/api/query/image":
            return self._json(
                session.image_query(
                    index=body.get("index"), upload=body.get("upload"), k=body.get("k"), label=body.get("label")
                )
            )
        if path == "/api/query/text":
            return self._json(session.text_query(body.get("text"), k=body.get("k")))
        if path == "/api/explain":
            return self._json(
                session.explain(index=body.get("index"), upload=body.get("upload"), target=body.get("target"))
            )
        return self._error(HTTPStatus.NOT_FOUND, f"{path}: no such endpoint")


class ExplorerServer(ThreadingHTTPServer):
    """A threading HTTP server bound to ``(host, port)`` (port 0: any free port, see :attr:`url`)."""

    daemon_threads = True

    def __init__(self, session: ExploreSession, host: str = "127.0.0.1", port: int = 0) -> None:
        self.session = session
        super().__init__((host, int(port)), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"

    def start(self) -> threading.Thread:
        """Serve on a daemon thread (tests, benchmarks); :meth:`shutdown` stops it."""
        thread = threading.Thread(target=self.serve_forever, name="cxr_vlp-explorer", daemon=True)
        thread.start()
        return thread


def make_server(session: ExploreSession, host: str = "127.0.0.1", port: int = 0) -> ExplorerServer:
    return ExplorerServer(session, host, port)

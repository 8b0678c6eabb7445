"""The web view: a small HTTP server, in a thread, serving the page and the JSON it polls.

Routes: ``/`` is the self-contained page ``static/index.html``, with inline CSS and JavaScript and plots drawn on
``<canvas>``, so it needs no network beyond this server. ``/api/state`` is the latest snapshot with the plotted
series, the same numbers the terminal shows. The standard library's server is enough for a handful of viewers.
"""

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Optional

from cellmind.errors import CellMindError
from cellmind.i18n import _

logger = logging.getLogger(__name__)


class MonitorState:
    """The latest state the page shows, shared between the refresh loop and the server's threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._body = json.dumps({"snapshot": None, "series": None}).encode()

    def update(self, snapshot: Optional[dict[str, Any]], series: dict[str, Any]) -> None:
        """Replace the state; ``snapshot`` is None before the first read, when only the history is known."""
        body = json.dumps({"snapshot": snapshot, "series": series}, ensure_ascii=False, allow_nan=False).encode()
        with self._lock:
            self._body = body

    def body(self) -> bytes:
        with self._lock:
            return self._body


def parse_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8080`` for IPv6) into host and port; raise ValueError naming the value."""
    host, separator, port = address.rpartition(":")
    if not separator or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(
            _("invalid address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:8080").format(address=address)
        )
    return host.strip("[]") or "127.0.0.1", int(port)


def page() -> bytes:
    return resources.files("cellmind.monitor").joinpath("static/index.html").read_bytes()


class _Handler(BaseHTTPRequestHandler):
    state: MonitorState  # set on the subclass that WebServer builds
    page: bytes

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(self.page, "text/html; charset=utf-8")
        elif path == "/api/state":
            self._send(self.state.body(), "application/json")
        else:
            self._send(b"not found\n", "text/plain; charset=utf-8", HTTPStatus.NOT_FOUND)

    def _send(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        logger.debug(f"{self.address_string()} {format % args}")


class WebServer:
    """Serve ``state`` on ``host:port`` from a daemon thread until :meth:`shutdown`."""

    def __init__(self, state: MonitorState, host: str, port: int):
        handler = type("Handler", (_Handler,), {"state": state, "page": page()})
        try:
            self.server = ThreadingHTTPServer((host, port), handler)
        except OSError as error:
            raise CellMindError(
                _("cannot serve the monitor page on {host}:{port}: {error}. Choose another port with --web.").format(
                    host=host, port=port, error=error.strerror or error
                )
            ) from error
        self.server.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/" if ":" not in host else f"http://[{host}]:{port}/"

    def start(self) -> "WebServer":
        self._thread = threading.Thread(target=self.server.serve_forever, name="MonitorWebServer", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""The local HTTP servers of the download tests: served from a thread for a block, with the proxy variables
cleared so that the clients talk to 127.0.0.1 directly."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator

import pytest

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def clear_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Removes the proxy variables for the test (only 127.0.0.1 is talked to, directly)."""
    for var in PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)


def local_server(handler: type[http.server.BaseHTTPRequestHandler]) -> tuple[http.server.HTTPServer, str]:
    """A threaded HTTP server of `handler` on a free port of 127.0.0.1 (not started), and its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


@contextlib.contextmanager
def serving(httpd: http.server.HTTPServer) -> Iterator[None]:
    """Serves `httpd` from a daemon thread during the block; shuts it down and closes it after."""
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        httpd.shutdown()
        httpd.server_close()

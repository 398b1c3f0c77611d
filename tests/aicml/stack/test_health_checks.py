"""Health checks tell a slow server from a stopped one: refused is down, slow gets a longer look."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aicml.stack.processes import healthy
from tests.services import free_port


class _Slow(BaseHTTPRequestHandler):
    delay = 1.5

    def do_GET(self) -> None:
        time.sleep(self.delay)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def slow_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()
        server.server_close()


def test_a_slow_server_is_up(slow_server: str) -> None:
    assert healthy(slow_server, timeout=0.5), "a server answering in 1.5 s is slow, not down"


def test_a_stopped_server_is_down() -> None:
    assert not healthy(f"http://127.0.0.1:{free_port()}/health", timeout=0.5)

"""The local pool's flow-run command waits for a restarting Prefect API instead of crashing at its first request."""

from __future__ import annotations

import http.server
import threading
import time

from aicml.stack.engine import wait_for_api
from aicml.stack.pools import process_base_job_template
from tests.services import free_port


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_wait_for_api_rides_out_a_server_that_comes_back() -> None:
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Health)
    starter = threading.Timer(2.0, server.serve_forever)  # the API is down for 2 s, then answers
    started = time.monotonic()
    starter.start()
    try:
        assert wait_for_api(f"http://127.0.0.1:{port}/api", timeout_s=30)
        assert 1.5 < time.monotonic() - started < 15
    finally:
        server.shutdown()
        starter.join()
        server.server_close()


def test_wait_for_api_gives_up_after_its_bound() -> None:
    started = time.monotonic()
    assert not wait_for_api(f"http://127.0.0.1:{free_port()}/api", timeout_s=2)
    assert time.monotonic() - started < 6


def test_the_local_pool_starts_flow_runs_through_the_wrapper() -> None:
    command = process_base_job_template()["variables"]["properties"]["command"]["default"]
    assert command.endswith("-m aicml.stack.engine")

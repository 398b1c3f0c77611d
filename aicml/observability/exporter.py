"""Serve `/metrics` for every process of the local stack (prometheus_client multiprocess mode).

Flow runs, workers and servers started by the stack write their samples under
``PROMETHEUS_MULTIPROC_DIR``; this process merges and serves them for Prometheus to scrape.
"""

from __future__ import annotations

import argparse
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        from aicml.observability.metrics import exposition

        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics is served here")
            return
        body = exposition()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet: Prometheus scrapes often
        return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9464)
    parser.add_argument("--dir", required=True, help="PROMETHEUS_MULTIPROC_DIR to merge")
    args = parser.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = args.dir
    ThreadingHTTPServer((args.host, args.port), _Handler).serve_forever()


if __name__ == "__main__":
    main()

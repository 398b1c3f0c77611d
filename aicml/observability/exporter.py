"""Serve `/metrics` for every process of the local stack (prometheus_client multiprocess mode).

Flow runs, workers and servers started by the stack write their samples under
``PROMETHEUS_MULTIPROC_DIR``; this process merges and serves them for Prometheus to scrape. With
``--page``, ``/dashboards`` serves the local metrics page (`aicml up --with-prometheus` writes it).
"""

from __future__ import annotations

import argparse
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST


class _Handler(BaseHTTPRequestHandler):
    page: Path | None = None  # the local metrics page, read on each request (`up` may rewrite it)

    def do_GET(self) -> None:
        from aicml.observability.metrics import exposition

        path = self.path.split("?")[0]
        if path in ("/dashboards", "/dashboards/") and self.page is not None:
            try:
                body, content_type = self.page.read_bytes(), "text/html; charset=utf-8"
            except FileNotFoundError:
                self.send_error(404, "no metrics page yet: start the stack with `aicml up --with-prometheus`")
                return
        elif path in ("/metrics", "/"):
            body, content_type = exposition(), CONTENT_TYPE_LATEST
        else:
            self.send_error(404, "only /metrics and /dashboards are served here")
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type)
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
    parser.add_argument(
        "--page", default=None, help="HTML file served at /dashboards (the local metrics page)"
    )
    args = parser.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = args.dir
    _Handler.page = Path(args.page) if args.page else None
    ThreadingHTTPServer((args.host, args.port), _Handler).serve_forever()


if __name__ == "__main__":
    main()

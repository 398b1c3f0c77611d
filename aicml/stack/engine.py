"""The flow-run command of the local process pool: wait for the Prefect API, then run Prefect's engine.

`python -m prefect.engine` reads its flow run from the API first thing, and Prefect's client does not retry a
refused connection before it has reached the server once: a flow run that starts while the Prefect server
restarts crashes before running anything. This waits (bounded, with backoff) for ``/health`` to answer,
then hands over to the engine unchanged; after that first contact Prefect's own retries ride restarts out.
Before handing over it installs the flow-run process's patches (``aicml.compat.install()``: heartbeats that
stop the moment the flow ends), explicitly, here where the process starts.

``AIC_ENGINE_WAIT_S`` bounds the wait (default 90 s); past it the engine starts anyway and reports the
outage itself.
"""

from __future__ import annotations

import os
import runpy
import sys
import time

import httpx

from aicml import compat


def wait_for_api(api_url: str, timeout_s: float, delay_s: float = 0.5, max_delay_s: float = 8.0) -> bool:
    """True once ``<api_url>/health`` answers 200; False after ``timeout_s`` (backoff ``delay_s`` doubling to
    ``max_delay_s``; equal, a fixed interval). One client for every look."""
    deadline, delay = time.monotonic() + timeout_s, delay_s
    with httpx.Client(timeout=5.0) as client:
        while True:
            try:
                if client.get(f"{api_url.rstrip('/')}/health").status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)


def main() -> None:
    api_url = os.environ.get("PREFECT_API_URL")
    if api_url:
        wait_for_api(api_url, float(os.environ.get("AIC_ENGINE_WAIT_S", "90")))
    compat.install()
    sys.argv = ["prefect.engine", *sys.argv[1:]]
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

"""The local stack's process worker: ``prefect worker start``, spawned together with the servers.

`aicml up` spawns the Prefect server, the MLflow server, the metrics exporter and this worker at once. The
worker's own start (importing Prefect's CLI and its process worker, about 3 s of CPU) then overlaps the
servers' instead of following the Prefect server's health. Prefect's client does not retry a refused
connection before it has reached the server once, so the worker waits here for ``/health`` (every 0.1 s,
at most ``AIC_WORKER_WAIT_S``, default 300 s), makes sure its pool exists with the stack's job template
(``aicml.stack.pools.ensure_process_pool``, as `aicml up` does: whichever of the two comes first creates it,
identically), and hands over to Prefect's CLI unchanged:

    python -m aicml.stack.worker --concurrency 4 worker start --pool local --type process --name aic-local
"""

from __future__ import annotations

import argparse
import os
import sys

from aicml.stack.engine import wait_for_api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=None, help="the pool's concurrency limit")
    ours, prefect_args = parser.parse_known_args()
    pool = prefect_args[prefect_args.index("--pool") + 1]
    # Imported before the server answers: this is the start-up that overlaps the servers'.
    import prefect.workers.process  # noqa: F401
    from prefect.cli import app

    from aicml.stack.pools import ensure_process_pool

    api_url = os.environ.get("PREFECT_API_URL")
    wait_s = float(os.environ.get("AIC_WORKER_WAIT_S", "300"))
    if api_url and wait_for_api(api_url, wait_s, delay_s=0.1, max_delay_s=0.1):
        ensure_process_pool(api_url, pool, ours.concurrency)
    sys.argv = ["prefect", *prefect_args]
    app()


if __name__ == "__main__":
    main()

"""The platform's Prefect Kubernetes worker: prefect-kubernetes' own, minus one leak.

Prefect's workers copy their own settings into every flow-run Job as plain env values, the API's auth
string among them, so anyone who can read Jobs in the namespace would read the credential. Here the
copy leaves out the API credentials; the pool's base job template gives each flow-run pod the
`prefect-api-auth` Secret through ``secretKeyRef`` instead.

Run as ``python -m aicml.kube.worker --pool k8s-cpu`` (the worker Deployments in k8s/base/prefect.yaml).
"""

from __future__ import annotations

import argparse
import asyncio

from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

# Prefect settings that are credentials: never copied into a Job manifest as values.
CREDENTIAL_SETTINGS = frozenset({"PREFECT_API_AUTH_STRING", "PREFECT_API_KEY"})


class JobConfigurationWithoutCredentials(KubernetesWorkerJobConfiguration):
    @classmethod
    def _base_environment(cls) -> dict[str, str]:
        # `_base_environment` is BaseJobConfiguration's hook for "settings every Job inherits";
        # tests/aicml/kube/test_worker.py fails if Prefect renames or stops calling it.
        inherited = super()._base_environment()
        return {name: value for name, value in inherited.items() if name not in CREDENTIAL_SETTINGS}


class PlatformKubernetesWorker(KubernetesWorker):
    job_configuration = JobConfigurationWithoutCredentials


async def _serve(pool: str, name: str | None, healthcheck: bool) -> None:
    async with PlatformKubernetesWorker(work_pool_name=pool, name=name) as worker:
        await worker.start(with_healthcheck=healthcheck)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aicml.kube.worker", description=__doc__)
    parser.add_argument("--pool", required=True, help="Work pool to poll (k8s-cpu or k8s-gpu).")
    parser.add_argument("--name", default=None, help="Worker name (default: Prefect's).")
    parser.add_argument("--with-healthcheck", action="store_true", help="Serve /health on port 8080.")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.pool, args.name, args.with_healthcheck))


if __name__ == "__main__":
    main()

"""Register the deployments of `prefect.yaml` and run them through the Prefect API (never in process)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from aicml.errors import ConfigurationError, StackError
from aicml.stack.local import LocalStack, _bin


def deployment_names(project_dir: Path, pool: str | None = None) -> list[str]:
    """``flow-name/deployment`` for each deployment in prefect.yaml (optionally only on ``pool``)."""
    from aicml.stack.prefect_yaml import flow_name_of

    config = yaml.safe_load((project_dir / "prefect.yaml").read_text())
    names = []
    for item in config.get("deployments", []):
        if pool is None or item.get("work_pool", {}).get("name") == pool:
            names.append(f"{flow_name_of(project_dir, item['entrypoint'])}/{item['name']}")
    return names


def register_deployments(stack: LocalStack, project_dir: Path, pool: str | None = None) -> list[str]:
    """Run `prefect deploy` for the deployments of prefect.yaml on ``pool`` (all when None)."""
    names = deployment_names(project_dir, pool)
    if not names:
        raise ConfigurationError(f"prefect.yaml has no deployment on pool {pool!r}.")
    config = yaml.safe_load((project_dir / "prefect.yaml").read_text())
    command = [_bin("prefect"), "--no-prompt", "deploy", "--prefect-file", str(project_dir / "prefect.yaml")]
    for item in config.get("deployments", []):
        if pool is None or item.get("work_pool", {}).get("name") == pool:
            # `prefect deploy --name FLOW/NAME` matches FLOW against the entrypoint's function name (dashes
            # for underscores), not the @flow name: `tune/local` would match nothing, silently.
            function = item["entrypoint"].rsplit(":", 1)[-1].replace("_", "-")
            command += ["--name", f"{function}/{item['name']}"]
    env = {**os.environ, **stack.client_env(), "AIC_PROJECT_DIR": str(project_dir.resolve())}
    done = subprocess.run(command, cwd=project_dir, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    # `prefect deploy` exits 0 even when it skips a deployment it cannot match; never accept that silently.
    if done.returncode != 0 or "will not be deployed" in output:
        raise StackError(f"`prefect deploy` failed ({done.returncode}):\n{output[-4000:]}")
    return names


def submit_deployment_run(
    name: str, parameters: dict[str, Any] | None = None, tags: list[str] | None = None
) -> Any:
    """Create a run of deployment ``name`` and return it at once (Scheduled); the worker picks it up.

    ``parameters`` are merged by Prefect onto the deployment's parameters at the top level: send
    ``{"overrides": {...}}`` to change single fields of the preset, never a whole ``params``.
    """
    from prefect.deployments import run_deployment

    return run_deployment(name, parameters=parameters, timeout=0, tags=tags)


def registered_deployments(names: list[str]) -> dict[str, bool]:
    """For each ``flow/deployment`` name, whether the Prefect server (current settings) already has it."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async def read() -> dict[str, bool]:
        found = {}
        async with get_client() as client:
            for name in names:
                try:
                    await client.read_deployment_by_name(name)
                    found[name] = True
                except ObjectNotFound:
                    found[name] = False
        return found

    return asyncio.run(read())

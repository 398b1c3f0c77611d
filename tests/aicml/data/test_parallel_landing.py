"""Dask: the Kubernetes cluster spec renders and validates offline; LocalCluster runs partitions in
parallel worker threads (processes when asked). Landing: a file is announced once, when its size is stable."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aicml.data.cli import app
from aicml.data.landing import LandingWatcher, resource_for
from aicml.data.parallel import (
    ClusterOptions,
    render_kubernetes_spec,
    run_partitions,
    validate_kubernetes_spec,
)


def test_kubernetes_cluster_spec_is_valid_against_the_operator_crd() -> None:
    spec = render_kubernetes_spec(ClusterOptions(kind="kubernetes", workers=6, env={"AIC_HOME": "/data"}))
    assert validate_kubernetes_spec(spec) == []
    assert spec["kind"] == "DaskCluster" and spec["metadata"]["namespace"] == "aic-ai-ml"
    worker = spec["spec"]["worker"]
    assert worker["replicas"] == 6
    container = worker["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "4Gi"}
    assert {"name": "AIC_HOME", "value": "/data"} in container["env"]
    # Workers run aicml's partition code: the platform image, not the public Dask one.
    assert container["image"].startswith("ghcr.io/aic/aic-ml:")
    for role in ("worker", "scheduler"):
        pod = spec["spec"][role]
        # The labels the dask-within-namespace NetworkPolicy selects, and Pod Security `restricted`.
        assert pod["metadata"]["labels"]["aic.io/dask"] == "true"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert all(
            c["securityContext"]["capabilities"] == {"drop": ["ALL"]} for c in pod["spec"]["containers"]
        )


def test_invalid_cluster_specs_are_caught_offline() -> None:
    spec = render_kubernetes_spec(ClusterOptions(kind="kubernetes", image="ghcr.io/dask/dask:latest"))
    spec["spec"]["worker"]["replicas"] = "many"
    problems = validate_kubernetes_spec(spec)
    assert any("replicas" in p for p in problems)
    assert any("not pinned" in p for p in problems)


def test_cluster_spec_command_prints_a_valid_spec() -> None:
    result = CliRunner().invoke(app, ["cluster-spec", "--workers", "3"])
    assert result.exit_code == 0, result.output
    assert '"replicas": 3' in result.output


def _pid(_: int) -> int:
    return os.getpid()


_BARRIER = threading.Barrier(2)


def _meet(_: int) -> tuple[int, int]:
    # Returns only once two partitions are running at the same time (else BrokenBarrierError).
    _BARRIER.wait(timeout=30)
    return os.getpid(), threading.get_ident()


def test_local_cluster_runs_partitions_in_parallel_worker_threads_by_default() -> None:
    _BARRIER.reset()
    seen = run_partitions(_meet, [0, 1], ClusterOptions(kind="local", workers=2))
    assert {pid for pid, _ in seen} == {os.getpid()}  # in-process Dask workers
    assert len({ident for _, ident in seen}) == 2 and threading.get_ident() not in {i for _, i in seen}


def test_local_cluster_runs_partitions_in_worker_processes_when_asked() -> None:
    pids = run_partitions(_pid, list(range(4)), ClusterOptions(kind="local", workers=2, processes=True))
    assert len(pids) == 4 and os.getpid() not in pids


def test_landing_watcher_announces_a_file_once_it_is_stable(tmp_path: Path) -> None:
    landed: list[Path] = []
    watcher = LandingWatcher(tmp_path, landed.append)
    (tmp_path / "a.csv").write_text("id\n1\n")
    (tmp_path / ".partial.csv").write_text("id\n")
    (tmp_path / "notes.bin").write_text("x")
    assert watcher.poll() == []  # first sight: maybe still being written
    assert watcher.poll() == [tmp_path / "a.csv"]
    assert watcher.poll() == []  # announced once
    with (tmp_path / "a.csv").open("a") as handle:
        handle.write("2\n")
    watcher.poll()
    assert watcher.poll() == [tmp_path / "a.csv"]  # changed, then stable again
    assert landed == [tmp_path / "a.csv", tmp_path / "a.csv"]
    assert resource_for(tmp_path / "a.csv")["prefect.resource.id"].startswith("aicml.landing.")


@pytest.mark.parametrize("kind", ["bogus"])
def test_unknown_cluster_kind_is_refused(kind: str) -> None:
    from aicml.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        run_partitions(_pid, [1, 2], ClusterOptions(kind=kind))  # type: ignore[arg-type]


def test_partitions_run_with_the_old_heap_frozen_and_hand_it_back() -> None:
    assert gc.get_freeze_count() == 0
    seen = run_partitions(lambda _: gc.get_freeze_count(), [1, 2], ClusterOptions(kind="sync"))
    assert all(count > 1000 for count in seen)  # the imported modules' objects, out of the collector's way
    assert gc.get_freeze_count() == 0  # and back in it afterwards

    gc.freeze()  # an application that froze its own heap keeps it frozen
    try:
        run_partitions(lambda _: None, [1, 2], ClusterOptions(kind="sync"))
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()

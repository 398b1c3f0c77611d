"""The rehearsal's pod -> podman translation, without podman: env like the kubelet, users, volumes, probes'
ports, Service aliases and the Prometheus scrape configuration from the monitors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from aicml.kube.errors import KubeError
from aicml.kube.rehearsal.images import debian_mirror, host_pip_setup
from aicml.kube.rehearsal.pods import (
    EnvError,
    PodContext,
    _port_number,
    _write_files,
    container_env,
    expand,
    plan_container,
    security_args,
    service_link_env,
)
from aicml.kube.rehearsal.run import Row, RunningPod, aliases_for, print_table, rendered_data, scrape_config

SERVICE = {"kind": "Service", "metadata": {"name": "mlflow-service", "labels": {"app": "mlflow"}},
           "spec": {"selector": {"app.kubernetes.io/name": "mlflow"},
                    "ports": [{"name": "http", "port": 5000, "targetPort": "http"}]}}  # fmt: skip


def context(tmp_path: Path, **overrides: Any) -> PodContext:
    values: dict[str, Any] = {
        "network": "net",
        "run_id": "r1",
        "state_dir": tmp_path,
        "configmaps": {"aic-ml-config": {"PGHOST": "pg.example", "PGPORT": "5432", "bad key": "x"}},
        "secrets": {"mlflow-db": {"username": "mlflow", "password": "s3cret", "database": "mlflow_db"}},
        "services": [],
        "images": {"ghcr.io/aic/aic-ml": "localhost/aic-ml:rehearsal"},
    }
    values.update(overrides)
    return PodContext(**values)


def test_expand_follows_the_kubelet() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("x$(A)-$(B)", env) == "x1-two"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A) costs $$", env) == "$(A) costs $"


def test_env_order_sources_and_secret_names(tmp_path: Path) -> None:
    container = {
        "name": "mlflow",
        "envFrom": [{"configMapRef": {"name": "aic-ml-config"}}],
        "env": [
            {"name": "USER", "valueFrom": {"secretKeyRef": {"name": "mlflow-db", "key": "username"}}},
            {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "mlflow-db", "key": "password"}}},
            {"name": "URI", "value": "postgresql://$(USER)@$(PGHOST):$(PGPORT)/db"},
            {"name": "PGHOST", "value": "override"},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
    }
    env, secret_names = container_env(container, {}, "mlflow-service", context(tmp_path))
    assert env["URI"] == "postgresql://mlflow@pg.example:5432/db"
    assert env["PGHOST"] == "override"
    assert env["NS"] == "aic-ai-ml" and env["POD"] == "mlflow-service"
    assert "bad key" not in env
    assert secret_names == {"USER", "PGPASSWORD"}


def test_a_missing_secret_is_the_kubelets_config_error(tmp_path: Path) -> None:
    container = {
        "name": "c",
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}],
    }
    with pytest.raises(EnvError, match="Secret 'nope' not found"):
        container_env(container, {}, "p", context(tmp_path))
    optional = {"name": "c", "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k",
                                                                                 "optional": True}}}]}  # fmt: skip
    assert "T" not in container_env(optional, {}, "p", context(tmp_path))[0]


def test_service_links_unless_disabled(tmp_path: Path) -> None:
    links = service_link_env([SERVICE])
    assert links["MLFLOW_SERVICE_SERVICE_PORT"] == "5000"
    assert links["MLFLOW_SERVICE_PORT"] == "tcp://mlflow-service.aic-ai-ml.svc.cluster.local:5000"
    assert links["MLFLOW_SERVICE_SERVICE_PORT_HTTP"] == "5000"
    ctx = context(tmp_path, services=[SERVICE])
    assert "MLFLOW_SERVICE_PORT" in container_env({"name": "c"}, {}, "p", ctx)[0]
    assert (
        "MLFLOW_SERVICE_PORT" not in container_env({"name": "c"}, {"enableServiceLinks": False}, "p", ctx)[0]
    )


def test_security_context_to_podman_options() -> None:
    pod = {"securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001, "runAsNonRoot": True,
                               "supplementalGroups": [20]}}  # fmt: skip
    container = {"securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                     "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}  # fmt: skip
    args = security_args(container, pod)
    joined = " ".join(args)
    assert "--user 10001:10001" in joined
    assert "--group-add 20" in joined and "--group-add 10001" in joined
    assert "--read-only --read-only-tmpfs=false" in joined
    assert "--cap-drop all" in joined and "--cap-add net_bind_service" in joined
    assert "--security-opt no-new-privileges" in joined
    with pytest.raises(KubeError, match="runAsNonRoot"):
        security_args({}, {"securityContext": {"runAsUser": 0, "runAsNonRoot": True}})


def test_plan_keeps_command_args_image_and_secrets_off_the_command_line(tmp_path: Path) -> None:
    container = {
        "name": "mlflow",
        "image": "ghcr.io/aic/aic-ml:0.1.0",
        "command": ["mlflow", "server"],
        "args": ["--backend-store-uri=postgresql://$(DB_USER)@$(PGHOST)/x"],
        "envFrom": [{"configMapRef": {"name": "aic-ml-config"}}],
        "env": [
            {"name": "DB_USER", "valueFrom": {"secretKeyRef": {"name": "mlflow-db", "key": "username"}}},
            {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "mlflow-db", "key": "password"}}},
        ],
        "volumeMounts": [
            {"name": "data", "mountPath": "/backups", "subPath": "pg"},
            {"name": "cfg", "mountPath": "/etc/mlflow", "readOnly": True},
        ],
    }
    plan = plan_container(
        "mlflow-service", {}, container, context(tmp_path), {"data": "/vol/d", "cfg": "/cfg"}
    )
    args = plan.run_args
    image_at = args.index("localhost/aic-ml:rehearsal")
    assert args[image_at + 1 :] == ["server", "--backend-store-uri=postgresql://mlflow@pg.example/x"]
    assert args[args.index("--entrypoint") + 1] == '["mlflow"]'
    assert "/vol/d/pg:/backups" in args and "/cfg:/etc/mlflow:ro" in args
    assert "s3cret" not in " ".join(args)
    assert plan.env_secret == {"DB_USER": "mlflow", "PGPASSWORD": "s3cret"}
    assert "PGHOST=pg.example" in args
    with pytest.raises(KubeError, match="mounts volume 'data'"):
        plan_container("p", {}, container, context(tmp_path), {"cfg": "/cfg"})


def test_args_alone_keep_the_image_entrypoint(tmp_path: Path) -> None:
    plan = plan_container(
        "p", {}, {"name": "c", "image": "busybox:1", "args": ["a", "b"]}, context(tmp_path), {}
    )
    assert "--entrypoint" not in plan.run_args and plan.run_args[-3:] == ["busybox:1", "a", "b"]


def test_helpers() -> None:
    assert _port_number("http", {"ports": [{"name": "http", "containerPort": 5000}]}) == 5000
    assert _port_number(8080, {}) == 8080
    with pytest.raises(KubeError):
        _port_number("nope", {"name": "c"})


def test_image_overrides(tmp_path: Path) -> None:
    ctx = context(tmp_path, images={"ghcr.io/aic/aic-ml": "local:1", "postgres": "ext:1"})
    assert ctx.image_for("ghcr.io/aic/aic-ml:0.1.0") == "local:1"
    assert ctx.image_for("postgres:16.4-bookworm") == "ext:1"
    assert ctx.image_for("other/thing:2") == "other/thing:2"


def test_aliases_and_scrape_config_from_monitors() -> None:
    labels = {"app.kubernetes.io/name": "mlflow"}
    assert aliases_for(labels, [SERVICE])[-1] == "mlflow-service.aic-ai-ml.svc.cluster.local"
    assert aliases_for({"app.kubernetes.io/name": "other"}, [SERVICE]) == []
    monitors = [
        {"kind": "ServiceMonitor", "metadata": {"name": "mlflow"},
         "spec": {"selector": {"matchLabels": {"app": "mlflow"}}, "endpoints": [{"port": "http", "path": "/m"}]}},
        {"kind": "PodMonitor", "metadata": {"name": "exporters"},
         "spec": {"selector": {"matchLabels": {"aic.io/metrics": "true"}},
                  "podMetricsEndpoints": [{"port": "metrics"}]}},
    ]  # fmt: skip
    pods = [RunningPod("aicr-mlflow", labels, [{"name": "http", "containerPort": 5000}]),
            RunningPod("aicr-train", {"aic.io/metrics": "true"}, [{"name": "metrics", "containerPort": 9464}])]  # fmt: skip
    jobs = {job["job_name"]: job for job in scrape_config([SERVICE, *monitors], pods)["scrape_configs"]}
    assert jobs["serviceMonitor/aic-ai-ml/mlflow/0"]["static_configs"][0]["targets"] == ["aicr-mlflow:5000"]
    assert jobs["serviceMonitor/aic-ai-ml/mlflow/0"]["metrics_path"] == "/m"
    assert jobs["podMonitor/aic-ai-ml/exporters/0"]["static_configs"][0]["targets"] == ["aicr-train:9464"]


def test_rendered_secrets_are_decoded() -> None:
    objects = [{"kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "dg=="}, "stringData": {"j": "w"}},
               {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}}]  # fmt: skip
    configmaps, secrets = rendered_data(objects)
    assert configmaps == {"c": {"a": "b"}} and secrets == {"s": {"k": "v", "j": "w"}}


def test_debian_mirror_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "a.sources").write_text("Types: deb\nURIs: http://mirror.example/debian-security\n\n"
                                        "Types: deb\nURIs: http://mirror.example/debian/\n")  # fmt: skip
    assert debian_mirror([tmp_path]) == "http://mirror.example/debian"
    one = tmp_path / "sources.list"
    one.write_text("deb [arch=amd64] http://other.example/debian bookworm main\n")
    assert debian_mirror([one]) == "http://other.example/debian"
    assert debian_mirror([tmp_path / "missing"]) == "http://deb.debian.org/debian"


def test_pip_setup_mounts_the_ca_aside_and_the_local_index_roots(tmp_path: Path) -> None:
    index = tmp_path / "pypi" / "simple"
    index.mkdir(parents=True)
    ca = tmp_path / "certs" / "ca.crt"
    ca.parent.mkdir()
    ca.write_text("x")
    lines = [f"global.cert='{ca}'", f"global.extra-index-url='file://{index} https://x.example/simple'",
             f":env:.find-links='{tmp_path}'"]  # fmt: skip
    setup = host_pip_setup(tmp_path / "pip.conf", lines)
    assert "cert = /run/host-ca/ca.crt" in setup.conf
    assert f"find-links = {tmp_path}" in setup.conf
    volumes = [setup.volumes[i + 1] for i in range(0, len(setup.volumes), 2)]
    assert f"{ca.parent}:/run/host-ca:ro" in volumes
    assert f"{tmp_path / 'pypi'}:{tmp_path / 'pypi'}:ro" in volumes


def test_secret_volume_files_follow_default_mode_and_fs_group(tmp_path: Path) -> None:
    """defaultMode 0400 with an fsGroup: the kubelet makes the file group-readable by that group."""
    ctx = context(tmp_path, secrets={"token": {"token": "t0k"}})
    volume = {"name": "token", "secret": {"secretName": "token", "defaultMode": 0o400}}
    gid = os.getgid()
    path = _write_files("serving", "token", volume, ctx, gid) / "token"
    assert path.read_text() == "t0k"
    assert path.stat().st_mode & 0o777 == 0o440 and path.stat().st_gid == gid
    without = _write_files("serving2", "token", volume, ctx) / "token"
    assert without.stat().st_mode & 0o777 == 0o400
    with pytest.raises(KubeError, match="does not exist"):
        _write_files("p", "v", {"name": "v", "secret": {"secretName": "nope"}}, ctx)


def test_rows_fail_on_what_did_not_come_up_or_complete() -> None:
    assert Row("Deployment/x", "skipped").ok
    assert not Row("Deployment/x", "FAILED").ok
    assert Row("Prefect: pools", "yes").ok
    assert not Row("FlowRun/a", "yes", flow_state="Failed").ok
    assert Row("FlowRun/a", "yes", flow_state="Completed").ok
    assert not Row("Deployment/agents", "yes", checks_ok=False).ok
    lines: list[str] = []
    print_table([Row("Deployment/x", "skipped", note="replicas: 0")], lines.append)
    assert lines[0].startswith("workload") and "replicas: 0" in lines[1]

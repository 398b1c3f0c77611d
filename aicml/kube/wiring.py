"""Wiring checks: every name a rendered object refers to exists, and every in-cluster address resolves.

They run over the rendered overlay plus the flow-run Jobs that prefect-kubernetes' own code renders from
the work pools' base job templates (one per Kubernetes deployment of `prefect.yaml`) and the serving
objects that `deploy-model` renders and applies. Each check is a pure function of the objects and
returns `Violation`s; `run_wiring` runs them all. The NetworkPolicy paths are checked in
`aicml.kube.netpol` with a real policy analyser.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aicml.kube.findings import Violation
from aicml.kube.render import NAMESPACE, KubeObject, containers, object_ref, pod_spec, pod_template_labels
from aicml.kube.secrets import SECRET_SPECS
from aicml.names import slug

Check = Callable[[list[KubeObject]], list[Violation]]

# Services the manifests may address outside what they render: host -> allowed ports.
EXTERNAL_ENDPOINTS: dict[str, frozenset[int]] = {
    "postgresql-service.aic-platform.svc.cluster.local": frozenset({5432}),
}
# Schemes whose authority is a network address (s3://, file://, models:/ are not).
NETWORK_SCHEMES = re.compile(r"^(https?|tcp|tls|grpcs?|wss?|redis|postgres(ql)?(\+\w+)?)$")
URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^\s/?#'\"]+)")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "postgres": 5432, "postgresql": 5432}
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0"})
VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
# Placeholder for a variable whose value comes from a Secret or the downward API.
OPAQUE = "opaque"
# Secrets only some workloads may read: Secret name -> the `app.kubernetes.io/name`s allowed.
SECRET_CONSUMERS: dict[str, frozenset[str]] = {"mlflow-s3": frozenset({"mlflow"})}
# ... or the `app.kubernetes.io/component`s allowed (every model server, whatever its name): the
# prediction log's write-only key.
SECRET_CONSUMER_COMPONENTS: dict[str, frozenset[str]] = {"model-serving-s3": frozenset({"model-server"})}
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
DEPLOYER_ROLE = "model-deployer"
DEPLOY_MODEL_FLOW = "deploy-model"
# What every flow-run pod must be told (values from the ConfigMap or Secrets count): the Prefect API, MLflow and
# its credentials, and the model deployment database (usage rows, the retrain ledger, prediction summaries).
FLOW_RUN_ENV = (
    "PREFECT_API_URL",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MODEL_DEPLOYMENT_DB_USER",
    "MODEL_DEPLOYMENT_DB_PASSWORD",
    "MODEL_DEPLOYMENT_DB_NAME",
)
# On each rendered flow-run Job: the `flow/deployment` of prefect.yaml it runs.
DEPLOYMENT_ANNOTATION = "aic.io/prefect-deployment"
# kind -> (API group, resource) for the kinds `deploy-model` may apply.
KIND_RESOURCES: dict[str, tuple[str, str]] = {
    "ConfigMap": ("", "configmaps"),
    "Deployment": ("apps", "deployments"),
    "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
    "Role": ("rbac.authorization.k8s.io", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
    "Secret": ("", "secrets"),
    "Service": ("", "services"),
    "ServiceAccount": ("", "serviceaccounts"),
}
# `apply_manifests` server-side-applies each object: a PATCH, which also needs `create` when the object
# does not exist yet (the API server authorizes that create separately).
APPLY_VERBS = frozenset({"create", "patch"})
Permission = tuple[str, str, str]  # (API group, resource, verb)


# --- the objects -----------------------------------------------------------------------------------


def _meta(obj: KubeObject) -> dict[str, Any]:
    return dict(obj.get("metadata") or {})


def _name(obj: KubeObject) -> str:
    return str(_meta(obj).get("name"))


def _namespace(obj: KubeObject) -> str:
    return str(_meta(obj).get("namespace") or NAMESPACE)


def named(objects: Iterable[KubeObject], kind: str) -> dict[tuple[str, str], KubeObject]:
    """Objects of `kind` by (namespace, name)."""
    return {(_namespace(obj), _name(obj)): obj for obj in objects if obj.get("kind") == kind}


def workloads(objects: Iterable[KubeObject]) -> Iterator[tuple[KubeObject, dict[str, Any]]]:
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            yield obj, spec


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Does a label selector (plain map, or matchLabels/matchExpressions) select these labels?"""
    if not selector:
        return False
    if "matchLabels" in selector or "matchExpressions" in selector:
        match = dict(selector.get("matchLabels") or {})
        for expr in selector.get("matchExpressions") or []:
            key, op, values = expr.get("key"), expr.get("operator"), set(expr.get("values") or [])
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
    else:
        match = dict(selector)
    return all(labels.get(key) == str(value) for key, value in match.items())


def _secret_keys(objects: list[KubeObject]) -> dict[str, set[str]]:
    """Secret name -> keys, for the declared Secrets and any rendered ones."""
    keys = {spec.name: set(spec.key_names) for spec in SECRET_SPECS}
    for obj in objects:
        if obj.get("kind") == "Secret":
            keys[_name(obj)] = {*(obj.get("data") or {}), *(obj.get("stringData") or {})}
    return keys


def _configmap_data(objects: list[KubeObject]) -> dict[str, dict[str, str]]:
    return {
        _name(obj): {**(obj.get("data") or {}), **(obj.get("binaryData") or {})}
        for obj in objects
        if obj.get("kind") == "ConfigMap"
    }


# --- references to Secrets, ConfigMaps, claims and accounts -------------------------------------------


@dataclass(frozen=True)
class Reference:
    """One use of a Secret or ConfigMap by a pod: `key` None means every key (envFrom, whole volume)."""

    kind: str  # "Secret" or "ConfigMap"
    name: str
    key: str | None
    where: str
    optional: bool = False


def pod_references(spec: dict[str, Any]) -> Iterator[Reference]:
    """Every Secret and ConfigMap a pod spec reads: env, envFrom, volumes and projected volumes."""
    for container in containers(spec):
        cname = container.get("name")
        for env in container.get("env") or []:
            source = env.get("valueFrom") or {}
            for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if field in source:
                    ref = source[field]
                    where = f"env {env.get('name')!r} of container {cname!r}"
                    yield Reference(kind, ref.get("name"), ref.get("key"), where, bool(ref.get("optional")))
        for source in container.get("envFrom") or []:
            for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                if field in source:
                    ref = source[field]
                    where = f"envFrom of container {cname!r}"
                    yield Reference(kind, ref.get("name"), None, where, bool(ref.get("optional")))
    for volume in spec.get("volumes") or []:
        where = f"volume {volume.get('name')!r}"
        sources: list[tuple[str, dict[str, Any]]] = []
        if "secret" in volume:
            secret = volume["secret"]
            sources.append(("Secret", {**secret, "name": secret.get("secretName")}))
        if "configMap" in volume:
            sources.append(("ConfigMap", volume["configMap"]))
        for projected in (volume.get("projected") or {}).get("sources") or []:
            if "secret" in projected:
                sources.append(("Secret", projected["secret"]))
            if "configMap" in projected:
                sources.append(("ConfigMap", projected["configMap"]))
        for kind, source in sources:
            optional = bool(source.get("optional"))
            items = source.get("items") or []
            if not items:
                yield Reference(kind, str(source.get("name")), None, where, optional)
            for item in items:
                yield Reference(kind, str(source.get("name")), item.get("key"), where, optional)


def check_references(objects: list[KubeObject]) -> list[Violation]:
    """Every Secret (declared in SECRET_SPECS or rendered), ConfigMap and key a pod reads exists."""
    secrets, configmaps = _secret_keys(objects), _configmap_data(objects)
    found: list[Violation] = []
    for obj, spec in workloads(objects):
        for ref in pod_references(spec):
            if ref.optional:
                continue
            known = secrets.get(ref.name) if ref.kind == "Secret" else configmaps.get(ref.name)
            origin = "declared in SECRET_SPECS or rendered" if ref.kind == "Secret" else "rendered"
            if known is None:
                message = f"{ref.where} reads {ref.kind} {ref.name!r}, which is not {origin}"
                found.append(Violation("wiring-refs", object_ref(obj), message))
            elif ref.key is not None and ref.key not in known:
                message = (
                    f"{ref.where} reads key {ref.key!r} of {ref.kind} {ref.name!r}, which has {sorted(known)}"
                )
                found.append(Violation("wiring-refs", object_ref(obj), message))
    return found


def check_claims_and_accounts(objects: list[KubeObject]) -> list[Violation]:
    """Every PersistentVolumeClaim a pod mounts and every ServiceAccount it runs as is rendered."""
    claims = {name for _, name in named(objects, "PersistentVolumeClaim")}
    accounts = {name for _, name in named(objects, "ServiceAccount")} | {"default"}
    found: list[Violation] = []
    for obj, spec in workloads(objects):
        ref = object_ref(obj)
        for volume in spec.get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim is not None and claim not in claims:
                message = f"volume {volume.get('name')!r} mounts PersistentVolumeClaim {claim!r}, which is not rendered"
                found.append(Violation("wiring-refs", ref, message))
        account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        if account not in accounts:
            found.append(
                Violation("wiring-refs", ref, f"runs as ServiceAccount {account!r}, which is not rendered")
            )
    return found


def check_role_bindings(objects: list[KubeObject]) -> list[Violation]:
    """Every RoleBinding names a rendered Role and rendered ServiceAccounts."""
    roles = named(objects, "Role")
    accounts = named(objects, "ServiceAccount")
    found: list[Violation] = []
    for binding in objects:
        if binding.get("kind") != "RoleBinding":
            continue
        ref, namespace = object_ref(binding), _namespace(binding)
        role = binding.get("roleRef") or {}
        if role.get("kind") == "Role" and (namespace, role.get("name")) not in roles:
            found.append(
                Violation("wiring-rbac", ref, f"binds Role {role.get('name')!r}, which is not rendered")
            )
        for subject in binding.get("subjects") or []:
            where = (subject.get("namespace") or namespace, subject.get("name"))
            if subject.get("kind") == "ServiceAccount" and where not in accounts:
                message = f"binds ServiceAccount {where[0]}/{where[1]}, which is not rendered"
                found.append(Violation("wiring-rbac", ref, message))
    return found


def check_secret_consumers(objects: list[KubeObject]) -> list[Violation]:
    """Restricted Secrets (the object-storage keys: MLflow's artifacts, the model servers' prediction log)
    are read only by their workloads."""
    found: list[Violation] = []
    for obj, spec in workloads(objects):
        labels = pod_template_labels(obj)
        app, component = labels.get(NAME_LABEL), labels.get(COMPONENT_LABEL)
        for ref in pod_references(spec):
            if ref.kind != "Secret":
                continue
            allowed = SECRET_CONSUMERS.get(ref.name)
            if allowed is not None and app not in allowed:
                message = f"{ref.where} reads Secret {ref.name!r}, which only {sorted(allowed)} may read"
                found.append(Violation("wiring-secret-consumer", object_ref(obj), message))
            components = SECRET_CONSUMER_COMPONENTS.get(ref.name)
            if components is not None and component not in components:
                message = (
                    f"{ref.where} reads Secret {ref.name!r}, which only pods of component "
                    f"{sorted(components)} may read"
                )
                found.append(Violation("wiring-secret-consumer", object_ref(obj), message))
    return found


# --- Services ---------------------------------------------------------------------------------------


def selected_pods(service: KubeObject, objects: list[KubeObject]) -> list[tuple[KubeObject, dict[str, Any]]]:
    selector = (service.get("spec") or {}).get("selector")
    return [
        (obj, spec)
        for obj, spec in workloads(objects)
        if _namespace(obj) == _namespace(service) and selects(selector, pod_template_labels(obj))
    ]


def container_port(spec: dict[str, Any], target: int | str) -> int | None:
    """The container port number a Service's targetPort (name or number) reaches in this pod, else None."""
    for container in containers(spec):
        for port in container.get("ports") or []:
            if target in (port.get("name"), port.get("containerPort")):
                return int(port["containerPort"])
    return None


def check_services(objects: list[KubeObject]) -> list[Violation]:
    """Each Service selects at least one pod template, and each targetPort names a port of those pods."""
    found: list[Violation] = []
    for service in objects:
        spec = service.get("spec") or {}
        if service.get("kind") != "Service" or spec.get("type") == "ExternalName" or not spec.get("selector"):
            continue
        ref = object_ref(service)
        pods = selected_pods(service, objects)
        if not pods:
            found.append(
                Violation("wiring-service", ref, f"selector {spec['selector']} selects no pod template")
            )
            continue
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            missing = [object_ref(obj) for obj, pod in pods if container_port(pod, target) is None]
            if missing:
                message = f"port {port.get('name') or port.get('port')!r}: targetPort {target!r} is no container port of {', '.join(missing)}"
                found.append(Violation("wiring-service", ref, message))
    return found


# --- addresses --------------------------------------------------------------------------------------


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, others stay as written."""
    return VARIABLE.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def container_env(container: dict[str, Any], configmaps: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet builds it; Secret and downward-API values are opaque."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        if "configMapRef" in source:
            for key, value in configmaps.get(source["configMapRef"].get("name"), {}).items():
                env[prefix + key] = str(value)
    for item in container.get("env") or []:
        name = str(item.get("name"))
        if "value" in item:
            env[name] = expand(str(item.get("value") or ""), env)
            continue
        source = item.get("valueFrom") or {}
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[name] = str(configmaps.get(ref.get("name"), {}).get(ref.get("key"), OPAQUE))
        else:
            env[name] = OPAQUE
    return env


@dataclass(frozen=True)
class Address:
    scheme: str
    host: str
    port: int | None
    text: str


def addresses(text: str) -> Iterator[Address]:
    """Network addresses (`scheme://[user@]host[:port]`) in a string."""
    for match in URL.finditer(text):
        scheme, authority = match.group(1).lower(), match.group(2)
        if not NETWORK_SCHEMES.match(scheme):
            continue
        hostport = authority.rsplit("@", 1)[-1]
        host, _, port = hostport.rpartition(":") if re.search(r":\d+$", hostport) else (hostport, "", "")
        base = scheme.split("+", 1)[0]
        yield Address(scheme, host.lower(), int(port) if port else DEFAULT_PORTS.get(base), match.group(0))


def service_ports(service: KubeObject) -> set[int]:
    return {int(p["port"]) for p in (service.get("spec") or {}).get("ports") or [] if "port" in p}


def check_address(
    address: Address, services: dict[tuple[str, str], KubeObject], namespace: str
) -> str | None:
    """Why `address` does not reach a rendered Service port or a declared external endpoint; None if it does."""
    host = address.host
    if "$(" in host:
        return f"{address.text!r} names an undefined variable"
    if host in EXTERNAL_ENDPOINTS:
        if address.port not in EXTERNAL_ENDPOINTS[host]:
            return f"{address.text!r}: port {address.port} is not one of {sorted(EXTERNAL_ENDPOINTS[host])}"
        return None
    labels = host.split(".")
    cluster_suffix = labels[2:] in ([], ["svc"], ["svc", "cluster", "local"])
    namespaces = {ns for ns, _ in services} | {namespace}
    if len(labels) == 1:
        name, target_ns = labels[0], namespace
    elif cluster_suffix and (labels[1] in namespaces or labels[2:]):
        name, target_ns = labels[0], labels[1]
    else:
        return None  # outside the cluster (object storage, public endpoints)
    service = services.get((target_ns, name))
    if service is None:
        return f"{address.text!r} names Service {target_ns}/{name}, which is not rendered nor a declared external endpoint"
    ports = service_ports(service)
    if address.port not in ports:
        return (
            f"{address.text!r}: Service {target_ns}/{name} has no port {address.port} (ports {sorted(ports)})"
        )
    return None


def _inherited(container: dict[str, Any], configmaps: Mapping[str, Mapping[str, str]]) -> set[str]:
    """Variables the container takes unchanged from a ConfigMap (the ConfigMap's own check covers them)."""
    names: set[str] = set()
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            data = configmaps.get(source["configMapRef"].get("name"), {})
            names |= {(source.get("prefix") or "") + key for key in data}
    for item in container.get("env") or []:
        if "configMapKeyRef" in (item.get("valueFrom") or {}):
            names.add(str(item.get("name")))
        else:
            names.discard(str(item.get("name")))
    return names


def _pod_strings(
    spec: dict[str, Any], configmaps: Mapping[str, Mapping[str, str]]
) -> Iterator[tuple[str, str, bool]]:
    """(where, text, taken unchanged from a ConfigMap) for every env value, command and argument of the
    pod, variables expanded."""
    for container in containers(spec):
        env = container_env(container, configmaps)
        cname = container.get("name")
        inherited = _inherited(container, configmaps)
        for name, value in env.items():
            yield f"env {name!r} of container {cname!r}", value, name in inherited
        for field in ("command", "args"):
            for arg in container.get(field) or []:
                yield f"{field} of container {cname!r}", expand(str(arg), env), False


def check_addresses(objects: list[KubeObject]) -> list[Violation]:
    """Every in-cluster URL in env, args, command and ConfigMap data names a Service and one of its ports
    (a variable a pod takes unchanged from a ConfigMap is reported once, on the ConfigMap); a loopback URL
    in a pod names a port one of the pod's own containers listens on."""
    services = named(objects, "Service")
    configmaps = _configmap_data(objects)
    found: list[Violation] = []
    for obj in objects:
        if obj.get("kind") == "ConfigMap":
            for key, value in (obj.get("data") or {}).items():
                for address in addresses(str(value)):
                    problem = check_address(address, services, _namespace(obj))
                    if problem and address.host not in LOOPBACK:
                        found.append(Violation("wiring-url", object_ref(obj), f"key {key!r}: {problem}"))
    for obj, spec in workloads(objects):
        seen: set[str] = set()
        for where, text, inherited in _pod_strings(spec, configmaps):
            for address in addresses(text):
                if address.host in LOOPBACK:
                    listening = address.port is not None and container_port(spec, address.port) is not None
                    problem = (
                        None
                        if listening
                        else f"{address.text!r} is this pod itself, and nothing in it listens there"
                    )
                elif inherited:
                    continue  # reported once, on the ConfigMap
                else:
                    problem = check_address(address, services, _namespace(obj))
                message = f"{where}: {problem}"
                if problem and message not in seen:
                    seen.add(message)
                    found.append(Violation("wiring-url", object_ref(obj), message))
    return found


# --- the prediction log -----------------------------------------------------------------------------

PREDICTION_LOG_OFF = frozenset({"", "off", "false", "0", "no"})
# What a model server writing its log to object storage needs besides the URL (botocore reads them).
OBJECT_STORAGE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The summary table's database (blocks.settings.service_database_url("MODEL_DEPLOYMENT")).
SUMMARY_DATABASE_ENV = ("MODEL_DEPLOYMENT_DB_USER", "MODEL_DEPLOYMENT_DB_NAME", "PGHOST")


def check_prediction_log(objects: list[KubeObject]) -> list[Violation]:
    """Every model server that logs predictions writes them where the pod can: a resolved object-storage URL
    (a local directory would be lost with the pod), a key for it, and the deployment database for the
    summaries (not SQLite inside the pod)."""
    configmaps = _configmap_data(objects)
    found: list[Violation] = []
    for obj, spec in workloads(objects):
        if pod_template_labels(obj).get(COMPONENT_LABEL) != "model-server":
            continue
        for container in containers(spec):
            env = container_env(container, configmaps)
            target = env.get("AIC_PREDICTION_LOG", "").strip()
            if target.lower() in PREDICTION_LOG_OFF:
                continue
            where = f"container {container.get('name')!r}"
            problems = []
            if VARIABLE.search(target):
                problems.append(f"AIC_PREDICTION_LOG {target!r} names an undefined variable")
            elif "://" not in target or target.startswith("file://"):
                problems.append(
                    f"AIC_PREDICTION_LOG {target!r} is inside the pod, lost with it; use object storage"
                )
            elif target.startswith(("s3://", "s3a://")):
                problems += [
                    f"is not given {name} for {target}" for name in OBJECT_STORAGE_ENV if name not in env
                ]
            if not env.get("AIC_PREDICTION_LOG_DB"):
                missing = [name for name in SUMMARY_DATABASE_ENV if not env.get(name)]
                if missing:
                    problems.append(
                        f"is not given {', '.join(missing)}: the log's summaries would go to SQLite in the pod"
                    )
            found += [
                Violation("wiring-prediction-log", object_ref(obj), f"{where}: {problem}")
                for problem in problems
            ]
    return found


# --- the deployer Role ------------------------------------------------------------------------------


def required_permissions(manifests: Iterable[KubeObject]) -> set[Permission]:
    """What server-side-applying these objects needs, one (group, resource, verb) per kind and verb."""
    needed: set[Permission] = set()
    for manifest in manifests:
        group, resource = KIND_RESOURCES.get(str(manifest.get("kind")), ("?", f"{manifest.get('kind')}?"))
        needed |= {(group, resource, verb) for verb in APPLY_VERBS}
    return needed


def granted_permissions(role: KubeObject) -> set[Permission]:
    return {
        (group, resource, verb)
        for rule in role.get("rules") or []
        for group in rule.get("apiGroups") or []
        for resource in rule.get("resources") or []
        for verb in rule.get("verbs") or []
    }


def serving_manifests() -> list[KubeObject]:
    """The objects `deploy-model` renders and applies with its default parameters (target kubernetes)."""
    from aicml.serving.kubernetes import KubeServingSpec, render_manifests

    spec = KubeServingSpec("wiring-check", challenger_alias="challenger")
    return render_manifests(spec)


def _by_resource(permissions: Iterable[Permission]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for group, resource, verb in sorted(permissions):
        grouped.setdefault(f"{group or 'core'}/{resource}", []).append(verb)
    return grouped


def _mounts_api_token(spec: dict[str, Any]) -> bool:
    projected = any(
        "serviceAccountToken" in source
        for volume in spec.get("volumes") or []
        for source in (volume.get("projected") or {}).get("sources") or []
    )
    return spec.get("automountServiceAccountToken") is not False or projected


def check_deployer_role(
    objects: list[KubeObject], manifests: list[KubeObject] | None = None
) -> list[Violation]:
    """The `model-deployer` Role grants exactly what applying `deploy-model`'s objects needs, and the
    `deploy-model` flow-run pod runs as an account bound to it, with an API token."""
    roles = {name: role for (_, name), role in named(objects, "Role").items()}
    role = roles.get(DEPLOYER_ROLE)
    ref = f"Role/{NAMESPACE}/{DEPLOYER_ROLE}"
    if role is None:
        return [Violation("wiring-deployer-role", ref, "is not rendered; deploy-model cannot apply anything")]
    needed = required_permissions(serving_manifests() if manifests is None else manifests)
    granted = granted_permissions(role)
    found = [
        Violation(
            "wiring-deployer-role", ref, f"lacks {', '.join(verbs)} on {resource}, which deploy-model applies"
        )
        for resource, verbs in _by_resource(needed - granted).items()
    ]
    found += [
        Violation(
            "wiring-deployer-role",
            ref,
            f"grants {', '.join(verbs)} on {resource}, which deploy-model never needs",
        )
        for resource, verbs in _by_resource(granted - needed).items()
    ]
    bound = {
        subject.get("name")
        for binding in objects
        if binding.get("kind") == "RoleBinding"
        and (binding.get("roleRef") or {}).get("name") == DEPLOYER_ROLE
        for subject in binding.get("subjects") or []
        if subject.get("kind") == "ServiceAccount"
    }
    for obj, spec in workloads(objects):
        if (
            _meta(obj).get("annotations", {}).get(DEPLOYMENT_ANNOTATION, "").split("/")[0]
            != DEPLOY_MODEL_FLOW
        ):
            continue
        account = spec.get("serviceAccountName") or "default"
        if account not in bound:
            message = (
                f"runs as ServiceAccount {account!r}, which no RoleBinding binds to Role {DEPLOYER_ROLE!r}"
            )
            found.append(Violation("wiring-deployer-role", object_ref(obj), message))
        if not _mounts_api_token(spec):
            message = "gets no API token (automountServiceAccountToken: false), so deploy-model cannot apply"
            found.append(Violation("wiring-deployer-role", object_ref(obj), message))
    return found


# --- flow-run Jobs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowRunJob:
    """The Job a Kubernetes worker submits for one deployment of `prefect.yaml`."""

    deployment: str  # flow-name/deployment-name
    pool: str
    manifest: KubeObject


def worker_pool(container: dict[str, Any]) -> str | None:
    """The work pool a Prefect worker container polls (`prefect worker start --pool X`, or a wrapper whose
    module or command ends in `worker`), else None."""
    words = [str(w) for w in [*(container.get("command") or []), *(container.get("args") or [])]]
    if not any(word == "worker" or word.endswith((".worker", "-worker")) for word in words):
        return None
    for index, word in enumerate(words):
        if word in ("--pool", "-p") and index + 1 < len(words):
            return words[index + 1]
        if word.startswith("--pool="):
            return word.partition("=")[2]
    return None


def _worker_prefect_env(objects: list[KubeObject], pool: str) -> dict[str, str]:
    """The PREFECT_* settings of the rendered worker Deployment that polls `pool`."""
    configmaps = _configmap_data(objects)
    for _obj, spec in workloads(objects):
        for container in containers(spec):
            if worker_pool(container) == pool:
                env = container_env(container, configmaps)
                return {k: v for k, v in env.items() if k.startswith("PREFECT_")}
    return {}


def render_flow_run_job(
    template: dict[str, Any], job_variables: dict[str, Any], worker_env: Mapping[str, str]
) -> KubeObject:
    """The Job prefect-kubernetes renders for these job variables, with the worker's Prefect settings as
    its base environment (not this process's)."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from aicml.kube.jobs import render_job

    updates = {PREFECT_API_URL: worker_env["PREFECT_API_URL"]} if "PREFECT_API_URL" in worker_env else {}
    with temporary_settings(updates=updates):
        local = set(get_current_settings().to_environment_variables(exclude_unset=True))
        manifest = render_job(template, job_variables)
    explicit = set((job_variables.get("env") or {}) if isinstance(job_variables.get("env"), dict) else {})
    dropped = local - set(worker_env) - explicit
    for container in containers(manifest["spec"]["template"]["spec"]):
        container["env"] = [e for e in container.get("env") or [] if e.get("name") not in dropped]
    return manifest


def _project_root(project_dir: Path | None) -> Path:
    from aicml.stack.prefect_yaml import PROJECT_ROOT

    return project_dir or PROJECT_ROOT


def prefect_deployments(project_dir: Path | None = None) -> list[dict[str, Any]]:
    """The `deployments` of `prefect.yaml`."""
    import yaml

    config = yaml.safe_load((_project_root(project_dir) / "prefect.yaml").read_text())
    return list(config.get("deployments") or [])


def flow_run_jobs(objects: list[KubeObject], project_dir: Path | None = None) -> list[FlowRunJob]:
    """The flow-run Job of every deployment of `prefect.yaml` on a Kubernetes pool, named
    `flow-run-<flow>-<deployment>` (the worker lets Kubernetes generate the name)."""
    from aicml.kube.pools import POOLS, base_job_template
    from aicml.stack.prefect_yaml import flow_name_of

    root = _project_root(project_dir)
    jobs = []
    for item in prefect_deployments(project_dir):
        pool = (item.get("work_pool") or {}).get("name")
        if pool not in POOLS:
            continue
        flow = flow_name_of(root, item["entrypoint"])
        variables = dict(item["work_pool"].get("job_variables") or {})
        manifest = render_flow_run_job(base_job_template(pool), variables, _worker_prefect_env(objects, pool))
        manifest["metadata"]["name"] = slug(f"flow-run-{flow}-{item['name']}")
        manifest["metadata"].setdefault("annotations", {})[DEPLOYMENT_ANNOTATION] = f"{flow}/{item['name']}"
        manifest["metadata"].setdefault("namespace", NAMESPACE)
        jobs.append(FlowRunJob(f"{flow}/{item['name']}", pool, manifest))
    return jobs


def is_flow_run(obj: KubeObject) -> bool:
    """A flow-run Job rendered by `flow_run_jobs`."""
    return DEPLOYMENT_ANNOTATION in (_meta(obj).get("annotations") or {})


def check_flow_run_env(objects: list[KubeObject]) -> list[Violation]:
    """Every flow-run pod is told where the Prefect API and MLflow are, and gets MLflow credentials."""
    configmaps = _configmap_data(objects)
    found = []
    for obj, spec in workloads(objects):
        if not is_flow_run(obj):
            continue
        for container in spec.get("containers") or []:
            env = container_env(container, configmaps)
            missing = [name for name in FLOW_RUN_ENV if not env.get(name)]
            if missing:
                message = f"container {container.get('name')!r} is not given {', '.join(missing)}"
                found.append(Violation("wiring-flow-run-env", object_ref(obj), message))
    return found


def check_worker_pools(objects: list[KubeObject], project_dir: Path | None = None) -> list[Violation]:
    """Every rendered worker polls a pool that a deployment of `prefect.yaml` uses, and every Kubernetes
    pool a deployment uses has a rendered worker."""
    from aicml.kube.pools import POOLS

    used = {str((item.get("work_pool") or {}).get("name")) for item in prefect_deployments(project_dir)}
    polled: set[str] = set()
    found = []
    for obj, spec in workloads(objects):
        for container in containers(spec):
            pool = worker_pool(container)
            if pool is None:
                continue
            polled.add(pool)
            if pool not in used:
                message = f"container {container.get('name')!r} polls work pool {pool!r}, which no deployment of prefect.yaml uses"
                found.append(Violation("wiring-pools", object_ref(obj), message))
    for pool in sorted(used & set(POOLS) - polled):
        message = f"deployments run on work pool {pool!r}, which no rendered worker polls"
        found.append(Violation("wiring-pools", "prefect.yaml", message))
    return found


# --- all of it --------------------------------------------------------------------------------------

CHECKS: dict[str, Check] = {
    "wiring-refs": lambda objects: check_references(objects) + check_claims_and_accounts(objects),
    "wiring-rbac": check_role_bindings,
    "wiring-secret-consumer": check_secret_consumers,
    "wiring-service": check_services,
    "wiring-url": check_addresses,
    "wiring-prediction-log": check_prediction_log,
    "wiring-deployer-role": check_deployer_role,
    "wiring-flow-run-env": check_flow_run_env,
    "wiring-pools": check_worker_pools,
}


def wiring_objects(objects: list[KubeObject], project_dir: Path | None = None) -> list[KubeObject]:
    """The render plus the flow-run Jobs and `deploy-model`'s serving objects: everything that runs."""
    return [*objects, *(job.manifest for job in flow_run_jobs(objects, project_dir)), *serving_manifests()]


def run_wiring(objects: list[KubeObject]) -> list[Violation]:
    """Every wiring check over `objects` (pass `wiring_objects(render)` to include flow runs and serving)."""
    return [violation for check in CHECKS.values() for violation in check(objects)]

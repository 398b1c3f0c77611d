"""The embedded default stack: what `aicml up` starts and `aicml down` stops, under ``settings.home``."""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import shlex
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aicml.errors import StackError
from aicml.retry import CLIENT_RETRY_ENV, retry_idempotent
from aicml.stack.automations import HEARTBEAT_SECONDS
from aicml.stack.processes import ServiceSpec, await_ready, healthy, launch, read_pid, start, stop
from blocks.settings import AicSettings

SERVICES = ("prefect-server", "mlflow-server", "metrics-exporter", "worker")
# Started only when asked for (`aicml up --with-prometheus`); listed by `status` while it runs.
PROMETHEUS = "prometheus"
PROMETHEUS_SCRAPE_SECONDS = 5
WORKER_POLL_SECONDS = 1
# Prefect's process worker sometimes does not exit after SIGTERM (its shutdown hung until the 15 s SIGKILL in
# 4 of 11 stops right after a cancelled run, and in every round of a later run); it keeps no state, and its
# flow-run processes share its process group, so they have had the SIGTERM too: a short grace, then SIGKILL.
WORKER_STOP_GRACE_SECONDS = 4.0
# What `up` uses of Prefect's client once the Prefect server answers (work pool, automations, limits, blocks).
PRELOADED = ("prefect.automations", "prefect.client.orchestration", "prefect.workers.process")


def _preload_prefect_client() -> threading.Thread:
    """Import, in a thread, the Prefect modules `up` calls once the Prefect server answers (about 2 s of
    imports that otherwise wait for it); join it before this process imports Prefect itself."""

    def load() -> None:
        with contextlib.suppress(Exception):  # an import error is raised where the module is used
            for module in (*PRELOADED, "blocks.registration"):
                importlib.import_module(module)

    thread = threading.Thread(target=load, name="aicml-preload-prefect", daemon=True)
    thread.start()
    return thread


def _bin(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def ensure_postgres_database(admin_url: str, name: str) -> None:
    """Create database ``name`` on the server of ``admin_url`` unless it exists (identifier quoted).

    Retried while the server does not answer (a restart): the check-then-create is safe to repeat,
    and a create that lost its answer shows up as an existing database the next time.
    """
    import psycopg
    from psycopg import sql

    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://").replace(
        "postgresql+asyncpg://", "postgresql://"
    )
    base = conninfo.rsplit("/", 1)[0] + "/postgres"

    def create() -> None:
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                # Created meanwhile, or by the attempt whose answer was lost: done all the same.
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    try:
        retry_idempotent(create, server="PostgreSQL", url=base, doing=f"creating database {name!r}")
    except psycopg.OperationalError as exc:
        raise StackError(f"Cannot reach PostgreSQL at {base.split('@')[-1]}: {exc}") from exc


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    address: str
    healthy: bool


class LocalStack:
    """Prefect server, MLflow server, metrics exporter and one process worker, by pid file."""

    def __init__(self, settings: AicSettings | None = None):
        self.settings = settings or AicSettings()
        self.home = self.settings.root
        self.run_dir = self.home / "run"
        self.log_dir = self.home / "logs"

    @property
    def metrics_dir(self) -> Path:
        return self.home / "metrics"

    @property
    def prometheus_dir(self) -> Path:
        """The local Prometheus's configuration, rules and time series (`aicml up --with-prometheus`)."""
        return self.home / "prometheus"

    @property
    def metrics_page(self) -> Path:
        """The local metrics page (the dashboards' panels as Prometheus graph links), served by the exporter."""
        return self.prometheus_dir / "dashboards.html"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.prometheus_port}"

    @property
    def metrics_page_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.metrics_port}/dashboards"

    @property
    def auth_file(self) -> Path:
        """``user:password`` of the Prefect API when the stack runs with ``aicml up --auth`` (mode 0600)."""
        return self.home / "prefect-api-auth"

    def auth_string(self) -> str | None:
        """The Prefect API's auth string when the stack was started with auth, else None."""
        try:
            return self.auth_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _set_auth(self, enabled: bool) -> None:
        """Turn Prefect API auth on (a new random password) or off; only while the Prefect server is down."""
        if enabled == (self.auth_string() is not None):
            return
        if read_pid(self.run_dir, "prefect-server") is not None:
            now = "with" if self.auth_string() else "without"
            raise StackError(
                f"The Prefect server already runs {now} API auth; run `aicml down` first, then `aicml up "
                f"{'--auth' if enabled else '--no-auth'}`."
            )
        if enabled:
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.auth_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"aicml:{secrets.token_urlsafe(32)}\n")
        else:
            self.auth_file.unlink()

    def prefect_api(self) -> AbstractContextManager[None]:
        """Prefect client settings for this stack's server (its auth string included when auth is on)."""
        from aicml.stack.prefect_api import api_settings

        return api_settings(self.settings.local_prefect_url, self.auth_string())

    def _stack_env(self) -> dict[str, str]:
        """What every process of this stack and its clients share; the Prefect and MLflow addresses aside."""
        s = self.settings
        env = {
            "AIC_HOME": str(self.home),
            "AIC_PREFECT_PORT": str(s.prefect_port),
            "AIC_MLFLOW_PORT": str(s.mlflow_port),
            "AIC_METRICS_PORT": str(s.metrics_port),
            "AIC_HOST": s.host,
            "AIC_EXPERIMENT": s.experiment,
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
            "GX_ANALYTICS_ENABLED": "False",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(self.home / "prefect"),
            # Heartbeats let the crash automation find flow runs whose process died.
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
            # Persisted task results (resume skips completed stages) live with the stack.
            "PREFECT_LOCAL_STORAGE_PATH": str(self.home / "prefect" / "storage"),
            # Bounded client retries: a server restart is ridden out, one that stays down is reported
            # after about a minute (aicml/retry.py says how the numbers add up).
            **CLIENT_RETRY_ENV,
        }
        if s.database_url is not None:
            env["AIC_DATABASE_URL"] = s.database_url.get_secret_value()
            # Without these a client would look for the default database names on that server.
            env["AIC_PREFECT_DATABASE"] = s.prefect_database
            env["AIC_MLFLOW_DATABASE"] = s.mlflow_database
            if s.data_integration_database:
                env["AIC_DATA_INTEGRATION_DATABASE"] = s.data_integration_database
        return env

    def _local_prefect_auth(self, env: dict[str, str], prefect_url: str) -> None:
        """This stack's Prefect password, only for this stack's server: never sent to another one."""
        auth = self.auth_string()
        if auth is not None and prefect_url == self.settings.local_prefect_url:
            env["PREFECT_API_AUTH_STRING"] = auth

    def client_env(self) -> dict[str, str]:
        """Environment for anything that talks to the stack as a client: CLI commands, notebooks, `prefect
        deploy`. Prefect and MLflow are the settings' (``AIC_*``, else the standard variables the user set,
        else this stack's servers), so a user's ``PREFECT_API_URL`` or ``MLFLOW_TRACKING_URI`` stays in force."""
        s = self.settings
        env = {"PREFECT_API_URL": s.prefect_url, "MLFLOW_TRACKING_URI": s.tracking_uri, **self._stack_env()}
        self._local_prefect_auth(env, s.prefect_url)
        return env

    def service_env(self) -> dict[str, str]:
        """Environment of the stack's own processes: they serve, and poll, this stack's servers.

        The worker's flow runs alone track to the settings' MLflow (``specs``): a user's
        ``MLFLOW_TRACKING_URI`` set at `aicml up` says where runs are recorded; which pool feeds the worker
        is the stack's.
        """
        s = self.settings
        env = {
            "PREFECT_API_URL": s.local_prefect_url,
            "MLFLOW_TRACKING_URI": s.local_tracking_uri,
            **self._stack_env(),
        }
        self._local_prefect_auth(env, s.local_prefect_url)
        return env

    def uses_local(self) -> tuple[str, ...]:
        """The services of this stack that its clients use under these settings (a user who points
        ``PREFECT_API_URL`` and ``MLFLOW_TRACKING_URI`` elsewhere needs none of them)."""
        s = self.settings
        used = []
        if s.prefect_url == s.local_prefect_url:
            used += ["prefect-server", "worker"]
        if s.tracking_uri == s.local_tracking_uri:
            used.append("mlflow-server")
        return tuple(name for name in SERVICES if name in used)

    def user_overrides(self) -> dict[str, str]:
        """The standard addresses the user set that differ from this stack's own (passwords in URLs hidden):
        clients follow these, not the stack. Secrets are never returned, only that addresses differ."""
        from aicml.redaction import redact
        from blocks.settings import user_variable

        s = self.settings
        own = {"PREFECT_API_URL": s.local_prefect_url, "MLFLOW_TRACKING_URI": s.local_tracking_uri}
        out = {}
        for name, value in own.items():
            theirs = user_variable(name)
            if theirs is not None and theirs.rstrip("/") != value.rstrip("/"):
                out[name] = redact(theirs)
        return out

    def shell_exports(self) -> dict[str, str]:
        """The variables to export in a shell so that Prefect, MLflow and `aicml` there use this stack.

        Values are shell words ready for ``export NAME=VALUE`` (an assignment is not word-split, so
        ``export NAME="VALUE"`` works too). Prefect's auth string (``aicml up --auth``)
        is a command substitution reading the 0600 file, ``$(cat <home>/prefect-api-auth)``, never the
        password itself. The stack's artifacts are served through the MLflow server, so no S3 variable is
        needed; ``AIC_*`` settings appear only where they differ from the defaults.
        """
        s = self.settings
        exports = {
            "PREFECT_API_URL": shlex.quote(s.local_prefect_url),
            "MLFLOW_TRACKING_URI": shlex.quote(s.local_tracking_uri),
        }
        if self.auth_string() is not None:
            exports["PREFECT_API_AUTH_STRING"] = f"$(cat {shlex.quote(str(self.auth_file))})"
        defaults = AicSettings.model_fields
        for field in ("home", "host", "prefect_port", "mlflow_port", "metrics_port", "prometheus_port"):
            value = getattr(s, field)
            if value != defaults[field].default:
                shown = self.home if field == "home" else value
                exports[f"AIC_{field.upper()}"] = shlex.quote(str(shown))
        return exports

    def shell_export_lines(self) -> list[str]:
        """``export NAME=VALUE`` lines of ``shell_exports`` (what `aicml up` and `aicml env` print)."""
        return [f"export {name}={value}" for name, value in self.shell_exports().items()]

    def specs(self) -> list[ServiceSpec]:
        s = self.settings
        env = self.service_env()
        prefect_db = s.database_for(s.prefect_database, "asyncpg") or (
            f"sqlite+aiosqlite:///{self.home / 'prefect' / 'prefect.db'}"
        )
        mlflow_db = s.database_for(s.mlflow_database, "psycopg") or f"sqlite:///{self.home / 'mlflow.db'}"
        server_env = {
            **env,
            "PREFECT_API_DATABASE_CONNECTION_URL": prefect_db,
            "PREFECT_UI_API_URL": s.local_prefect_url,
        }
        if "PREFECT_API_AUTH_STRING" in env:
            server_env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"]
        return [
            ServiceSpec(
                name="prefect-server",
                # `prefect server start` with slot acquisition that waits for SQLite's write lock
                # instead of answering 503 (see aicml/stack/prefect_server.py).
                command=[
                    sys.executable,
                    "-m",
                    "aicml.stack.prefect_server",
                    "server",
                    "start",
                    "--host",
                    s.host,
                    "--port",
                    str(s.prefect_port),
                ],
                env=server_env,
                health_url=f"{s.local_prefect_url}/health",
                address=s.local_prefect_url.removesuffix("/api"),
            ),
            ServiceSpec(
                name="mlflow-server",
                command=[
                    _bin("mlflow"),
                    "server",
                    "--host",
                    s.host,
                    "--port",
                    str(s.mlflow_port),
                    "--backend-store-uri",
                    mlflow_db,
                    "--artifacts-destination",
                    str(self.home / "mlartifacts"),
                    "--serve-artifacts",
                    # One uvicorn worker: each imports the whole tracking server (about 4.5 CPU s at every
                    # start, on the cores the Prefect server starts on); one user's runs do not need two.
                    "--workers",
                    "1",
                ],
                # MLflow's background job runner (GenAI scorers) starts half a dozen consumer processes
                # that nothing here uses; without it the server needs a fraction of the memory.
                env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                health_url=f"{s.local_tracking_uri}/health",
                address=s.local_tracking_uri,
            ),
            ServiceSpec(
                name="metrics-exporter",
                command=[
                    sys.executable,
                    "-m",
                    "aicml.observability.exporter",
                    "--host",
                    s.host,
                    "--port",
                    str(s.metrics_port),
                    "--dir",
                    str(self.metrics_dir),
                    "--page",
                    str(self.metrics_page),
                ],
                env=env,
                health_url=f"http://{s.host}:{s.metrics_port}/metrics",
                address=f"http://{s.host}:{s.metrics_port}/metrics",
            ),
            ServiceSpec(
                name="worker",
                # `prefect worker start` behind a wait for the Prefect API and the pool (aicml/stack/worker.py),
                # so that it can be spawned with the servers.
                command=[
                    sys.executable,
                    "-m",
                    "aicml.stack.worker",
                    "--concurrency",
                    str(s.pool_concurrency),
                    "worker",
                    "start",
                    "--pool",
                    s.work_pool,
                    "--type",
                    "process",
                    "--name",
                    f"aic-{s.work_pool}",
                ],
                # Poll every second, not Prefect's 10: on one machine a flow run (a landed file's,
                # `prefect deployment run`'s) then waits half a second on average for the worker to pick it
                # up, for one cheap query a second.
                env={
                    **env,
                    "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_POLL_SECONDS),
                    "MLFLOW_TRACKING_URI": s.tracking_uri,
                },
                health_url=None,
                address=f"pool {s.work_pool}",
                cwd=Path.cwd(),
            ),
        ]

    def prometheus_spec(self) -> ServiceSpec:
        """Prometheus from Debian's package, scraping the metrics exporter with the cluster's alert rules."""
        s = self.settings
        binary = shutil.which("prometheus")
        if binary is None:
            raise StackError(
                "Prometheus is not installed: run `make system-deps` (Debian package `prometheus`), or start "
                "the stack without --with-prometheus."
            )
        return ServiceSpec(
            name=PROMETHEUS,
            command=[
                binary,
                f"--config.file={self.prometheus_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.prometheus_dir / 'data'}",
                f"--web.listen-address={s.host}:{s.prometheus_port}",
                "--storage.tsdb.retention.time=15d",
            ],
            env={},
            health_url=f"{self.prometheus_url}/-/ready",
            address=self.prometheus_url,
        )

    def start_prometheus(self) -> None:
        """Write Prometheus's configuration and rules, start it (idempotent), then write the metrics page
        (its links point at the web UI this Prometheus has)."""
        from aicml.observability import dashboards, prometheus

        s = self.settings
        spec = self.prometheus_spec()
        prometheus.write_files(self.prometheus_dir, f"{s.host}:{s.metrics_port}", PROMETHEUS_SCRAPE_SECONDS)
        start(spec, self.run_dir, self.log_dir, timeout=60.0)
        dashboards.write_page(
            self.metrics_page,
            prometheus.monitoring_dir() / "dashboards",
            prometheus.ui_url(self.prometheus_url),
        )

    def up(
        self, services: tuple[str, ...] = SERVICES, auth: bool | None = None, with_prometheus: bool = False
    ) -> list[ServiceStatus]:
        """Start what is not running (idempotent); create PostgreSQL databases and the work pool first.

        ``auth`` True starts the Prefect server with API auth (a random password in ``auth_file``), False
        without; None keeps how this stack's home was last started. ``with_prometheus`` also starts a local
        Prometheus with the cluster's alert rules, and writes the metrics page the exporter serves.
        """
        s = self.settings
        if auth is not None:
            self._set_auth(auth)
        for directory in (self.home, self.home / "prefect", self.home / "mlartifacts", self.metrics_dir):
            directory.mkdir(parents=True, exist_ok=True)
        if s.database_url is not None:
            admin = s.database_url.get_secret_value()
            ensure_postgres_database(admin, s.prefect_database)
            ensure_postgres_database(admin, s.mlflow_database)
            if s.data_integration_database:
                ensure_postgres_database(admin, s.data_integration_database)
            self.move_ingest_state()
        specs = [spec for spec in self.specs() if spec.name in services]
        # Every service is spawned at once: the start-ups of the Prefect server, the MLflow server and the
        # worker (imports, migrations of a new database) overlap instead of adding up; the worker waits for the
        # Prefect API itself. Meanwhile this process imports what it needs once Prefect answers (the pool,
        # automations and block types), so that what follows Prefect's health is API calls only.
        preload = _preload_prefect_client() if {"worker", "prefect-server"} & set(services) else None
        since = datetime.now(UTC)
        launched = {spec.name: launch(spec, self.run_dir, self.log_dir) for spec in specs}
        if "prefect-server" in launched:
            await_ready(launched["prefect-server"], self.run_dir)
        if preload is not None:
            preload.join()  # never two threads importing Prefect at once
        if "worker" in launched:
            self.ensure_work_pool()  # the worker makes sure of it too; whichever comes first creates it
        if "prefect-server" in launched:
            self.ensure_automations()
            self.ensure_block_types()
        for name, item in launched.items():
            if name == "worker" and item.process is not None:
                # Ready once it has told the server it polls the pool (its first heartbeat), not merely alive.
                with self._worker_probe(since) as online:
                    await_ready(item, self.run_dir, timeout=120.0, ready=online)
            else:
                await_ready(item, self.run_dir)
        if with_prometheus:
            self.start_prometheus()
        return self.status()

    def ensure_block_types(self) -> list[str]:
        """Register the block types (ours and the prefect-aws / prefect-sqlalchemy ones) with the stack's
        Prefect server, so that the UI can create them; returns their slugs."""
        from blocks.registration import BlockRegistrationError, register_blocks

        url = self.settings.local_prefect_url
        try:
            with self.prefect_api():
                return register_blocks(url)
        except BlockRegistrationError as exc:
            raise StackError(
                f"Registering the Prefect block types with {url} failed: {exc}. The server's log: "
                f"{self.log_dir / 'prefect-server.log'}"
            ) from exc

    def move_ingest_state(self) -> None:
        """The ingest state into its own database: stacks on PostgreSQL kept it in Prefect's, where it
        stays readable until this copy (nothing is removed there)."""
        from aicml.data.state import IngestState

        s = self.settings
        previous = s.database_for(s.prefect_database, "psycopg")
        if previous is not None:
            IngestState(s.ingest_state_url()).adopt(previous)

    def ensure_automations(self) -> None:
        """The crash automation always; the failure notification when a webhook URL is configured."""
        from aicml.stack.automations import ensure_crash_automation, ensure_failure_notification
        from aicml.stack.limits import ensure_concurrency_limits

        with self.prefect_api():
            ensure_concurrency_limits(self.settings.local_prefect_url)
            ensure_crash_automation()
            if self.settings.failure_webhook_url:
                ensure_failure_notification(self.settings.failure_webhook_url)

    @contextlib.contextmanager
    def _worker_probe(self, since: datetime) -> Iterator[Callable[[], bool]]:
        """A check that this stack's worker has sent a heartbeat to its pool since ``since`` (one client for
        every poll)."""
        from prefect.client.orchestration import SyncPrefectClient

        s = self.settings
        name = f"aic-{s.work_pool}"
        with SyncPrefectClient(s.local_prefect_url, auth_string=self.auth_string()) as client:

            def online() -> bool:
                try:
                    workers = client.read_workers_for_work_pool(s.work_pool)
                except Exception:  # the API answers with httpx errors; the next poll asks again
                    return False
                beats = [w.last_heartbeat_time for w in workers if w.name == name and w.last_heartbeat_time]
                return any(beat >= since for beat in beats)

            yield online

    def ensure_work_pool(self) -> None:
        from aicml.stack.pools import ensure_process_pool

        with self.prefect_api():
            ensure_process_pool(
                self.settings.local_prefect_url, self.settings.work_pool, self.settings.pool_concurrency
            )

    def down(self) -> list[str]:
        """Stop, by pid, what `up` started (worker first) and the model servers the stack's flows started.

        Only processes named by pid files under this stack's `run/` are touched; returns the names stopped.
        """
        grace = {"worker": WORKER_STOP_GRACE_SECONDS}
        stopped = [
            name
            for name in (PROMETHEUS, *reversed(SERVICES))
            if stop(self.run_dir, name, **({"timeout": grace[name]} if name in grace else {}))
        ]
        others = sorted(p.stem for p in self.run_dir.glob("*.pid") if p.stem not in SERVICES)
        return stopped + [name for name in others if stop(self.run_dir, name)]

    def status(self) -> list[ServiceStatus]:
        """Every service of the stack; Prometheus too while it runs (it is started only when asked for)."""
        specs = self.specs()
        if read_pid(self.run_dir, PROMETHEUS) is not None:
            specs.append(
                ServiceSpec(PROMETHEUS, [], {}, f"{self.prometheus_url}/-/ready", self.prometheus_url)
            )
        out = []
        for spec in specs:
            pid = read_pid(self.run_dir, spec.name)
            ok = pid is not None and (spec.health_url is None or healthy(spec.health_url, timeout=1.0))
            out.append(ServiceStatus(spec.name, pid, spec.address, ok))
        return out

    def require_up(self, services: tuple[str, ...] = SERVICES) -> None:
        """StackError naming what of ``services`` is not running (``uses_local()``: only what the clients
        use under these settings)."""
        missing = [st.name for st in self.status() if st.name in services and not st.healthy]
        if missing:
            raise StackError(f"Not running: {', '.join(missing)}. Start the stack with `aicml up`.")

    def export_client_env(self, exclude: tuple[str, ...] = ()) -> None:
        """Point this process at the stack: its environment and, if Prefect is already imported, Prefect.

        Prefect reads its settings once, when it is imported (``up`` imports it to create the automations
        and limits): an environment changed afterwards does not reach it, and a flow called in this process
        would run against a temporary server of its own (on the same SQLite file, contending for its lock)
        instead of the stack's.

        A standard variable the user set (``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL``, ...) is kept: it
        says where they want their runs to go. One this process exported for an earlier stack is replaced.
        """
        from blocks.settings import EXPORTED, STANDARD_VARIABLES, user_variable

        for name, value in self.client_env().items():
            if name in exclude or (name in STANDARD_VARIABLES and user_variable(name) is not None):
                continue
            os.environ[name] = value
            EXPORTED[name] = value
        if "prefect.context" in sys.modules:
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()

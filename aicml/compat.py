"""Every use of a dependency's private API, in one place, each fenced to the versions it was written for.

A patch here replaces or wraps something its library does not promise to keep. Each one:

- names the distribution and the versions it was written and tested for (a ``Fence``); on any other
  installed version it does nothing, warns once (``CompatWarning``, naming the package and version) and
  the process runs the library unchanged: slower, never wrong. Prefect's fences are strict: Prefect is
  the orchestrator every process of ours runs under, so an untested minor stops the process with an error
  that names the installed version and what to do (install the tested one, or set
  ``AIC_ALLOW_UNTESTED_PREFECT=true`` to run Prefect unpatched);
- checks, before patching, that the attribute is still there with the parameters the patch relies on;
- is installed by an explicit call where a process starts, never as a side effect of an import:

  ======================================  ==================================================================
  ``install()``                           processes that run flows: ``aicml.stack.engine`` (the local
                                          worker's flow-run command), and tests and benchmarks that call
                                          flows in-process. Installs ``heartbeats_that_stop_at_once``
                                          and ``quiet_downloads``.
  ``databricks_checked_once()``           MLflow clients: ``aicml.registry.tracking.Tracking`` calls it
                                          where it makes one (MLflow is imported there, not at a flow-run
                                          process's start, where it would delay the first task)
  ``quiet_downloads()``                   not a patch: MLflow's public switch for its download progress
                                          bars, off by default in every process of ours (``install()``,
                                          ``aicml serve``, the ``aicml`` command)
  ``take_slots_under_write_lock()``       the local stack's Prefect server (``aicml.stack.prefect_server``)
  ``share_compiled_templates()``          the first Data Docs build of a process (``build_data_docs``)
  ``direct_predict(pyfunc)``              an accessor, not a patch: serving's validated fast path
  ======================================  ==================================================================

``tests/aicml/test_compat.py`` fails when an installed version leaves a fence or a patched attribute moves or
changes its parameters: an upgrade then says so instead of silently losing (or breaking) the patch.
Optuna's private storage access is not here: the tuning engine uses Optuna's public API.

This module imports only the standard library and ``packaging`` at import time.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packaging.specifiers import SpecifierSet


class CompatWarning(RuntimeWarning):
    """A private-API patch was not installed: the dependency's version or the patched attribute changed."""


_warned: set[str] = set()


def _warn_once(patch: str, reason: str) -> None:
    if patch not in _warned:
        _warned.add(patch)
        warnings.warn(
            f"aicml.compat: {patch} not installed ({reason}); running the library unpatched",
            CompatWarning,
            stacklevel=3,
        )


ALLOW_UNTESTED_PREFECT_ENV = "AIC_ALLOW_UNTESTED_PREFECT"


def _distribution_version(package: str) -> str:
    """The installed version of distribution ``package`` (one place, so tests can pretend another)."""
    return importlib.metadata.version(package)


@dataclass(frozen=True)
class Fence:
    """The versions of ``package`` (a distribution name) a patch was written and tested for.

    ``strict``: outside the fence, stop with an error instead of warning and running unpatched, unless
    ``escape`` (an environment variable, read when a patch is installed) is ``true``.
    """

    package: str
    versions: str  # a PEP 440 specifier set, e.g. ">=3.9,<3.10"
    strict: bool = False
    escape: str | None = None

    def installed(self) -> str | None:
        try:
            return _distribution_version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None

    def holds(self) -> bool:
        version = self.installed()
        return version is not None and SpecifierSet(self.versions).contains(version, prereleases=True)

    def admits(self, patch: str) -> bool:
        """True when the installed version is inside the fence; otherwise warn once (naming it) and False,
        or, for a strict fence without its escape set, raise ``ConfigurationError`` saying what to do."""
        if self.holds():
            return True
        escaped = self.escape is not None and os.environ.get(self.escape, "").strip().lower() == "true"
        if self.strict and not escaped:
            from aicml.errors import ConfigurationError

            installed = self.installed() or "not installed"
            escape = (
                f", or set {self.escape}=true to run {self.package} {installed} with its own code unpatched"
                if self.escape
                else ""
            )
            raise ConfigurationError(
                f"aic-ml patches {patch}, a private part of {self.package} that it was written and tested for "
                f"with {self.package}{self.versions}; installed: {self.package} {installed}. Install the tested "
                f"version (`pip install -c constraints.txt {self.package}`, or "
                f"`pip install '{self.package}{self.versions}'`){escape}."
            )
        _warn_once(patch, f"written for {self.package}{self.versions}, installed: {self.installed()}")
        return False


def parameters(function: Any) -> tuple[str, ...]:
    """The parameter names of ``function`` (``self`` included for a plain function taken from a class)."""
    return tuple(inspect.signature(function).parameters)


# ---------------------------------------------------------------------------------------------------------
# Prefect: flow-run heartbeats that stop the moment the flow ends (prefect.flow_engine._send_heartbeats)

HEARTBEATS = Fence("prefect", ">=3.9,<3.10", strict=True, escape=ALLOW_UNTESTED_PREFECT_ENV)
HEARTBEATS_PARAMETERS = ("engine", "join_on_exit")


def heartbeats_that_stop_at_once() -> bool:
    """Run every flow run's heartbeats with ``aicml.stack.heartbeats.flow_heartbeats``; True when installed.

    Prefect 3.9's loop sleeps in one-second steps and a synchronous flow joins it on exit (every sync flow
    run ended up to a second late); ``flow_heartbeats`` beats the same way but waits on its stop event.
    The engine calls the module global ``_send_heartbeats(self)`` / ``(self, join_on_exit=False)``.
    """
    patch = "prefect.flow_engine._send_heartbeats"
    if not HEARTBEATS.admits(patch):
        return False
    import prefect.flow_engine as flow_engine

    from aicml.stack.heartbeats import flow_heartbeats

    current = getattr(flow_engine, "_send_heartbeats", None)
    if current is flow_heartbeats:
        return True
    if not callable(current) or parameters(current) != HEARTBEATS_PARAMETERS:
        _warn_once(patch, "the attribute is gone or its parameters changed")
        return False
    flow_engine._send_heartbeats = flow_heartbeats
    return True


def install() -> None:
    """The patches of a process that runs flows; call once where the process starts (idempotent).

    Raises ``ConfigurationError`` when the installed Prefect is not the minor the patches were written for.
    """
    quiet_downloads()
    heartbeats_that_stop_at_once()


# ---------------------------------------------------------------------------------------------------------
# MLflow: whether the process runs on Databricks, asked once, not before every REST request
# (mlflow.tracking.request_header.databricks_request_header_provider.DatabricksRequestHeaderProvider.in_context)

HEADERS = Fence("mlflow", ">=3.17,<3.18")
_ONCE = "_aicml_once"
_databricks_once: bool | None = None  # the outcome of the one installation a process makes


def databricks_checked_once() -> bool:
    """Answer MLflow's "is this a Databricks cluster, notebook or job?" once per process; True when installed.

    MLflow's client asks it before every REST request (to add Databricks headers). Each of its three checks
    tries to import Databricks' runtime and PySpark; off Databricks those imports fail, and a failed import
    is not remembered, so every request searched ``sys.path`` for them again: 0.28 ms per request in a flow
    process here (0.002 ms once answered), about 45 ms of a pipeline run's 160 requests to the tracking
    server. Where a process runs does not change while it runs, so the first answer is kept; on Databricks
    the headers are still built for every request, as before.
    """
    global _databricks_once
    if _databricks_once is not None:
        return _databricks_once
    _databricks_once = _check_databricks_once()
    return _databricks_once


def _check_databricks_once() -> bool:
    patch = "mlflow DatabricksRequestHeaderProvider.in_context"
    if not HEADERS.admits(patch):
        return False
    from mlflow.tracking.request_header import databricks_request_header_provider as module

    provider = getattr(module, "DatabricksRequestHeaderProvider", None)
    current = getattr(provider, "in_context", None)
    if getattr(current, _ONCE, False):
        return True
    if not callable(current) or parameters(current) != ("self",):
        _warn_once(patch, "the provider or its in_context(self) is gone")
        return False
    answers: list[bool] = []

    @functools.wraps(current)
    def in_context(self: Any) -> bool:
        if not answers:  # two threads asking at once both ask MLflow: the same answer, kept once
            answers.append(bool(current(self)))
        return answers[0]

    setattr(in_context, _ONCE, True)
    provider.in_context = in_context  # type: ignore[union-attr]
    return True


# ---------------------------------------------------------------------------------------------------------
# MLflow: no download progress bars (a public setting, not a patch)

PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def quiet_downloads() -> None:
    """Turn MLflow's artifact progress bars off in this process and the ones it starts, unless the user
    set ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` (their value wins).

    Each model load drew ``Downloading artifacts: 12%|...`` lines into flow-run and server logs; MLflow
    reads the variable each time it makes a bar, so setting it at process start is enough. Loaders log one
    line instead (``aicml.serving.runtime.load_served``).
    """
    os.environ.setdefault(PROGRESS_BAR_ENV, "false")


# ---------------------------------------------------------------------------------------------------------
# Prefect server: concurrency slots taken under SQLite's write lock
# (prefect.server.api.concurrency_limits_v2._acquire_concurrency_slots; see aicml/stack/prefect_server.py)

SLOTS = Fence("prefect", ">=3.9,<3.10", strict=True, escape=ALLOW_UNTESTED_PREFECT_ENV)
SLOTS_PARAMETERS = ("session", "names", "slots", "mode")
_MARK = "_aicml_begin_immediate"


def take_slots_under_write_lock() -> bool:
    """Begin slot acquisition with ``BEGIN IMMEDIATE`` on SQLite; True when applied (idempotent).

    False when this Prefect is outside the fence or has no such function to wrap: the server then runs
    unchanged. The begin mode is SQLite-only; on PostgreSQL the wrap changes nothing.
    """
    patch = "prefect.server.api.concurrency_limits_v2._acquire_concurrency_slots"
    if not SLOTS.admits(patch):
        return False
    from prefect.server.api import concurrency_limits_v2 as api
    from prefect.server.database import configurations

    acquire = getattr(api, "_acquire_concurrency_slots", None)
    if acquire is not None and getattr(acquire, _MARK, False):
        return True
    begin_mode = getattr(configurations, "SQLITE_BEGIN_MODE", None)
    if acquire is None or begin_mode is None or parameters(acquire) != SLOTS_PARAMETERS:
        _warn_once(patch, "the function, its parameters or SQLITE_BEGIN_MODE changed")
        return False

    @functools.wraps(acquire)
    async def acquire_immediately(*args: Any, **kwargs: Any) -> Any:
        # The endpoint's session connects, and so emits BEGIN, at the first statement, which runs in here.
        token = begin_mode.set("IMMEDIATE")
        try:
            return await acquire(*args, **kwargs)
        finally:
            begin_mode.reset(token)

    setattr(acquire_immediately, _MARK, True)
    api._acquire_concurrency_slots = acquire_immediately
    return True


# ---------------------------------------------------------------------------------------------------------
# Great Expectations: compiled Jinja templates shared by every view (DefaultJinjaView.__init__)

TEMPLATES = Fence("great_expectations", ">=1.24,<1.25")
TEMPLATES_PARAMETERS = ("self", "custom_styles_directory", "custom_views_directory")
_TEMPLATE_CACHE: Any = None


def share_compiled_templates() -> Any:
    """Keep Great Expectations' compiled Jinja templates for the life of the process.

    GE makes a new Jinja environment for every view it renders, so each Data Docs build compiled
    the same templates again (about 0.25 s a build, most of a warm build's rendering). Jinja's own
    answer is a bytecode cache: this one lives in memory, is keyed by template name and a checksum
    of its source, and is attached to each environment GE makes. The templates, their context and
    their output are GE's, unchanged. Returns the cache (its ``store`` holds what was compiled), or
    None when not installed (GE outside the fence, or its view changed).
    """
    global _TEMPLATE_CACHE
    if _TEMPLATE_CACHE is not None:
        return _TEMPLATE_CACHE
    patch = "great_expectations DefaultJinjaView.__init__"
    if not TEMPLATES.admits(patch):
        return None
    import jinja2
    from great_expectations.render.view import view as gx_view

    make_view = gx_view.DefaultJinjaView.__init__
    if parameters(make_view) != TEMPLATES_PARAMETERS:
        _warn_once(patch, "its parameters changed")
        return None

    class MemoryBytecodeCache(jinja2.BytecodeCache):
        def __init__(self) -> None:
            self.store: dict[str, bytes] = {}

        def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            code = self.store.get(bucket.key)
            if code is not None:
                bucket.bytecode_from_string(code)

        def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            self.store[bucket.key] = bucket.bytecode_to_string()

    cache = MemoryBytecodeCache()

    # The same parameters as GE's: it reads them (getfullargspec) to pick what config to pass.
    def with_cache(
        self: Any, custom_styles_directory: Any = None, custom_views_directory: Any = None
    ) -> None:
        make_view(self, custom_styles_directory, custom_views_directory)
        self.env.bytecode_cache = cache

    gx_view.DefaultJinjaView.__init__ = with_cache  # type: ignore[method-assign]
    _TEMPLATE_CACHE = cache
    return cache


# ---------------------------------------------------------------------------------------------------------
# MLflow: a loaded pyfunc model's flavor predict function (PyFuncModel._predict_fn)

PREDICT = Fence("mlflow", ">=3.17,<3.18")


def direct_predict(pyfunc: Any) -> Callable[[Any], Any] | None:
    """``pyfunc``'s flavor predict function, called as ``PyFuncModel.predict`` would after its checks.

    It skips MLflow's per-call schema enforcement (about a millisecond), so use it only where the input
    was already validated into exactly the dtypes that enforcement would produce. None (use the public
    ``pyfunc.predict``) when MLflow is outside the fence, the attribute is gone, or the model's signature
    has params or comes from type hints or an input example (``predict`` converts those inputs).
    """
    patch = "mlflow PyFuncModel._predict_fn"
    if not PREDICT.admits(patch):
        return None
    meta = pyfunc.metadata
    predict = getattr(pyfunc, "_predict_fn", None)
    from_hint = getattr(meta, "_is_signature_from_type_hint", None)
    from_example = getattr(meta, "_is_type_hint_from_example", None)
    if not callable(predict) or from_hint is None or from_example is None:
        _warn_once(patch, "PyFuncModel._predict_fn or the signature's type-hint checks are gone")
        return None
    if meta.get_params_schema() is not None or from_hint() or from_example():
        return None
    # PyFuncModel.predict passes params by keyword when the function names them (not as **kwargs).
    parameter = inspect.signature(predict).parameters.get("params")
    if parameter is not None and parameter.kind != inspect.Parameter.VAR_KEYWORD:
        return functools.partial(predict, params=None)
    return predict  # type: ignore[no-any-return]

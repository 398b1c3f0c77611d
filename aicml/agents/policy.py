"""What an agent definition may name, decided by the operator's configuration and never by an API caller.

* ``python`` agents run code: their ``module:function`` must live in a module the operator allowlisted
  (``AIC_AGENTS_PYTHON_MODULES``; a package allows its submodules).
* ``http`` agents and ``llm`` agents with a ``base_url`` reach the network: the URL must start with a
  prefix the operator allowlisted (``AIC_AGENTS_REMOTE_URLS``). The bearer token sent to a remote agent is the
  operator's (``AIC_AGENTS_REMOTE_TOKENS``, by URL prefix), never read from an environment variable a caller
  names.
* ``mlflow`` agents load only registered versions (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``),
  and their files are checked against the registry's checksum when they load.

The registry checks a definition when it is registered (403, nothing stored) and the runtime checks it
again when it loads (a health check, the router), so narrowing the configuration takes effect for
definitions registered before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aicml.agents.errors import AgentError
from aicml.agents.spec import AgentSpec, HttpImpl, LlmImpl, MlflowImpl, PythonImpl


class AgentPolicyError(AgentError):
    """An agent definition names code or an address the operator did not allow (HTTP 403)."""


class ModelUriError(AgentError, ValueError):
    """A model agent's URI is not a registry URI (HTTP 422)."""


def _normalised(url: str) -> tuple[str, str, str] | None:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    segments = parts.path.lower().replace("%2e", ".").split("/")
    if (
        any(segment in (".", "..") for segment in segments)
        or "\\" in parts.path
        or "%2f" in parts.path.lower()
    ):
        return None  # a path that a client would normalise out of the allowed prefix
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, f"{parts.hostname.lower()}:{port}", parts.path or "/"


def url_matches(url: str, prefix: str) -> bool:
    """Same scheme, host and port, and a path under the prefix's path (compared on whole segments)."""
    given, allowed = _normalised(url), _normalised(prefix)
    if given is None or allowed is None or given[:2] != allowed[:2]:
        return False
    base = allowed[2].rstrip("/") + "/"
    return given[2] == allowed[2] or (given[2].rstrip("/") + "/").startswith(base)


@dataclass(frozen=True)
class AgentPolicy:
    """The operator's allowlists; the empty policy allows no python agent and no remote address."""

    python_modules: tuple[str, ...] = ()
    remote_urls: tuple[str, ...] = ()
    remote_tokens: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_settings(cls) -> AgentPolicy:
        from aicml.agents.settings import AgentSettings

        policy: AgentPolicy = AgentSettings().policy()
        return policy

    def module_allowed(self, module: str) -> bool:
        return any(module == allowed or module.startswith(allowed + ".") for allowed in self.python_modules)

    def url_allowed(self, url: str) -> bool:
        return any(url_matches(url, prefix) for prefix in self.remote_urls)

    def token_for(self, url: str) -> str | None:
        """The operator's token for the longest configured prefix ``url`` is under, if any."""
        matches = [prefix for prefix in self.remote_tokens if url_matches(url, prefix)]
        return self.remote_tokens[max(matches, key=len)] if matches else None

    def check(self, spec: AgentSpec) -> None:
        """Raise ``AgentPolicyError``/``ModelUriError`` naming what is not allowed; return if all is."""
        impl = spec.implementation
        if isinstance(impl, PythonImpl):
            module = impl.target.partition(":")[0]
            if not self.module_allowed(module):
                raise AgentPolicyError(
                    f"implementation.target: module {module!r} is not in the operator's allowlist of python "
                    f"agent modules (AIC_AGENTS_PYTHON_MODULES = {list(self.python_modules)}); python agents run "
                    "code, so only the operator can allow their modules."
                )
        elif isinstance(impl, HttpImpl):
            if impl.token_env is not None:
                raise AgentPolicyError(
                    "implementation.token_env: a remote agent's token is not read from an environment variable "
                    "a definition names; the operator configures it (AIC_AGENTS_REMOTE_TOKENS)."
                )
            self._check_url("implementation.url", impl.url)
        elif isinstance(impl, LlmImpl) and impl.base_url is not None:
            self._check_url("implementation.base_url", impl.base_url)
        elif isinstance(impl, MlflowImpl):
            from aicml.errors import RegistryError
            from aicml.registry.checksums import parse_model_uri

            try:
                parse_model_uri(impl.model_uri)
            except RegistryError as exc:
                raise ModelUriError(f"implementation.model_uri: {exc}") from None

    def _check_url(self, where: str, url: str) -> None:
        if _normalised(url) is None:
            raise AgentPolicyError(f"{where}: only http(s) URLs without credentials in them are allowed.")
        if not self.url_allowed(url):
            raise AgentPolicyError(
                f"{where}: {urlsplit(url).netloc or url!r} is not under a URL prefix the operator allowlisted "
                f"for remote agents (AIC_AGENTS_REMOTE_URLS = {list(self.remote_urls)})."
            )

"""Errors of the agent orchestration service; all are ``AicError`` so tasks do not retry them blindly."""

from __future__ import annotations

from aicml.errors import AicError, ConfigurationError


class AgentError(AicError):
    """Base class of the agent service's errors."""


class AgentNotFound(AgentError):
    """No agent (or no such version) is registered."""


class AgentConflict(AgentError):
    """The agent version already exists with a different definition, or a rollout is already running."""


class LifecycleError(AgentError):
    """A lifecycle transition that the state machine does not allow."""


class AgentUnavailable(AgentError):
    """The agent exists but cannot take calls now (not active, failed health check, no routable version)."""


class AgentCallError(AgentError):
    """One agent call failed after its retries; ``agent`` names it."""

    def __init__(self, agent: str, message: str) -> None:
        self.agent = agent
        super().__init__(f"Agent {agent!r} failed: {message}")

    def __reduce__(self) -> tuple[type[AgentCallError], tuple[str, str]]:
        return (AgentCallError, (self.agent, str(self).split(": ", 1)[-1]))


class DeadlineExceeded(AgentError):
    """The message's deadline passed before the coordination finished."""


class MessageError(AgentError):
    """A message or payload does not match the protocol or the agent's input/output schema."""


class AgentStoreUnavailable(AgentError):
    """agent_db did not answer (restarting, unreachable) within the store's bounded retries; try again later."""


class LeaseTimeout(AgentError):
    """A resource lease could not be granted before the wait ran out."""


class AgentConfigurationError(ConfigurationError):
    """A setting of the agent service is missing or invalid (database URL, auth token, endpoint block)."""

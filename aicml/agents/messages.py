"""The agent protocol: typed, versioned messages with correlation ids and deadlines (in process and as JSON).

The deadline travels as the *remaining* budget (``timeout_ms``), as gRPC does, so hosts with skewed
clocks agree on it; each receiver turns it into a local monotonic deadline on arrival.
"""

from __future__ import annotations

import time
import uuid
from contextvars import ContextVar
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL: Literal["aic.agents/v1"] = "aic.agents/v1"


def new_id() -> str:
    return uuid.uuid4().hex


# The coordination being run in this task: (correlation id, local monotonic deadline or None). Agents that
# forward work elsewhere (HTTP agents) read it to pass the same correlation id and the remaining budget on.
CURRENT_COORDINATION: ContextVar[tuple[str, float | None]] = ContextVar("aic_agents_coordination")


class AgentMessage(BaseModel):
    """A request to an agent or a coordination."""

    model_config = ConfigDict(extra="forbid")

    protocol: Literal["aic.agents/v1"] = Field(default=PROTOCOL, description="Protocol and its version.")
    id: str = Field(default_factory=new_id, max_length=64, description="Id of this message.")
    correlation_id: str = Field(
        default_factory=new_id, max_length=64, description="Id shared by every message of one coordination."
    )
    sender: str = Field(default="client", max_length=128, description="Who sends it.")
    recipient: str | None = Field(
        default=None, max_length=128, description="Agent or coordination it is for."
    )
    timeout_ms: float | None = Field(
        default=None, gt=0, le=3_600_000, description="Remaining time budget; None: the agents' own timeouts."
    )
    payload: dict[str, Any] = Field(
        default_factory=dict, description="The input, per the agent's input schema."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Routing hints, e.g. `skill`, `version`."
    )

    def deadline(self, now: float | None = None) -> float | None:
        """A local ``time.monotonic()`` deadline for this message, or None when it has none."""
        if self.timeout_ms is None:
            return None
        return (time.monotonic() if now is None else now) + self.timeout_ms / 1000.0


class Outcome(StrEnum):
    """How a coordination ended; also the ``outcome`` label of ``ml_agent_orchestration_requests``."""

    SUCCESS = "success"
    PARTIAL = "partial"  # some agents failed, the pattern's policy accepted the rest
    FAILURE = "failure"
    TIMEOUT = "timeout"
    REJECTED = "rejected"  # bad message, unknown or inactive agent: the caller's fault


class CallRecord(BaseModel):
    """One agent call inside a coordination: a span of its trace."""

    agent: str
    version: str
    started_ms: float = Field(description="Start, milliseconds after the coordination started.")
    duration_ms: float
    attempts: int = 1
    ok: bool = True
    error: str | None = None


class AgentReply(BaseModel):
    """The answer to an ``AgentMessage``: same correlation id, the output, and what happened on the way."""

    model_config = ConfigDict(extra="forbid")

    protocol: Literal["aic.agents/v1"] = PROTOCOL
    id: str = Field(default_factory=new_id)
    correlation_id: str
    in_reply_to: str
    sender: str
    outcome: Outcome
    payload: dict[str, Any] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list, description="Failed calls and why, `agent: message`.")
    calls: list[CallRecord] = Field(default_factory=list, description="One record per agent call.")
    duration_ms: float = 0.0
    trace_id: str | None = Field(default=None, description="MLflow trace id when tracing is on.")

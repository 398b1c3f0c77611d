"""The documentation stays true: the parameters reference matches the flows, the README stays a front door,
and every relative link in the README and docs/ points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from pydantic import BaseModel, Field

from aicml.stack import params_reference
from aicml.stack.params_reference import (
    REFERENCE_FILE,
    SETTINGS_FILE,
    flow_section,
    render,
    render_settings,
    settings_block,
)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(page: Path) -> list[str]:
    """Link targets of a markdown page that are not URLs (code is not a link)."""
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text()))
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_parameters_reference_is_current() -> None:
    assert REFERENCE_FILE.exists(), "docs/parameters.md is missing: run `make docs`."
    assert REFERENCE_FILE.read_text() == render(), "docs/parameters.md is stale: run `make docs`."


def test_settings_tables_are_current() -> None:
    block = settings_block(SETTINGS_FILE.read_text())
    assert block, "docs/settings.md lost its generated block markers."
    assert block == render_settings(), "docs/settings.md's settings tables are stale: run `make docs`."
    for name in ("AIC_HOME", "AIC_TRAINING_CHECKPOINT_DIR", "AIC_AGENTS_TOKEN"):
        assert f"| `{name}` |" in block


def test_reference_covers_every_deployed_flow_and_nested_field() -> None:
    text = REFERENCE_FILE.read_text()
    for entrypoint in params_reference.deployed_entrypoints():
        assert f"Entrypoint `{entrypoint}`" in text
    # nested models are flattened to the dotted paths a one-field override uses
    assert "| `trainer.max_epochs` |" in text
    assert "| `tune.budget.n_trials` |" in text


class _Inner(BaseModel):
    depth: int = Field(default=3, description="How deep.")


class _Params(BaseModel):
    """Parameters of the example."""

    name: str = Field(description="A name.")
    inner: _Inner = Field(default_factory=lambda: _Inner(depth=7), description="Nested options.")


@flow(name="docs-example")
def _example(params: _Params, overrides: dict[str, Any] | None = None) -> None:
    """Do nothing, documented.

    Args:
        params: The preset.
        overrides: Dotted paths to values, applied over `params`.
    """


def test_section_documents_plain_parameters_from_the_signature() -> None:
    section = flow_section("tests/test_docs.py:_example", ["local"], _example)
    assert "deployments `docs-example/local`" in section
    assert "| `params` | `_Params` | required | The preset. |" in section
    assert (
        "| `overrides` | `dict[str, Any] \\| None` | `null` | Dotted paths to values, applied over `params`. |"
        in section
    )
    assert "| `name` | `str` | required | A name. |" in section
    # the nested default comes from the parent's default factory, not the nested model's own default
    assert "| `inner.depth` | `int` | `7` | How deep. |" in section


def test_readme_is_a_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move reference material to docs/."


def anchors(page: Path) -> set[str]:
    """The fragment names GitHub gives a page's headings (lowercase, punctuation dropped, spaces to dashes)."""
    headings = re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    missing = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        linked = (page.parent / path) if path else page
        unknown_heading = bool(fragment) and linked.suffix == ".md" and fragment not in anchors(linked)
        if not linked.exists() or unknown_heading:
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to files or headings that do not exist: {missing}"

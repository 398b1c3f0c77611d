"""Names of things the platform creates: one validator for user-given names, one slug for keys and labels.

``NAME_PATTERN`` is the rule for a model, dataset, study, load or job name (what MLflow, Prefect and the
file system all accept); ``slug`` turns any text into the lower-case ``[a-z0-9-]`` form that Prefect artifact
keys and Kubernetes resource names need.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
_NOT_SLUG = re.compile(r"[^a-z0-9]+")

# A pydantic field type for a resource name: ``model_name: ResourceName``.
ResourceName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


def check_name(value: str, what: str = "name") -> str:
    """``value`` when it is a valid resource name; otherwise a ValueError that names ``what`` and the rule."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid name: 1 to 128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


def slug(text: str, limit: int = 63, empty: str = "x") -> str:
    """``text`` lower-cased with every run of other characters made one '-', trimmed to ``limit``.

    Usable as a Prefect artifact key and as a Kubernetes resource name (RFC 1123 label); ``empty`` when
    nothing of ``text`` is left.
    """
    return _NOT_SLUG.sub("-", text.lower()).strip("-")[:limit].rstrip("-") or empty

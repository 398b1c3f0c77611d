"""Guards at the edge of data integration: file names that must stay inside a base directory, SQL
identifiers that must be plain names, and caps on how much a single input may expand to.

Each guard raises a typed error naming the offending value, so bad input never reaches a reader
or a SQL statement.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from aicml.errors import ConfigurationError, SourceError

if TYPE_CHECKING:
    from blocks.settings import AicSettings

# Plain SQL identifiers only: what every supported database accepts unquoted. SQLAlchemy still
# quotes them; this rule just keeps injection attempts out of reflection and error messages.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class UnsafePathError(SourceError):
    """A file name points outside the directory it must stay in."""


class UnsafeIdentifierError(ConfigurationError):
    """A table or column name is not a plain SQL identifier."""


class InputTooLargeError(SourceError):
    """An input expands beyond the configured cap (for example a gzip bomb)."""


def check_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise UnsafeIdentifierError."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise UnsafeIdentifierError(
            f"The {what} {name!r} is not allowed: use letters, digits and '_' only, starting with a "
            "letter or '_' (at most 63 characters)."
        )
    return name


def check_table_name(name: str) -> tuple[str | None, str]:
    """Split ``schema.table`` (or ``table``) and check both parts; returns (schema, table)."""
    schema, _, table = name.rpartition(".") if isinstance(name, str) else ("", "", name)
    if schema:
        check_identifier(schema, "schema name")
    return (schema or None), check_identifier(table, "table name")


def _decoded(name: str) -> str:
    """Undo percent-encoding until stable, so ``%252e%252e%252f`` is seen as ``../``."""
    for _ in range(4):
        decoded = unquote(name)
        if decoded == name:
            return decoded
        name = decoded
    return name


def resolve_within(base: str | Path, name: str) -> Path:
    """The real path of ``name`` under ``base``; raise UnsafePathError if it could escape ``base``.

    Rejects absolute names, ``..`` segments (also percent-encoded or with backslashes), NUL bytes,
    and symlinks whose target lies outside ``base``.
    """
    root = Path(base).resolve()
    text = _decoded(str(name))
    if "\x00" in text:
        raise UnsafePathError(f"File name {name!r} contains a NUL byte.")
    normalised = text.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised) or os.path.isabs(text):
        raise UnsafePathError(
            f"File name {name!r} is absolute; give a name relative to the base directory {str(root)!r}."
        )
    if any(part == ".." for part in normalised.split("/")):
        raise UnsafePathError(f"File name {name!r} climbs out of the base directory {str(root)!r} with '..'.")
    resolved = (root / normalised).resolve()
    if resolved != root and root not in resolved.parents:
        raise UnsafePathError(
            f"File {name!r} resolves to {str(resolved)!r}, outside the base directory {str(root)!r} "
            "(a symlink escaping it?)."
        )
    return resolved


def check_inside(base: str | Path, path: str | Path) -> Path:
    """Like resolve_within for a path already joined to ``base`` (for example a glob match)."""
    root = Path(base).resolve()
    resolved = Path(path).resolve()
    if resolved != root and root not in resolved.parents:
        raise UnsafePathError(
            f"File {str(path)!r} resolves to {str(resolved)!r}, outside the base directory {str(root)!r} "
            "(a symlink escaping it?)."
        )
    return resolved


class OutsideRootsError(ConfigurationError):
    """A file source lies outside the data roots the operator allowed."""


# The data volume the Kubernetes job templates mount (deployments/k8s_*.json).
KUBERNETES_DATA_ROOT = "/mnt/data"


def configured_roots(current: AicSettings | None = None) -> tuple[str, ...]:
    """The data roots of the operator's settings: ``AIC_DATA_ROOTS`` (comma-separated), else the
    stack's home and the Kubernetes data volume.

    A throwaway stack whose home lies in the system's temporary directory (tests, CI, a quick try)
    also reads from that directory, where such a stack's data is put; a real stack (home in the
    project, under /srv, in a pod) never gets it. ``AIC_DATA_ROOTS`` replaces all of this.
    """
    import tempfile

    from blocks.settings import AicSettings

    current = current or AicSettings()
    if current.data_roots:
        return tuple(str(Path(p.strip()).resolve()) for p in current.data_roots.split(",") if p.strip())
    roots = [str(current.root), KUBERNETES_DATA_ROOT]
    temp = Path(tempfile.gettempdir()).resolve()
    if temp in current.root.parents:
        roots.append(str(temp))
    return tuple(roots)


def _inside(resolved: Path, root: Path) -> bool:
    return resolved == root or root in resolved.parents


def check_in_roots(path: str | Path, roots: tuple[str, ...]) -> Path:
    """The real path of ``path`` (symlinks and '..' resolved) if it lies in one of ``roots``; else
    OutsideRootsError naming the path and the roots."""
    text = str(path)
    if "\x00" in text:
        raise UnsafePathError(f"File name {text!r} contains a NUL byte.")
    resolved = Path(os.path.expanduser(text)).resolve()
    for root in roots:
        if _inside(resolved, Path(root).resolve()):
            return resolved
    shown = "" if str(resolved) == text else f" (resolves to {str(resolved)!r})"
    raise OutsideRootsError(
        f"File source {text!r}{shown} is outside the allowed data roots {list(roots)}; the operator "
        "sets them with AIC_DATA_ROOTS."
    )


def narrow_roots(roots: tuple[str, ...], base_dir: str | None) -> tuple[str, ...]:
    """``roots`` narrowed to ``base_dir`` (which must itself lie in them)."""
    if base_dir is None:
        return roots
    return (str(check_in_roots(base_dir, roots)),)

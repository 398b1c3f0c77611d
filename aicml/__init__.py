"""aic-ml engine: plain Python for ingestion, validation, training, tuning, registry, serving and agents.

Nothing here imports Prefect flows or tasks; heavy libraries are imported only in the module that uses them.
"""

__version__ = "0.1.0"  # the one version source: pyproject reads it, images are tagged with it
IMAGE = f"ghcr.io/aic/aic-ml:{__version__}"

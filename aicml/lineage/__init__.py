"""Lineage: what made a model. MLflow dataset inputs on every training, tuning and pipeline run
(``datasets``), OpenLineage run events from the pipeline's steps (``events``, ``steps``), and the chain from a
model version or a logged prediction back to its source files (``chain``, the `aicml lineage` command)."""

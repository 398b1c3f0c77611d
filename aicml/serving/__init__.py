"""Model serving: load registered models and answer predictions."""

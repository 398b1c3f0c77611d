"""Prefect tasks: thin wrappers from typed inputs to the `aicml` engine and back to typed results."""

"""Prefect tasks: thin wrappers from typed inputs to the `aicml` engine and back to typed results.

Importing this package patches nothing: a process that runs flows installs `aicml.compat.install()` where it
starts (the local worker's flow-run command `aicml.stack.engine` does).
"""

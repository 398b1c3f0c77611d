"""Prefect tasks: thin wrappers from typed inputs to the `aicml` engine and back to typed results."""

from aicml.stack.heartbeats import install as _install_heartbeats

# Every flow imports its tasks from here: its runs then end without waiting out a heartbeat sleep.
_install_heartbeats()

"""Agent Orchestration: the agent registry, lifecycle, coordination patterns, message protocol and leases.

Import submodules directly (``aicml.agents.router``, ``aicml.agents.store``, ...); nothing is imported here
so that ``import aicml.agents`` stays cheap.
"""

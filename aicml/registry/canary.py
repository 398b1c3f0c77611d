"""Moved to ``aicml.rollout.canary`` and ``aicml.rollout.audit``; this re-export goes once imports are rewired."""

from aicml.rollout.audit import AuditRecord, append_audit, emit_decision_event, read_audit
from aicml.rollout.canary import (
    ARMS,
    Action,
    Arm,
    ArmStats,
    Decision,
    Mode,
    Objectives,
    RolloutPlan,
    RolloutProgress,
    TestResult,
    TrafficRouter,
    advance_progress,
    bucket,
    decide,
    msprt,
    sticky_arm,
)

__all__ = [
    "ARMS", "Action", "Arm", "ArmStats", "AuditRecord", "Decision", "Mode", "Objectives", "RolloutPlan",
    "RolloutProgress", "TestResult", "TrafficRouter", "advance_progress", "append_audit", "bucket", "decide",
    "emit_decision_event", "msprt", "read_audit", "sticky_arm",
]  # fmt: skip

"""Moved to ``aicml.rollout.aliases``; this re-export goes once imports are rewired."""

from aicml.rollout.aliases import PREVIOUS, ROLLOUT_TAG, AuditRecord, append_audit, apply_decision, read_audit

__all__ = ["PREVIOUS", "ROLLOUT_TAG", "AuditRecord", "append_audit", "apply_decision", "read_audit"]

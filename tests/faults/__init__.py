"""Fault drills: real services broken on purpose (restarts, kills, full disks, lost workers)."""

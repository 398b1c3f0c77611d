"""Retention: what the stack may delete (a policy file), a plan of exactly what goes and why, and its application."""

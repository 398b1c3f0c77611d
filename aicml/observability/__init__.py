"""Prometheus metrics under the platform's names, and structured logging helpers."""

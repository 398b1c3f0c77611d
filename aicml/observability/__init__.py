"""Prometheus metrics under the seed's names, and structured logging helpers."""

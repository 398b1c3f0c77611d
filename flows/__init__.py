"""Deployable Prefect flows: composition only, one flow and one Params model per module."""

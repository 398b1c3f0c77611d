"""JSON schemas of aic-ml's own OpenLineage facets (shipped as package data)."""

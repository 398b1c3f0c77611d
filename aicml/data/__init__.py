"""Data integration engine: sources, snapshots, quality suites, demo data."""

"""Configuration and credentials: pydantic-settings (`settings`, `training`), the data blocks' resolution to
connector options (`data`), our one Prefect block (`llm`) and the registration of every block type we use
(`registration`, also the `prefect.collections` entry point)."""

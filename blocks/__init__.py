"""Configuration and credentials: pydantic-settings (`settings`) and Prefect Block classes (`credentials`)."""

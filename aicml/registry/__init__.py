"""MLflow model registry: register versions, move aliases, decide promotions."""

"""The local stack: Prefect server, MLflow server, a process worker and a metrics exporter, by pid file."""

"""The tracking boundary: where MLflow runs and models live, as a value handed to whatever needs it.

A flow reads its settings once and makes one ``Tracking``; tasks and the engine take it as an argument and
ask it for a client (``tracking.client()``) instead of reading the environment themselves. MLflow's fluent
API (``mlflow.start_run``, ``mlflow.log_*``, ``mlflow.pyfunc.load_model``) reads a process-wide URI;
``Tracking.activate`` is the one place in the library that sets it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from collections.abc import Mapping

    from mlflow import MlflowClient


class Tracking(BaseModel):
    """An MLflow tracking server (and its model registry) and the experiment to log to."""

    model_config = ConfigDict(frozen=True)

    uri: str = Field(description="MLflow tracking URI; the model registry is on the same server.")
    experiment: str = Field(default="aic-ml", description="MLflow experiment runs are logged to.")
    ui_url: str | None = Field(
        default=None, description="Where people open the MLflow UI, when not at ``uri`` (links only)."
    )

    def artifact_page_url(self, experiment_id: str, run_id: str, path: str) -> str:
        """The MLflow UI's page of artifact ``path`` of run ``run_id``: it shows images, and HTML pages in a
        frame (MLflow serves every artifact file as a download, so a direct file link would not open).

        The UI is reached at ``ui_url`` when set (``AIC_MLFLOW_UI_URL``: on Kubernetes the tracking URI is
        an in-cluster address), else at the tracking URI itself; a URI without a web UI is refused.
        """
        import urllib.parse

        base = self.ui_url or self.uri
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"MLflow tracking URI {base!r} has no web UI to link to (set AIC_MLFLOW_UI_URL)")
        quoted = urllib.parse.quote(path)
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/artifactPath/{quoted}"

    def client(self) -> MlflowClient:
        """A client bound to this server; it does not touch the process-wide URI."""
        from mlflow import MlflowClient

        from aicml.compat import databricks_checked_once

        databricks_checked_once()  # once per process; MLflow is imported by now
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def activate(self) -> Tracking:
        """Point MLflow's fluent API of this process at this server (the only call of
        ``set_tracking_uri`` in the library); returns self."""
        import mlflow

        from aicml.compat import databricks_checked_once

        databricks_checked_once()
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        return self

    def log_batch(
        self, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str] | None = None
    ) -> None:
        """Log ``metrics`` (at step 0, now) and ``tags`` on run ``run_id`` in one request."""
        import time

        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        self.client().log_batch(
            run_id,
            metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
            tags=[RunTag(key, value) for key, value in (tags or {}).items()],
        )

    def in_experiment(self, experiment: str | None) -> Tracking:
        """The same server, logging to ``experiment`` (this one's own when None)."""
        if experiment is None or experiment == self.experiment:
            return self
        return self.model_copy(update={"experiment": experiment})

    def experiment_id(self) -> str:
        """Activate this server and make the experiment current; its id."""
        import mlflow

        self.activate()
        return str(mlflow.set_experiment(self.experiment).experiment_id)

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
    from mlflow import MlflowClient


class Tracking(BaseModel):
    """An MLflow tracking server (and its model registry) and the experiment to log to."""

    model_config = ConfigDict(frozen=True)

    uri: str = Field(description="MLflow tracking URI; the model registry is on the same server.")
    experiment: str = Field(default="aic-ml", description="MLflow experiment runs are logged to.")

    def client(self) -> MlflowClient:
        """A client bound to this server; it does not touch the process-wide URI."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def activate(self) -> Tracking:
        """Point MLflow's fluent API of this process at this server (the only call of
        ``set_tracking_uri`` in the library); returns self."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        return self

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

"""The rehearsal creates every Secret `aicml k8s apply` would, with stand-in values for the operator's variables."""

from __future__ import annotations

from aicml.kube.rehearsal.run import rehearsal_secrets
from aicml.kube.secrets import SECRET_SPECS


def test_every_secret_gets_a_value_without_the_operators_variables() -> None:
    secrets = rehearsal_secrets({})
    assert {spec.name for spec in SECRET_SPECS} <= set(secrets)
    serving = secrets["model-serving-s3"]
    assert serving["AWS_ACCESS_KEY_ID"] and serving["AWS_SECRET_ACCESS_KEY"]
    assert serving["AWS_SECRET_ACCESS_KEY"] != secrets["mlflow-s3"]["AWS_SECRET_ACCESS_KEY"]

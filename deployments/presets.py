"""Parameter presets of the deployments in ``prefect.yaml``, kept in ``deployments/presets.yaml``.

Each deployment's ``build`` runs the step ``deployments.presets.preset`` with its ``flow/deployment``
name, and its parameters read ``{{ preset.params }}``: `prefect deploy` resolves the preset at deploy
time, so prefect.yaml holds where and when a flow runs, and this package holds with what. The code is
`aicml.stack.presets`; this module is the build step's name for it.
"""

from aicml.stack.presets import PRESETS_FILE, STEP, deployment_params, preset, presets

__all__ = ["PRESETS_FILE", "STEP", "deployment_params", "preset", "presets"]

"""The pyfunc classes of torch models logged before they were portable, kept importable by name.

Such a model's code file runs ``from aicml.models.pyfunc import TabularNetModel`` (or ``ImageNetModel``)
at load, and its ``inputs.skops`` holds aic-ml's ``TabularPreprocessor`` and ``LabelCodec``. Both
classes are ``aicml.models.portable.torch_models``' (new models are logged with those), widened to read
what older versions wrote: the preprocessing types in ``SKOPS_TRUSTED_TYPES``, and a bad image shape is
aic-ml's ``SchemaError`` as before.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from aicml.models.portable import torch_models
from aicml.models.portable.features import ImageShapeError
from aicml.models.trainers import SKOPS_TRUSTED_TYPES


class TabularNetModel(torch_models.TabularNetModel):
    """Serves a ``TabularMLP`` logged by ``aicml.models.trainers.FittedNet`` before models were portable."""

    trusted_types: ClassVar[list[str]] = [*torch_models.TRUSTED_TYPES, *SKOPS_TRUSTED_TYPES]


class ImageNetModel(torch_models.ImageNetModel):
    """Serves a ``SmallCNN`` logged by ``FittedImageNet`` before models were portable."""

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        try:
            return super().predict(context, model_input, params)
        except ImageShapeError as exc:
            from aicml.errors import SchemaError

            raise SchemaError(str(exc)) from None

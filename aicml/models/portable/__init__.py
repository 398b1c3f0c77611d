"""What a logged model runs at load and predict, shipped with the model so it serves without aic-ml.

Every module here imports only the standard library and the libraries pinned in the model's
``requirements.txt`` (numpy, pandas, scikit-learn, skops, torch, mlflow), never the rest of ``aicml``
(an import-linter contract keeps it so). ``aicml.models.requirements.ship_portable_code`` copies this
package into the model's ``code/`` directory as ``aicml/models/portable`` with no ``__init__.py`` above
it: in an environment without aic-ml, ``aicml`` and ``aicml.models`` are namespace packages holding only
this code; where aic-ml is installed its regular ``aicml`` package takes precedence.
"""

"""Model tuning: search spaces as data, Optuna samplers and pruners, parallel and resumable studies.

Only this package imports optuna (and hyperopt); `aicml.tuning.space` stays light so flow
parameter models can use it without importing either.
"""

"""Hyperopt's TPE as an Optuna sampler, so it shares storage, pruning, parallel trials and resume.

Each ``sample_relative`` rebuilds a hyperopt ``Trials`` history from the study's completed trials and
asks ``hyperopt.tpe.suggest`` for one point; hyperopt minimises, so maximised values are negated.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from aicml.tuning.space import CategoricalParam, FloatParam, IntParam, SearchSpace
from aicml.tuning.study import distributions


def hyperopt_space(space: SearchSpace) -> dict[str, Any]:
    """The hyperopt expression of each declared parameter."""
    from hyperopt import hp

    out: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, CategoricalParam):
            out[name] = hp.choice(name, list(spec.choices))
        elif isinstance(spec, FloatParam):
            if spec.log:
                out[name] = hp.loguniform(name, math.log(spec.low), math.log(spec.high))
            elif spec.step is not None:
                out[name] = hp.quniform(name, spec.low, spec.high, spec.step)
            else:
                out[name] = hp.uniform(name, spec.low, spec.high)
        elif isinstance(spec, IntParam):
            if spec.log:
                out[name] = hp.qloguniform(name, math.log(spec.low), math.log(spec.high), 1)
            else:
                out[name] = hp.quniform(name, spec.low, spec.high, spec.step)
    return out


class HyperoptSampler(BaseSampler):
    """Samples every declared parameter jointly with hyperopt's TPE."""

    def __init__(self, space: SearchSpace, seed: int = 0, n_startup_trials: int = 5):
        self._space = space
        self._seed = seed
        self._n_startup = n_startup_trials
        self._fallback = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return distributions(self._space)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        from hyperopt import JOB_STATE_DONE, STATUS_OK, Domain, Trials, tpe

        domain = Domain(lambda _: 0.0, hyperopt_space(self._space))
        history = Trials()
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        done = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and set(self._space) <= set(t.params)
        ]
        if done:
            tids = history.new_trial_ids(len(done))
            miscs = [
                {
                    "tid": tid,
                    "cmd": domain.cmd,
                    "workdir": None,
                    "idxs": {name: [tid] for name in self._space},
                    "vals": {name: [self._to_hyperopt(name, t.params[name])] for name in self._space},
                }
                for tid, t in zip(tids, done, strict=True)
            ]
            results = [{"loss": sign * float(t.value or 0.0), "status": STATUS_OK} for t in done]
            docs = history.new_trial_docs(tids, [None] * len(done), results, miscs)
            for doc in docs:
                doc["state"] = JOB_STATE_DONE
            history.insert_trial_docs(docs)
            history.refresh()
        suggest = functools.partial(tpe.suggest, n_startup_jobs=self._n_startup)
        new_id = history.new_trial_ids(1)
        proposal = suggest(new_id, domain, history, self._seed + trial.number)
        vals = proposal[0]["misc"]["vals"]
        return {name: self._from_hyperopt(name, vals[name][0]) for name in self._space}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def _to_hyperopt(self, name: str, value: Any) -> Any:
        spec = self._space[name]
        if isinstance(spec, CategoricalParam):
            return spec.choices.index(value)
        return value

    def _from_hyperopt(self, name: str, value: Any) -> Any:
        spec = self._space[name]
        if isinstance(spec, CategoricalParam):
            return spec.choices[int(value)]
        if isinstance(spec, IntParam):
            snapped = spec.low + round((float(value) - spec.low) / spec.step) * spec.step
            return int(min(max(snapped, spec.low), spec.high))
        number = float(value)
        if isinstance(spec, FloatParam) and spec.step is not None:
            number = spec.low + round((number - spec.low) / spec.step) * spec.step
        return float(min(max(number, spec.low), spec.high))

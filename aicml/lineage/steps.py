"""What each lineage step read and wrote, from its arguments (by name) and its result or error.

One ``Step`` per step name that ``emits_lineage`` decorates: ingest, validate, train, register, promote,
deploy. They read the values the tasks already pass around (``Snapshot``, ``GateResult``,
``TrainingOutcome``, ``RegisteredVersion``, ``PromotionDecision``, ``DeployResult``) by attribute, so nothing
heavy is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aicml.lineage.datasets import gate_facts, snapshot_facts, source_facts, source_uri, validated_facts
from aicml.lineage.events import LineageDataset, facts_dataset, location_of, model_dataset

Args = Mapping[str, Any]


@dataclass(frozen=True)
class Step:
    """``inputs`` at START; ``completed`` gives (inputs, outputs) at COMPLETE (inputs None: as at START);
    ``failed`` the inputs at FAIL (with what the error knows, e.g. the broken expectations)."""

    inputs: Callable[[Args], list[LineageDataset]]
    completed: Callable[[Args, Any], tuple[list[LineageDataset] | None, list[LineageDataset]]]
    failed: Callable[[Args, BaseException], list[LineageDataset]] | None = None

    def outputs(self, args: Args, result: Any) -> list[LineageDataset]:
        return self.completed(args, result)[1]

    def completed_inputs(self, args: Args, result: Any) -> list[LineageDataset] | None:
        return self.completed(args, result)[0]

    def failed_inputs(self, args: Args, error: BaseException) -> list[LineageDataset]:
        return self.failed(args, error) if self.failed is not None else self.inputs(args)


def _tracking_uri(args: Args) -> str:
    tracking = args.get("tracking")
    if tracking is not None:
        return str(tracking.uri)
    from blocks.settings import AicSettings

    return AicSettings().tracking_uri


# ingest: the source (a file, glob, URL or SQL table) -> its snapshot
def _source(args: Args) -> list[LineageDataset]:
    namespace, name = location_of(source_uri(str(args["source"]), args.get("table")))
    return [LineageDataset(namespace, name)]


def _ingested(args: Args, snapshot: Any) -> tuple[list[LineageDataset] | None, list[LineageDataset]]:
    source = facts_dataset(source_facts(str(args["source"]), args.get("table"), snapshot))
    return [source], [facts_dataset(snapshot_facts(snapshot))]


# validate: the snapshot (with the suite's assertions) -> the validated rows
def _snapshot(args: Args) -> list[LineageDataset]:
    return [facts_dataset(snapshot_facts(args["snapshot"]))]


def _validated(args: Args, gate: Any) -> tuple[list[LineageDataset] | None, list[LineageDataset]]:
    report = gate.report.to_dict()
    snapshot = facts_dataset(snapshot_facts(args["snapshot"]), tuple(report.get("outcomes", [])))
    return [snapshot], [facts_dataset(gate_facts(gate))]


def _rejected(args: Args, error: BaseException) -> list[LineageDataset]:
    report = getattr(error, "report", None) or {}
    return [facts_dataset(snapshot_facts(args["snapshot"]), tuple(report.get("outcomes", [])))]


# train: the validated rows -> one model per candidate (an MLflow run's model)
def _gate(args: Args) -> list[LineageDataset]:
    if args.get("gate") is not None:
        return [facts_dataset(gate_facts(args["gate"]))]
    return [facts_dataset(validated_facts(str(args["job"].source)))]  # train-candidates: a CandidatesJob


def _trained(args: Args, outcome: Any) -> tuple[list[LineageDataset] | None, list[LineageDataset]]:
    uri = _tracking_uri(args)
    return None, [
        model_dataset(uri, c.model_uri, run_id=c.run_id, candidate=c.name,
                      **{outcome.primary_metric: str(c.metrics.get(outcome.primary_metric))})
        for c in outcome.candidates
    ]  # fmt: skip


# register: the best candidate's model -> a new version of the registered model
def _best(args: Args) -> list[LineageDataset]:
    best = args["outcome"].best
    return [model_dataset(_tracking_uri(args), best.model_uri, run_id=best.run_id, candidate=best.name)]


def _registered(args: Args, version: Any) -> tuple[list[LineageDataset] | None, list[LineageDataset]]:
    return None, [
        model_dataset(_tracking_uri(args), f"models:/{version.name}/{version.version}", run_id=version.run_id,
                      fingerprint=str(args.get("fingerprint")), alias="challenger")
    ]  # fmt: skip


# promote: the challenger version -> the champion alias, when it moved
def _version(args: Args) -> list[LineageDataset]:
    version = args["version"]
    return [model_dataset(_tracking_uri(args), f"models:/{version.name}/{version.version}")]


def _promoted(args: Args, decision: Any) -> tuple[list[LineageDataset] | None, list[LineageDataset]]:
    if not decision.promoted:
        return None, []
    return None, [
        model_dataset(_tracking_uri(args), f"models:/{decision.name}@champion",
                      version=str(decision.challenger_version), reason=str(decision.reason)[:500])
    ]  # fmt: skip


# deploy: a registered version -> the model server (local URL, or Kubernetes objects)
def _deploy_params(args: Args) -> Any:
    params = args["params"]
    overrides = args.get("overrides")
    if overrides:
        from aicml.stack.overrides import resolve_params

        params = resolve_params(params, overrides, type(params))
    return params


def _to_deploy(args: Args) -> list[LineageDataset]:
    params = _deploy_params(args)
    ref = (
        f"models:/{params.model_name}/{params.version}"
        if params.version
        else f"models:/{params.model_name}@challenger"
    )
    return [model_dataset(_tracking_uri(args), ref)]


def _deployed(args: Args, result: Any) -> tuple[list[LineageDataset] | None, list[LineageDataset]]:
    inputs = [model_dataset(_tracking_uri(args), f"models:/{result.model_name}/{result.version}")]
    if result.target == "kubernetes":
        params = _deploy_params(args)
        server = LineageDataset(f"kubernetes://{params.namespace}", f"model-server/{result.model_name}",
                                properties={"version": str(result.version), "action": str(result.action)})  # fmt: skip
    else:
        namespace, _ = location_of(result.url or "http://localhost")
        server = LineageDataset(namespace, f"model-server/{result.model_name}",
                                properties={"version": str(result.version), "action": str(result.action)})  # fmt: skip
    return inputs, [server]


STEPS: dict[str, Step] = {
    "ingest": Step(_source, _ingested),
    "validate": Step(_snapshot, _validated, _rejected),
    "train": Step(_gate, _trained),
    "register": Step(_best, _registered),
    "promote": Step(_version, _promoted),
    "deploy": Step(_to_deploy, _deployed),
}

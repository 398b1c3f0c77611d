"""The end-to-end ML pipeline: ingest, validate, train, register, promote, smoke-serve."""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.transactions import transaction
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from aicml.lineage.datasets import log_pipeline_inputs
from aicml.models.options import TrainerOptions
from aicml.names import ResourceName, slug
from aicml.observability.metrics import pipeline_execution
from aicml.redaction import refuse_password
from aicml.stack.overrides import resolve_params
from aicml.stack.watch import RESULT_ARTIFACT_PREFIX
from aicml.usage.accounting import account_usage
from flows.tuning import SearchOptions, tune_before_training
from tasks.context import data_dir, settings, tracking_of
from tasks.ingest import ingest_source
from tasks.policies import SourceFiles
from tasks.registry import promote_model, register_best
from tasks.serve import smoke_serve
from tasks.tracking import finish_pipeline_run, start_pipeline_run
from tasks.train import train_models, train_on_deployment
from tasks.validate import validate_snapshot

# Persisted stage results are reused for a week; after that a rerun recomputes them.
CACHE_FOR = timedelta(days=7)


class PipelineParams(BaseModel):
    """Parameters of `ml-pipeline`; Prefect builds the deployment form from these."""

    # A refused value may hold a secret: errors name the field, never echo the input.
    model_config = ConfigDict(hide_input_in_errors=True)

    source: Annotated[str, AfterValidator(refuse_password)] = Field(
        description=(
            "Path, glob or URL of CSV / Parquet / JSON-lines files (optionally .gz), or a SQLAlchemy URL "
            "with the table after '#', e.g. sqlite:///data/churn.db#churn."
        )
    )
    table: str | None = Field(
        default=None, description="Table name for a SQL source, if not given after '#'."
    )
    target: str = Field(description="The label column.")
    problem: Literal["classification", "regression"] | None = Field(
        default=None, description="Kind of problem; inferred from the label column when empty."
    )
    model_name: ResourceName = Field(description="Name of the model in the MLflow registry.")
    dataset: str | None = Field(
        default=None,
        description="Name of the dataset whose quality suite applies; defaults to the model name.",
    )
    suite_path: str | None = Field(
        default=None, description="A Great Expectations suite (JSON) to enforce instead of the derived one."
    )
    max_missing_label_fraction: float = Field(
        default=0.1, ge=0, le=1, description="Largest share of rows without a label a batch may have."
    )
    promotion_margin: float = Field(
        default=0.001, ge=0, description="How much the challenger must beat the champion's test metric by."
    )
    seed: int = Field(default=42, description="Seed of the train/validation/test split and the models.")
    trainer: TrainerOptions = Field(default_factory=TrainerOptions, description="Training options.")
    smoke_rows: int = Field(
        default=5, ge=1, le=1000, description="Held-out rows the champion predicts at the end."
    )
    experiment: str | None = Field(default=None, description="MLflow experiment; `aic-ml` by default.")
    training_deployment: str | None = Field(
        default=None,
        description=(
            "Run the train stage as this deployment of the `train-candidates` flow (e.g. "
            "'train-candidates/k8s-gpu', on GPU nodes) instead of in the pipeline's own process; the other "
            "stages stay where the pipeline runs."
        ),
    )
    tune: SearchOptions | None = Field(
        default=None,
        description="Tune the Lightning model's options before the final training; empty trains with `trainer` as given.",
    )
    reuse_results: bool = Field(
        default=True,
        description=(
            "Skip ingest, validate and train when their inputs, code and data are unchanged (results persisted "
            "under the stack's home); this is what makes `aicml resume` rerun only the failed stages."
        ),
    )


class PipelineResult(BaseModel):
    """What one pipeline execution did, with references to look things up."""

    mlflow_run_id: str
    fingerprint: str
    rows: int
    labelled_rows: int
    set_aside: int
    problem: str
    metric: str
    candidates: dict[str, float]
    best: str
    model_name: str
    version: str
    promoted: bool
    reason: str
    predictions: list[Any]


@flow(name="ml-pipeline", log_prints=False, persist_result=True)
def ml_pipeline(params: PipelineParams, overrides: dict[str, Any] | None = None) -> PipelineResult:
    """Ingest -> validate -> train (Lightning + baseline) -> register challenger -> promote -> smoke-serve.

    Args:
        params: The pipeline's parameters (a deployment fills them from its preset).
        overrides: Fields of `params` to change for this run, by dotted path, e.g.
            {"trainer.max_epochs": 3} or {"source": "data/new.csv"}; every other field keeps its value.
            The result is validated as a whole: a key that names no field, or a value of the wrong
            type, fails the run with an error naming it.
    """
    params = resolve_params(params, overrides, PipelineParams)
    logger = get_run_logger()
    s = settings()
    tracking = tracking_of(s, params.experiment)
    experiment = tracking.experiment
    dataset = params.dataset or params.model_name
    with (
        pipeline_execution("ml-pipeline") as execution,
        # What the run used (its processes included) goes on its MLflow run and into `aicml usage`.
        account_usage(
            "ml-pipeline",
            team=s.team,
            store_url=s.usage_store_url(),
            tracking=tracking,
            model=params.model_name,
        ) as usage,
    ):
        parent = start_pipeline_run(
            tracking=tracking,
            run_name=f"pipeline-{params.model_name}",
            tags={"aicml.model_name": params.model_name, "aicml.dataset": dataset},
        )
        usage.attach(mlflow_run_id=parent)
        status = "FAILED"
        try:
            # Stages whose inputs, code and data did not change are served from persisted results, which
            # is what lets a resumed run redo only the stage that failed and what depends on it.
            reuse: dict[str, Any] = {
                "persist_result": True,
                "refresh_cache": not params.reuse_results,
                "cache_expiration": CACHE_FOR,
            }
            snapshot = ingest_source.with_options(cache_policy=SourceFiles() + TASK_SOURCE, **reuse)(
                source=params.source,
                table=params.table,
                dataset=dataset,
                snapshots_dir=data_dir("snapshots", s.root),
            )
            # Where the report is logged and the files are written are not part of the key, as always.
            gate = validate_snapshot.with_options(
                cache_policy=INPUTS
                - "parent_run_id"
                - "tracking"
                - "suites_dir"
                - "validated_dir"
                + TASK_SOURCE,
                **reuse,
            )(
                snapshot=snapshot,
                target=params.target,
                dataset=dataset,
                suite_path=params.suite_path,
                max_missing_label_fraction=params.max_missing_label_fraction,
                parent_run_id=parent,
                tracking=tracking,
                suites_dir=data_dir("suites", s.root),
                validated_dir=data_dir("validated", s.root),
            )
            log_pipeline_inputs(tracking, parent, params.source, params.table, snapshot, gate)
            trainer = params.trainer
            if params.tune is not None:
                trainer = tune_before_training(
                    options=params.tune,
                    validated_path=gate.path,
                    target=params.target,
                    problem=params.problem,
                    experiment=experiment,
                    study_name=params.tune.study_name or f"{params.model_name}-pipeline",
                    trainer=params.trainer,
                    tracking=tracking,
                    home=s.root,
                )
            if params.training_deployment:
                # Per-stage infrastructure: training runs as a `train-candidates` deployment (GPU nodes, say).
                train = partial(train_on_deployment, deployment=params.training_deployment)
            else:
                # `training-slot` is a concurrency limit (4, the namespace's GPU quota) that `aicml up` creates.
                # The key leaves out where results are logged and written, as it always has.
                train = partial(
                    train_models.with_options(
                        cache_policy=INPUTS - "parent_run_id" - "tracking" - "splits_dir" + TASK_SOURCE,
                        tags={"training-slot"},
                        **reuse,
                    ),
                    tracking=tracking,
                    splits_dir=str(data_dir("splits", root=s.root)),
                )
            outcome = train(
                gate=gate,
                target=params.target,
                problem=params.problem,
                options=trainer,
                seed=params.seed,
                experiment=experiment,
                parent_run_id=parent,
            )
            # Register, decide, move the alias and prove the champion serves, as one transaction: if any
            # step fails, the rollback hooks put `challenger` and `champion` back where they were.
            with transaction():
                version = register_best(
                    outcome=outcome,
                    model_name=params.model_name,
                    fingerprint=snapshot.fingerprint,
                    tracking=tracking,
                )
                decision = promote_model(
                    version=version,
                    outcome=outcome,
                    target=params.target,
                    margin=params.promotion_margin,
                    tracking=tracking,
                )
                served = smoke_serve(
                    model_name=params.model_name,
                    test_path=outcome.test_path,
                    target=params.target,
                    rows=params.smoke_rows,
                    tracking=tracking,
                )
            status = "FINISHED"
        finally:
            finish_pipeline_run(tracking=tracking, run_id=parent, status=status)
    logger.info("Pipeline finished in %.1fs: %s", execution.seconds, decision.reason)
    result = PipelineResult(
        mlflow_run_id=parent,
        fingerprint=snapshot.fingerprint,
        rows=snapshot.rows,
        labelled_rows=gate.rows,
        set_aside=gate.set_aside,
        problem=outcome.problem,
        metric=outcome.primary_metric,
        candidates={c.name: c.metrics[outcome.primary_metric] for c in outcome.candidates},
        best=outcome.best.name,
        model_name=params.model_name,
        version=version.version,
        promoted=decision.promoted,
        reason=decision.reason,
        predictions=served["predictions"],
    )
    # Also as an artifact of this flow run: readable through the API wherever the persisted result is not
    # (a cluster's volume), which is how `aicml run` prints it against Kubernetes; and shown in the UI.
    create_table_artifact(
        [result.model_dump(mode="json")],
        key=RESULT_ARTIFACT_PREFIX + slug(params.model_name),
        description=f"ml-pipeline result: {params.model_name} version {result.version}, {decision.reason}",
    )
    return result

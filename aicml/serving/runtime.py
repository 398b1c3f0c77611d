"""Loaded models, micro-batched prediction, and alias following with hot swap.

A ``ServedModel`` is one verified registry version in memory. Its ``MicroBatcher`` merges requests
waiting at the same moment into one ``predict`` call on a dedicated thread, so a burst of small
requests costs one model call. A ``ModelHost`` keeps the version an alias points at, polls the registry
in the background (never on the request path) and swaps a newly loaded version in after it is warm;
requests already queued on the old version finish on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aicml import compat
from aicml.errors import AicError, RegistryError
from aicml.registry.checksums import ModelRef, fetch_verified, loaded_line, resolve_version
from aicml.serving.inputs import V2_NATIVE, Batch, InputError, InputSchema

log = logging.getLogger(__name__)


class PredictionError(AicError):
    """The model raised while predicting; the request is answered with 500 and the model name."""


def to_jsonable(predictions: Any) -> Any:
    """Predictions as MLflow's scoring server writes them: lists, DataFrames as records."""
    if isinstance(predictions, pd.DataFrame):
        return predictions.to_dict(orient="records")
    if isinstance(predictions, pd.Series):
        predictions = predictions.to_numpy()
    if isinstance(predictions, np.ndarray):
        return predictions.tolist()
    if isinstance(predictions, dict):
        return {k: to_jsonable(v) for k, v in predictions.items()}
    if isinstance(predictions, list | tuple):
        return [v.item() if isinstance(v, np.generic) else to_jsonable(v) for v in predictions]
    if isinstance(predictions, np.generic):
        return predictions.item()
    return predictions


def _slice(predictions: Any, start: int, stop: int) -> Any:
    if isinstance(predictions, pd.DataFrame | pd.Series):
        return predictions.iloc[start:stop]
    return predictions[start:stop]


def _rows_of(predictions: Any) -> int | None:
    if isinstance(predictions, pd.DataFrame | pd.Series | np.ndarray | list):
        return len(predictions)
    return None


@dataclass
class ServedModel:
    """One registered version in memory, with its compiled input schema."""

    name: str
    version: str
    pyfunc: Any
    schema: InputSchema
    loaded_at: float = field(default_factory=time.time)
    # The flavor's predict without MLflow's per-call enforcement (aicml.compat.direct_predict): inputs are
    # validated here. None: use the public ``pyfunc.predict``.
    direct_predict: Callable[[Any], Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        kinds = {c.kind for c in self.schema.columns}
        self.uniform_dtype = len(kinds) == 1 and kinds <= {"double", "float", "long", "integer"}
        # Built once: pandas 3 would otherwise turn the names into a new Arrow string index per request.
        self.column_names = pd.Index([c.name for c in self.schema.columns])

    @classmethod
    def from_pyfunc(cls, name: str, version: str, pyfunc: Any, max_rows: int) -> ServedModel:
        meta = pyfunc.metadata
        params_schema = meta.get_params_schema()
        schema = InputSchema.from_signature(meta.get_input_schema(), max_rows, params_schema is not None)
        # The direct path skips MLflow's per-call schema enforcement (about a millisecond) because
        # InputSchema already produced exactly the dtypes that enforcement would. It applies only to
        # plain column signatures without params, type hints or input-example conversion.
        direct = compat.direct_predict(pyfunc) if schema.column_based else None
        return cls(name, version, pyfunc, schema, direct_predict=direct)

    @property
    def direct(self) -> bool:
        """True: inputs are validated here, and the flavor's predict is called directly."""
        return self.direct_predict is not None

    @property
    def output_datatype(self) -> str:
        schema = self.pyfunc.metadata.get_output_schema()
        if schema is None:
            return "BYTES"
        if schema.is_tensor_spec():
            kind = np.dtype(schema.numpy_types()[0]).kind
            return {"f": "FP64", "i": "INT64", "u": "UINT64", "b": "BOOL"}.get(kind, "BYTES")
        kind = getattr(schema.inputs[0].type, "name", "string")
        return V2_NATIVE.get(kind, "BYTES")

    def predict(self, batch: Batch) -> Any:
        """Predict a validated batch (runs on the batcher's thread)."""
        try:
            if batch.tensors is not None:
                return self.pyfunc.predict(batch.tensors, batch.params)
            if batch.raw is not None:
                from mlflow.pyfunc.scoring_server import infer_and_parse_data

                data = infer_and_parse_data(batch.raw, self.pyfunc.metadata.get_input_schema())
                return self.pyfunc.predict(data, batch.params)
            if self.uniform_dtype:
                # One 2-D block builds in half the time of one block per column, and sklearn reads it as is.
                frame = pd.DataFrame(np.column_stack(list(batch.columns.values())), columns=self.column_names)
            else:
                frame = pd.DataFrame(batch.columns, columns=self.column_names, copy=False)
            if self.direct_predict is not None:
                return self.direct_predict(frame)
            return self.pyfunc.predict(frame, batch.params)
        except InputError:
            raise
        except Exception as exc:
            from mlflow.exceptions import MlflowException

            if isinstance(exc, MlflowException):  # MLflow's own enforcement refused the input
                raise InputError(400, f"The model refused the input: {exc.message}", field="body") from None
            raise PredictionError(
                f"Model {self.name} version {self.version} failed to predict: {exc}"
            ) from exc


@dataclass
class _Pending:
    batch: Batch
    future: asyncio.Future[Any]


class MicroBatcher:
    """Merges requests that wait at the same time into one predict call on a single worker thread."""

    def __init__(self, model: ServedModel, max_batch_rows: int = 2048, threaded: bool = False) -> None:
        self.model = model
        self.max_batch_rows = max_batch_rows
        # Inline (default): predict runs on the event loop. For millisecond models this beats a thread
        # hand-off twice per batch, and batching still happens: requests that arrive during a predict
        # wait in the socket buffers and are merged into the next call. Threaded suits slow models.
        self.threaded = threaded
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"predict-{model.name}")
        self.task: asyncio.Task[None] | None = None
        self.calls = 0
        self.rows = 0
        self.busy = False
        self.closed = False

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.model.name}")

    async def submit(self, batch: Batch) -> Any:
        if self.closed:
            raise InputError(503, "The model version was replaced; retry.", code="SERVICE_UNAVAILABLE")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Pending(batch, future))
        return await future

    async def close(self, grace: float = 5.0) -> None:
        """Finish what is queued or running (up to ``grace`` seconds), then stop the thread."""
        deadline = time.monotonic() + grace
        while (self.busy or not self.queue.empty()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.closed = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        while not self.queue.empty():  # only after the grace period: answer rather than hang
            pending = self.queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(
                    InputError(503, "The model version was replaced; retry.", code="SERVICE_UNAVAILABLE")
                )
        self.executor.shutdown(wait=False)

    def _mergeable(self, item: _Pending) -> bool:
        return item.batch.raw is None and item.batch.tensors is None and not item.batch.params

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            self.busy = True
            try:
                if not self.threaded and self.queue.empty():
                    # Let handlers already runnable in this loop turn enqueue too, so they join this call.
                    await asyncio.sleep(0)
                await self._take_and_predict(loop, first)
            finally:
                self.busy = False

    async def _take_and_predict(self, loop: asyncio.AbstractEventLoop, first: _Pending) -> None:
        group = [first]
        rows = first.batch.rows
        # Take whatever else is already waiting, up to the row budget; never wait for more.
        while self._mergeable(first) and rows < self.max_batch_rows and not self.queue.empty():
            nxt = self.queue.get_nowait()
            if not self._mergeable(nxt) or rows + nxt.batch.rows > self.max_batch_rows:
                await self._predict_group(loop, [nxt])
                break
            group.append(nxt)
            rows += nxt.batch.rows
        await self._predict_group(loop, group)

    async def _predict_group(self, loop: asyncio.AbstractEventLoop, group: list[_Pending]) -> None:
        if len(group) == 1:
            merged = group[0].batch
        else:
            names = list(group[0].batch.columns)
            merged = Batch(
                {n: np.concatenate([p.batch.columns[n] for p in group]) for n in names},
                sum(p.batch.rows for p in group),
            )
        try:
            if self.threaded:
                predictions = await loop.run_in_executor(self.executor, self.model.predict, merged)
            else:
                predictions = self.model.predict(merged)
        except Exception as exc:
            if len(group) > 1 and isinstance(exc, InputError | PredictionError):
                # One bad request must not fail its neighbours: answer each on its own.
                for pending in group:
                    await self._predict_group(loop, [pending])
                return
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        self.calls += 1
        self.rows += merged.rows
        if len(group) == 1:
            if not group[0].future.done():
                group[0].future.set_result(predictions)
            return
        if _rows_of(predictions) != merged.rows:  # output not row-aligned: predict each on its own
            for pending in group:
                await self._predict_group(loop, [pending])
            return
        start = 0
        for pending in group:
            stop = start + pending.batch.rows
            if not pending.future.done():
                pending.future.set_result(_slice(predictions, start, stop))
            start = stop


def load_served(name: str, version: str, cache_dir: Path, max_rows: int) -> ServedModel:
    """Fetch a version from the registry, verify its checksum and load it; logs one line when done.

    MLflow's download progress bars are off in the server process (``compat.quiet_downloads``): this line
    is what a load leaves in the log.
    """
    import mlflow.pyfunc

    from aicml.models.portable.files import import_skops
    from aicml.models.requirements import environment_mismatches

    started = time.perf_counter()
    path = fetch_verified(name, version, cache_dir)
    # MLflow's own environment check maps every installed distribution first (about 1 s of the start-up);
    # the same check, on the model's own requirements only, logs what does not match.
    import_skops()  # what the model's flavor loads with, without importing torch for a model that needs none
    pyfunc = mlflow.pyfunc.load_model(str(path), suppress_warnings=True)
    flavor = pyfunc.metadata.flavors.get("python_function", {})
    mismatches = environment_mismatches(path, flavor.get("python_version"))
    if mismatches:
        log.warning(
            "%s version %s was logged in another environment than this one: %s. Its own environment: "
            "mlflow.pyfunc.get_model_dependencies('models:/%s/%s').",
            name, version, "; ".join(mismatches), name, version,
        )  # fmt: skip
    served = ServedModel.from_pyfunc(name, version, pyfunc, max_rows)
    log.info("%s", loaded_line(name, version, path, time.perf_counter() - started))
    return served


class ModelHost:
    """The version an alias (or a pinned version) designates, kept in memory and swapped when it moves."""

    def __init__(
        self,
        ref: ModelRef,
        cache_dir: Path,
        max_rows: int = 10_000,
        max_batch_rows: int = 2048,
        poll_seconds: float = 10.0,
        threaded: bool = False,
        wait_for_alias: bool = False,
    ) -> None:
        self.threaded = threaded
        # Start without a model when the alias does not resolve yet (a platform deployed before its first
        # champion): not ready, polling, instead of exiting into a crash loop.
        self.wait_for_alias = wait_for_alias
        self.ref = ref
        self.cache_dir = cache_dir
        self.max_rows = max_rows
        self.max_batch_rows = max_batch_rows
        self.poll_seconds = poll_seconds
        self.model: ServedModel | None = None
        self.batcher: MicroBatcher | None = None
        self.swaps = 0
        self.last_error: str | None = None
        self._follow: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.model is not None

    def load_now(self) -> ServedModel:
        """Blocking first load (at startup, before the server accepts requests)."""
        version = resolve_version(self.ref)
        self.model = load_served(self.ref.name, version, self.cache_dir, self.max_rows)
        return self.model

    def install(self, model: ServedModel) -> None:
        """Make ``model`` current; its batcher starts on the running loop."""
        old = self.batcher
        self.model = model
        self.batcher = MicroBatcher(model, self.max_batch_rows, self.threaded)
        self.batcher.start()
        if old is not None:
            self.swaps += 1
            asyncio.get_running_loop().create_task(old.close())

    async def start(self) -> None:
        if self.model is None:
            try:
                await asyncio.to_thread(self.load_now)
            except RegistryError as exc:
                if not (self.wait_for_alias and self.ref.alias is not None and self.poll_seconds > 0):
                    raise
                self.last_error = str(exc)
                log.warning("Not ready: %s Checking again every %.0f s.", exc, self.poll_seconds)
        if self.model is not None:
            self.install(self.model)
        if self.ref.alias is not None and self.poll_seconds > 0:
            self._follow = asyncio.get_running_loop().create_task(self._follow_alias())

    async def stop(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        if self.batcher is not None:
            await self.batcher.close(grace=1.0)

    async def check_alias(self) -> bool:
        """Load and swap in the version the alias points at now, if it moved; True when swapped."""
        version = await asyncio.to_thread(resolve_version, self.ref)
        if self.model is not None and version == self.model.version:
            return False
        model = await asyncio.to_thread(load_served, self.ref.name, version, self.cache_dir, self.max_rows)
        self.install(model)
        log.info("%s now serves version %s", self.ref.uri, version)
        return True

    async def _follow_alias(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.check_alias()
                self.last_error = None
            except Exception as exc:  # the registry being down must not stop serving the loaded version
                self.last_error = str(exc)
                log.warning("Cannot follow %s: %s", self.ref.uri, exc)

    async def predict(self, batch: Batch) -> Any:
        batcher = self.batcher
        if batcher is None:
            raise PredictionError(f"{self.ref.uri} is not loaded yet.")
        return await batcher.submit(batch)

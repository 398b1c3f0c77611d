"""The serving ceiling for `benchmarks/serving.py`: the least an HTTP model server can do per request.

The smallest ASGI app on the stack `aicml serve` runs on (uvicorn with httptools and uvloop, orjson): it
reads the body, decodes the MLflow scoring protocol's ``dataframe_split`` (``POST /invocations``) or an Open
Inference Protocol v2 request (``POST /v2/models/<name>/infer``) into the DataFrame the model was fitted
on, calls the loaded scikit-learn model's ``predict`` directly and writes the answer. No validation, no
batching, no authentication, no metrics, no error handling beyond what Python raises: a request it cannot
read drops the connection. It is a yardstick, not a server to run.

``--batch`` adds the least micro-batching there is, as the ceiling of a batching server: the requests
decoded in the same turn of the event loop are stacked into one ``predict`` call, scheduled with
``call_soon`` after the first of them, and each answered with its own rows.

    .venv/bin/python benchmarks/limit_server.py models:/bench-churn/1 --port 8090 [--batch]

``MLFLOW_TRACKING_URI`` names the registry. ``GET /v2/health/ready`` answers 200 once the model is loaded;
``GET /stats`` says how many predict calls it made and how many rows they took.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import numpy as np
import orjson
import pandas as pd

_JSON = [(b"content-type", b"application/json")]
_OPT = orjson.OPT_SERIALIZE_NUMPY


class LimitServer:
    def __init__(self, model: Any, name: str, version: str, batch: bool = False) -> None:
        self.model_predict = model.predict
        self.batch = batch
        self.pending: list[tuple[list[str], np.ndarray, asyncio.Future[Any]]] = []
        self.calls = 0  # predict calls and the rows they took, for GET /stats
        self.rows = 0
        self.name = name
        self.version = version
        self.infer_path = f"/v2/models/{name}/infer"
        names = list(getattr(model, "feature_names_in_", []))
        # The model's own column index, reused when a request names the same columns in the same order
        # (building a new one per request is what pandas would otherwise do), of Python strings as aicml
        # serve builds it (scikit-learn reads the names of an Arrow-backed index more slowly).
        self.columns = pd.Index(names, dtype=object)
        self.names = names

    def frame(self, names: list[str], block: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(block, columns=self.columns if names == self.names else names, copy=False)

    async def predict(self, names: list[str], block: np.ndarray) -> Any:
        if not self.batch:
            return self.call(names, block)
        future = asyncio.get_running_loop().create_future()
        self.pending.append((names, block, future))
        if len(self.pending) == 1:
            asyncio.get_running_loop().call_soon(self.flush)
        return await future

    def call(self, names: list[str], block: np.ndarray) -> Any:
        self.calls += 1
        self.rows += len(block)
        return self.model_predict(self.frame(names, block))

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        if len(pending) == 1 or any(names != pending[0][0] for names, _, _ in pending):
            for names, block, future in pending:
                future.set_result(self.call(names, block))
            return
        predictions = self.call(pending[0][0], np.vstack([p[1] for p in pending]))
        start = 0
        for _, block, future in pending:
            future.set_result(predictions[start : start + len(block)])
            start += len(block)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] != "POST":
            stats = {"calls": self.calls, "rows": self.rows} if path == "/stats" else {}
            await self.answer(send, 200, orjson.dumps(stats))
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        payload = orjson.loads(body)
        if path == "/invocations":
            split = payload["dataframe_split"]
            names = split["columns"]
            predictions = await self.predict(names, np.array(split["data"], dtype=np.float64))
            await self.answer(send, 200, orjson.dumps({"predictions": predictions}, option=_OPT))
        elif path == self.infer_path:
            tensors = payload["inputs"]
            names = [t["name"] for t in tensors]
            block = np.array([t["data"] for t in tensors], dtype=np.float64).T
            predictions = await self.predict(names, block)
            response: dict[str, Any] = {
                "model_name": self.name,
                "model_version": self.version,
                "outputs": [
                    {
                        "name": "predictions",
                        "shape": [len(predictions)],
                        "datatype": "INT64",
                        "data": predictions,
                    }
                ],
            }
            if "id" in payload:
                response["id"] = payload["id"]
            await self.answer(send, 200, orjson.dumps(response, option=_OPT))
        else:
            await self.answer(send, 404, b"{}")

    @staticmethod
    async def answer(send: Any, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*_JSON, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_uri", help="A registry URI with a version: models:/<name>/<version>.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--batch", action="store_true", help="Stack the requests of one loop turn.")
    args = parser.parse_args()

    import mlflow.sklearn
    import uvicorn

    name, version = args.model_uri.removeprefix("models:/").split("/")
    app = LimitServer(mlflow.sklearn.load_model(args.model_uri), name, version, args.batch)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()

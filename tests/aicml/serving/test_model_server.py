"""The real `aicml serve` process: protocols, validation errors, auth, metrics, alias hot swap."""

from __future__ import annotations

import threading

import httpx
import orjson
import pytest

from tests.services import wait_for
from tests.serving_support import Registered, RunningServer

pytestmark = pytest.mark.timeout(300)


def records(registered: Registered) -> list[dict[str, object]]:
    frame = registered.frame.astype(object).where(registered.frame.notna(), None)
    return frame.to_dict(orient="records")


def invoke(server: RunningServer, payload: object, **kwargs: object) -> httpx.Response:
    return httpx.post(
        f"{server.url}/invocations", json=payload, headers=server.headers(), timeout=10, **kwargs
    )


def test_every_mlflow_format_gives_mlflow_predictions(server: RunningServer, registered: Registered) -> None:
    rows = records(registered)
    columns = list(registered.frame.columns)
    split = {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}
    for payload in (
        {"dataframe_split": split},
        {"dataframe_records": rows},
        {"instances": rows},
        {"inputs": rows},
        {"inputs": {c: [r[c] for r in rows] for c in columns}},
    ):
        response = invoke(server, payload)
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": registered.expected_v1}


def test_csv_body_is_accepted(server: RunningServer, registered: Registered) -> None:
    response = httpx.post(
        f"{server.url}/invocations",
        content=registered.frame.to_csv(index=False),
        headers={**server.headers(), "Content-Type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == registered.expected_v1


def test_open_inference_protocol_v2(server: RunningServer, registered: Registered) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{server.url}/v2/models/{registered.name}").json()
    assert meta["versions"] == [registered.v1]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        "a": "FP64",
        "b": "FP64",
        "n": "INT64",
        "opt": "FP64",
    }
    frame = registered.frame
    inputs = [
        {"name": "a", "shape": [8], "datatype": "FP64", "data": frame["a"].tolist()},
        {"name": "b", "shape": [8], "datatype": "FP64", "data": frame["b"].tolist()},
        {"name": "n", "shape": [8, 1], "datatype": "INT64", "data": frame["n"].tolist()},
    ]
    response = httpx.post(
        f"{server.url}/v2/models/{registered.name}/infer",
        json={"id": "r1", "inputs": inputs},
        headers=server.headers(),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "r1" and body["model_version"] == registered.v1
    assert body["outputs"][0]["shape"] == [8]
    # "opt" was left out: it is optional in the signature, so rows predict with it missing.
    assert len(body["outputs"][0]["data"]) == 8
    wrong = httpx.post(
        f"{server.url}/v2/models/{registered.name}/infer",
        json={"inputs": [{**inputs[0], "datatype": "BYTES"}, *inputs[1:]]},
        headers=server.headers(),
    )
    assert wrong.status_code == 400 and wrong.json()["field"] == "a"
    unknown = httpx.post(
        f"{server.url}/v2/models/nope/infer", json={"inputs": inputs}, headers=server.headers()
    )
    assert unknown.status_code == 404


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"dataframe_records": [{"a": 1.0, "b": 2.0, "n": 1, "zzz": 3}]}, 400, "zzz"),
        ({"dataframe_records": [{"a": "x", "b": 2.0, "n": 1}]}, 400, "a"),
        ({"dataframe_records": [{"a": 1.0, "b": 2.0, "n": 1.5}]}, 400, "n"),
        ({"dataframe_records": [{"a": True, "b": 2.0, "n": 1}]}, 400, "a"),
        ({"dataframe_records": [{"a": None, "b": 2.0, "n": 1}]}, 400, "a"),
        ({"dataframe_records": [{"a": [1.0], "b": 2.0, "n": 1}]}, 400, "a"),
        ({"dataframe_records": [{"b": 2.0, "n": 1}]}, 400, "a"),
        ({"dataframe_records": []}, 400, "dataframe_records"),
        ({"records": []}, 400, "records"),
        ({"dataframe_split": {"columns": ["a", "b", "n"], "data": [[1.0, 2.0]]}}, 400, "data"),
        ({"dataframe_records": [{"a": 1.0, "b": 2.0, "n": 1}], "params": {"x": 1}}, 400, "params"),
        ([1, 2, 3], 400, "body"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    server: RunningServer, payload: object, status: int, field: str
) -> None:
    response = invoke(server, payload)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field
    assert "Traceback" not in body["message"]


def test_nan_and_infinity_follow_the_signature(server: RunningServer) -> None:
    def send(raw: bytes) -> httpx.Response:
        return httpx.post(
            f"{server.url}/invocations",
            content=raw,
            headers={**server.headers(), "Content-Type": "application/json"},
        )

    # "opt" is optional in the signature (it had missing values), so NaN is allowed there only.
    ok = send(b'{"dataframe_records": [{"a": 1.0, "b": 2.0, "n": 1, "opt": NaN}]}')
    assert ok.status_code == 200, ok.text
    nan = send(b'{"dataframe_records": [{"a": NaN, "b": 2.0, "n": 1}]}')
    assert nan.status_code == 400 and nan.json()["field"] == "a" and "NaN" in nan.json()["message"]
    inf = send(b'{"dataframe_records": [{"a": 1.0, "b": Infinity, "n": 1}]}')
    assert inf.status_code == 400 and inf.json()["field"] == "b"
    inf_opt = send(b'{"dataframe_records": [{"a": 1.0, "b": 1.0, "n": 1, "opt": -Infinity}]}')
    assert inf_opt.status_code == 400 and inf_opt.json()["field"] == "opt"


def test_malformed_oversized_deep_and_wrong_type_bodies(server: RunningServer) -> None:
    headers = {**server.headers(), "Content-Type": "application/json"}
    url = f"{server.url}/invocations"
    assert httpx.post(url, content=b'{"inputs": [', headers=headers).status_code == 400
    deep = b"[" * 100_000 + b"]" * 100_000
    assert httpx.post(url, content=deep, headers=headers).status_code == 400
    huge = b'{"inputs": [' + b"1.0," * 400_000 + b"1.0]}"
    assert httpx.post(url, content=huge, headers=headers).status_code == 413
    too_many = {"inputs": {"a": [1.0] * 10_001, "b": [1.0] * 10_001, "n": [1] * 10_001}}
    assert httpx.post(url, content=orjson.dumps(too_many), headers=headers).status_code == 413
    xml = httpx.post(url, content=b"<a/>", headers={**server.headers(), "Content-Type": "application/xml"})
    assert xml.status_code == 415
    assert httpx.get(url, headers=server.headers()).status_code == 405
    # The server is still healthy after all of that.
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_bearer_token_is_required(server: RunningServer) -> None:
    payload = {"dataframe_records": [{"a": 1.0, "b": 2.0, "n": 1}]}
    assert httpx.post(f"{server.url}/invocations", json=payload).status_code == 401
    wrong = httpx.post(f"{server.url}/invocations", json=payload, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert invoke(server, payload).status_code == 200


def test_openapi_and_metrics(server: RunningServer, registered: Registered) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    assert "/invocations" in document["paths"] and "/v2/models/{model_name}/infer" in document["paths"]
    assert set(document["components"]["schemas"]["Record"]["properties"]) == {"a", "b", "n", "opt"}
    invoke(server, {"dataframe_records": [{"a": 1.0, "b": 2.0, "n": 1}]})
    metrics = httpx.get(f"{server.url}/metrics").text
    assert (
        f'aicml_http_requests_total{{model="{registered.name}",route="/invocations",status="200"}}' in metrics
    )
    assert (
        f'aicml_request_latency_seconds_bucket{{le="0.01",model="{registered.name}",route="/invocations"}}'
        in metrics
    )
    assert f'ml_model_deployments_active{{model="{registered.name}"}} 1.0' in metrics


def test_concurrent_requests_are_micro_batched(server: RunningServer, registered: Registered) -> None:
    import asyncio

    rows = records(registered)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=server.headers(), timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{server.url}/invocations", json={"dataframe_records": [rows[i % 8]]})
                    for i in range(48)
                )
            )

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["predictions"][0] for r in responses] == [
        registered.expected_v1[i % 8] for i in range(48)
    ]
    metrics = httpx.get(f"{server.url}/metrics").text
    count = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("aicml_predict_batch_rows_count")
    )
    assert count > 0


def test_alias_move_is_followed_without_failed_requests(
    server: RunningServer, registered: Registered
) -> None:
    from mlflow import MlflowClient

    rows = records(registered)
    statuses: list[int] = []
    seen: set[tuple[int, ...]] = set()
    stop = threading.Event()

    failures: list[BaseException] = []

    def traffic() -> None:
        with httpx.Client(headers=server.headers(), timeout=10) as client:
            while not stop.is_set():
                try:
                    response = client.post(f"{server.url}/invocations", json={"dataframe_records": rows})
                except httpx.HTTPError as exc:
                    failures.append(exc)
                    return
                statuses.append(response.status_code)
                if response.status_code == 200:
                    seen.add(tuple(response.json()["predictions"]))

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        wait_for(
            lambda: failures or tuple(registered.expected_v1) in seen, 60, "v1 answering before the swap"
        )
        MlflowClient().set_registered_model_alias(registered.name, "champion", registered.v2)
        wait_for(lambda: failures or tuple(registered.expected_v2) in seen, 60, "v2 answering after the swap")
        answered = len(statuses)
        wait_for(lambda: failures or len(statuses) >= answered + 10, 60, "ten more answers after the swap")
    finally:
        stop.set()
        worker.join()
        MlflowClient().set_registered_model_alias(registered.name, "champion", registered.v1)
    assert not failures, failures
    assert statuses and set(statuses) == {200}, f"failed during the swap: {set(statuses)}"
    assert tuple(registered.expected_v2) in seen and tuple(registered.expected_v1) in seen
    meta = httpx.get(f"{server.url}/v2/models/{registered.name}").json()
    assert meta["versions"] in ([registered.v2], [registered.v1])

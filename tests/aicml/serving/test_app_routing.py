"""The ASGI app in process with two local models: canary split, shadow mirroring, evidence and freeze."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import mlflow.pyfunc
import mlflow.sklearn
import pytest
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

from aicml.auth import BearerAuth
from aicml.registry.checksums import ModelRef
from aicml.rollout.canary import RolloutPlan, TrafficRouter
from aicml.serving.app import ModelServer
from aicml.serving.runtime import ModelHost, ServedModel
from tests.serving_support import training_frame


def local_host(tmp: Path, name: str, version: str, flip: bool) -> ModelHost:
    frame, label = training_frame()
    frame = frame.drop(columns=["opt"])
    model = LogisticRegression().fit(frame, 1 - label if flip else label)
    path = tmp / f"{name}-{version}"
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=infer_signature(frame, model.predict(frame)),
        pip_requirements=["scikit-learn"],
    )
    host = ModelHost(ModelRef(name, version, None), tmp, poll_seconds=0)
    host.model = ServedModel.from_pyfunc(name, version, mlflow.pyfunc.load_model(str(path)), 10_000)
    return host


@pytest.fixture
def rows() -> list[dict[str, object]]:
    frame, _ = training_frame(rows=50, seed=3)
    return frame.drop(columns=["opt"]).to_dict(orient="records")


def run(server: ModelServer, scenario):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        await server.startup()
        try:
            transport = httpx.ASGITransport(app=server)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await scenario(client)
        finally:
            await server.shutdown()

    return asyncio.run(main())


def test_direct_predict_path_matches_mlflow_predict(tmp_path: Path, rows: list[dict[str, object]]) -> None:
    host = local_host(tmp_path, "m", "1", flip=False)
    assert host.model is not None and host.model.direct
    batch = host.model.schema.parse_mlflow({"dataframe_records": rows})
    import pandas as pd

    expected = host.model.pyfunc.predict(pd.DataFrame(rows)).tolist()
    assert host.model.predict(batch).tolist() == expected


def test_canary_splits_and_freeze_stops_the_challenger(tmp_path: Path, rows: list[dict[str, object]]) -> None:
    champion, challenger = local_host(tmp_path, "m", "1", False), local_host(tmp_path, "m", "2", True)
    router = TrafficRouter(RolloutPlan(steps=(0.5,), seed=1))
    server = ModelServer(champion, BearerAuth(None), challenger=challenger, router=router)

    async def scenario(client: httpx.AsyncClient) -> tuple[list[int], dict[str, object], list[int]]:
        before = [
            (await client.post("/invocations", json={"dataframe_records": [rows[0]]})).json()["predictions"][
                0
            ]
            for _ in range(100)
        ]
        status = (await client.get("/router")).json()
        frozen = await client.post("/router/freeze", json={"action": "rollback"})
        assert frozen.status_code == 200
        after = [
            (await client.post("/invocations", json={"dataframe_records": [rows[0]]})).json()["predictions"][
                0
            ]
            for _ in range(30)
        ]
        return before, status, after

    before, status, after = run(server, scenario)
    assert len(set(before)) == 2  # both arms answered (they disagree by construction)
    arms = status["router"]["arms"]  # type: ignore[index]
    assert arms["champion"]["requests"] + arms["challenger"]["requests"] == 100
    assert 25 < arms["challenger"]["requests"] < 75
    assert len(set(after)) == 1  # frozen: only the champion answers


def test_shadow_never_changes_the_answer_and_counts_disagreements(
    tmp_path: Path, rows: list[dict[str, object]]
) -> None:
    champion, challenger = local_host(tmp_path, "m", "1", False), local_host(tmp_path, "m", "2", True)
    router = TrafficRouter(RolloutPlan(mode="shadow", shadow_fraction=0.5, seed=2))
    server = ModelServer(champion, BearerAuth(None), challenger=challenger, router=router)
    import pandas as pd

    assert champion.model is not None
    expected = champion.model.pyfunc.predict(pd.DataFrame(rows[:5])).tolist()

    async def scenario(client: httpx.AsyncClient) -> tuple[list[list[int]], dict[str, object]]:
        answers = [
            (await client.post("/invocations", json={"dataframe_records": rows[:5]})).json()["predictions"]
            for _ in range(60)
        ]
        # Let the mirrored requests finish: none left in flight (a deadline, not a fixed sleep).
        deadline = asyncio.get_running_loop().time() + 30
        while server._shadow_tasks:
            assert asyncio.get_running_loop().time() < deadline, "mirrored requests still running after 30 s"
            await asyncio.sleep(0.01)
        return answers, (await client.get("/router")).json()

    answers, status = run(server, scenario)
    assert all(answer == expected for answer in answers)
    shadow = status["router"]["shadow"]  # type: ignore[index]
    assert 15 < shadow["compared"] < 45
    assert shadow["disagreements"] == shadow["compared"]  # the flipped challenger disagrees every time


PREDICT_TOKEN, CONTROL_TOKEN = "predict-token-0123456789", "control-token-9876543210"


@pytest.mark.parametrize("control", [True, False])
def test_only_the_control_token_freezes_a_rollout(
    tmp_path: Path, rows: list[dict[str, object]], control: bool
) -> None:
    from pydantic import SecretStr

    champion, challenger = local_host(tmp_path, "m", "1", False), local_host(tmp_path, "m", "2", True)
    router = TrafficRouter(RolloutPlan(steps=(0.5,), seed=1))
    server = ModelServer(
        champion,
        BearerAuth(SecretStr(PREDICT_TOKEN)),
        challenger=challenger,
        router=router,
        control_auth=BearerAuth(SecretStr(CONTROL_TOKEN)) if control else None,
    )

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def scenario(client: httpx.AsyncClient) -> list[int]:
        statuses = [
            (await client.post("/router/freeze", json={"action": "rollback"}, headers=bearer(PREDICT_TOKEN))).status_code,
            (await client.post("/router/freeze", json={"action": "rollback"})).status_code,
            (await client.post("/router/freeze", json={"action": "rollback"}, headers=bearer(CONTROL_TOKEN))).status_code,
            # The control token is not a predict credential either.
            (await client.post("/invocations", json={"dataframe_records": [rows[0]]}, headers=bearer(CONTROL_TOKEN))).status_code,
        ]  # fmt: skip
        return statuses

    statuses = run(server, scenario)
    if control:
        assert statuses == [401, 401, 200, 401]
        assert server.router is not None and server.router.frozen is not None
    else:  # control not configured: refused whoever asks, and the rollout goes on
        assert statuses == [403, 403, 403, 401]
        assert server.router is not None and server.router.frozen is None


def test_the_control_token_must_differ_from_the_predict_token(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from aicml.errors import ConfigurationError
    from aicml.serving.auth import resolve_control_auth

    shared = tmp_path / "token"
    shared.write_text(PREDICT_TOKEN)
    with pytest.raises(ConfigurationError, match="must differ"):
        resolve_control_auth(shared, BearerAuth(SecretStr(PREDICT_TOKEN)))
    assert resolve_control_auth(None, BearerAuth(SecretStr(PREDICT_TOKEN))) is None


def test_invented_paths_and_models_share_one_metrics_label(tmp_path: Path) -> None:
    from aicml.serving.metrics import HTTP_REQUESTS

    champion = local_host(tmp_path, "m", "1", False)
    server = ModelServer(champion, BearerAuth(None))

    def label_sets() -> int:
        return len(
            [s for metric in HTTP_REQUESTS.collect() for s in metric.samples if s.name.endswith("_total")]
        )

    async def scenario(client: httpx.AsyncClient) -> list[int]:
        statuses = []
        for i in range(200):
            statuses.append((await client.delete(f"/v2/junk-{i}")).status_code)
            statuses.append((await client.get(f"/v2/models/other-{i}")).status_code)
            statuses.append((await client.post(f"/v2/models/other-{i}/infer", json={})).status_code)
            statuses.append((await client.get(f"/nothing/{i}")).status_code)
        statuses.append((await client.get("/v2/models/m/versions/1")).status_code)
        return statuses

    before = label_sets()
    statuses = run(server, scenario)
    assert set(statuses) <= {200, 400, 404, 405, 422}
    # 800 invented requests: at most a handful of (route, status) label sets, not hundreds.
    assert label_sets() - before <= 8

"""The pictures, on the real stack and in a real headless Chromium: a candidate's evaluation plots in MLflow,
the ingest flow's Data Docs in MLflow behind a Prefect link artifact and its progress artifact, a study's
interactive plots and progress artifact, and `aicml tune dashboard` serving optuna-dashboard.

With ``AIC_UPDATE_SCREENSHOTS=1`` the screenshots are also copied to ``docs/images/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from tests.browser import rendered_dom, screenshot
from tests.services import free_port, stop_process, wait_for

REPO = Path(__file__).resolve().parents[2]
MLFLOW_RUN_LINK = re.compile(r"\((http://[^)]+/#/experiments/(\w+)/runs/(\w+)/artifactPath/([^)]+))\)")


def artifacts(api: str, key: str) -> list[dict[str, Any]]:
    """Prefect artifacts under ``key``, newest first, as the server stored them."""
    response = httpx.post(
        f"{api}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"},
        timeout=30,
    )
    response.raise_for_status()
    return list(response.json())


def keep(picture: Path, name: str) -> None:
    if os.environ.get("AIC_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(picture, REPO / "docs" / "images" / name)


def link_of(api: str, key: str) -> tuple[str, str, str]:
    """(URL, run id, artifact path) of the MLflow link in the newest link artifact under ``key``."""
    found = artifacts(api, key)
    assert found, f"no artifact {key}"
    match = MLFLOW_RUN_LINK.search(str(found[0]["data"]))
    assert match, found[0]["data"]
    return match[1], match[3], match[4]


def test_candidate_evaluation_plots_in_mlflow(stack: Any, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from aicml.models.trainers import SklearnTrainer
    from aicml.models.training import train_candidates
    from aicml.registry.tracking import Tracking

    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"tenure": rng.normal(size=600), "calls": rng.normal(size=600)})
    frame["churned"] = np.where(frame.tenure + 0.3 * rng.normal(size=600) > 0, "yes", "no")
    tracking = Tracking(uri=stack.settings.tracking_uri, experiment="pictures")
    outcome = train_candidates(
        frame, "churned", "classification", [SklearnTrainer(LogisticRegression())], 0, tmp_path,
        tracking=tracking,
    )  # fmt: skip
    run_id = outcome.best.run_id
    client = MlflowClient(stack.settings.tracking_uri)
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {
        f"plots/{p}.png"
        for p in ("confusion_matrix", "roc_curve", "pr_curve", "calibration", "feature_importance")
    }
    importance = json.loads(
        Path(client.download_artifacts(run_id, "evaluation/feature_importance.json")).read_text()
    )
    assert next(iter(importance)) == "tenure"
    assert client.get_run(run_id).data.metrics["test_roc_auc"] > 0.9

    # MLflow serves the image, and its UI shows it on the run's artifact page.
    served = httpx.get(
        f"{stack.settings.tracking_uri}/get-artifact",
        params={"path": "plots/roc_curve.png", "run_uuid": run_id},
        timeout=30,
    )
    assert served.status_code == 200 and served.content.startswith(b"\x89PNG")
    experiment = client.get_run(run_id).info.experiment_id
    page = f"{stack.settings.tracking_uri}/#/experiments/{experiment}/runs/{run_id}/artifactPath/plots/roc_curve.png"
    keep(screenshot(page, tmp_path / "evaluation-roc.png"), "evaluation-roc.png")


def test_ingest_data_docs_linked_from_prefect_open_in_mlflow(stack: Any, tmp_path: Path) -> None:
    from aicml.data.demo import generate_churn
    from flows.ingestion import IngestParams, ingest_flow

    api = stack.settings.prefect_url
    landing = tmp_path / "landing"
    landing.mkdir()
    data = generate_churn(900, seed=4)
    for index in range(3):
        data.iloc[index * 300 : (index + 1) * 300].to_csv(landing / f"part-{index}.csv", index=False)
    load = f"pictures-{uuid.uuid4().hex[:6]}"
    result = ingest_flow(
        IngestParams(load=load, source=str(landing / "*.csv"), output=str(tmp_path / "out"), workers=2)
    )
    assert result.partitions == 3

    progress = artifacts(api, f"ingest-progress-{load}")
    assert progress and progress[0]["type"] == "progress" and progress[0]["data"] == 100
    assert "3 partitions" in progress[0]["description"]

    link, run_id, path = link_of(api, f"ingest-{load}-data-docs-link")
    assert path.startswith("data-docs/validations/") and link.startswith(stack.settings.tracking_uri)
    client = MlflowClient(stack.settings.tracking_uri)
    stored = {a.path for a in client.list_artifacts(run_id, "data-docs")}
    assert {"data-docs/index.html", "data-docs/validations", "data-docs/expectations"} <= stored
    assert client.get_run(run_id).data.tags["aicml.load"] == load
    markdown = artifacts(api, f"ingest-{load}-data-docs")
    assert markdown and "artifactPath/data-docs/index.html" in str(markdown[0]["data"])

    # The validation page as MLflow serves it, rendered; then the link itself: the MLflow UI showing it.
    page = tmp_path / "validation.html"
    page.write_bytes(
        httpx.get(
            f"{stack.settings.tracking_uri}/get-artifact",
            params={"path": path, "run_uuid": run_id},
            timeout=30,
        ).content
    )
    dom = rendered_dom(page.as_uri())
    assert "Expectation Validation Result" in dom and "Successful Expectations" in dom
    # GE's pages take Bootstrap and jQuery from public CDNs: offline (as here) they render unstyled, and
    # the MLflow UI's frame stays blank until those requests fail; the screenshot is of the page itself.
    keep(screenshot(page.as_uri(), tmp_path / "data-docs.png"), "data-docs.png")
    assert "mlflow-html-iframe" in rendered_dom(link)


def test_study_progress_plots_and_dashboard(stack: Any, tmp_path: Path) -> None:
    from flows.tuning import TuneParams, tune_flow
    from tests.testdata import regression_csv

    api = stack.settings.prefect_url
    study = f"pictures-{uuid.uuid4().hex[:6]}"
    result = tune_flow(
        TuneParams(
            source=str(regression_csv(tmp_path / "data.csv", rows=200)),
            target="y",
            model="sgd",
            sampler="random",
            budget={"n_trials": 5},
            max_epochs=3,
            parallel=1,
            study_name=study,
        )
    )
    assert result.counts.get("COMPLETE", 0) + result.counts.get("PRUNED", 0) == 5

    progress = artifacts(api, f"tuning-progress-{study}")
    assert progress and progress[0]["type"] == "progress" and progress[0]["data"] == 100
    assert "5 trials finished" in progress[0]["description"]

    link, run_id, path = link_of(api, f"tuning-plots-{study}")
    assert run_id == result.mlflow_run_id and path == "plots/study.html"
    assert link.startswith(stack.settings.tracking_uri)
    client = MlflowClient(stack.settings.tracking_uri)
    assert "plots/study.html" in {a.path for a in client.list_artifacts(run_id, "plots")}
    page = Path(client.download_artifacts(run_id, path, str(tmp_path)))
    dom = rendered_dom(page.as_uri())
    assert dom.count("js-plotly-plot") >= 3 and "main-svg" in dom, "plotly drew the plots"
    keep(screenshot(page.as_uri(), tmp_path / "optuna-history.png", height=560), "optuna-history.png")

    # `aicml tune dashboard STUDY` on the flows' default storage, for real, on a free port.
    port = free_port()
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "aicml.tuning.cli", "dashboard", study, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    try:
        assert dashboard.stdout is not None
        printed = dashboard.stdout.readline() + dashboard.stdout.readline()
        url = re.search(r"http://\S+", printed)
        assert url and url[0].startswith(f"http://127.0.0.1:{port}/dashboard/studies/"), printed
        wait_for(lambda: _answers(url[0]), 60, "optuna-dashboard answering")
        dom = rendered_dom(url[0])
        assert study in dom and "History" in dom, dom[-2000:]
        keep(screenshot(url[0], tmp_path / "optuna-dashboard.png"), "optuna-dashboard.png")
    finally:
        stop_process(dashboard)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False

"""aicml.compat: every private-API patch still fits the installed libraries, and none is installed on import.

Each patch is fenced to the versions it was written for. These tests fail when an upgrade moves a fence's
package out of range, or moves or re-signs an attribute a patch replaces or relies on: the upgrade then
says so here instead of silently running unpatched (or, worse, patched wrongly).
"""

from __future__ import annotations

import contextvars
import inspect
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from aicml import compat
from aicml.compat import CompatWarning, Fence

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "fence", [compat.HEARTBEATS, compat.SLOTS, compat.TEMPLATES, compat.PREDICT, compat.HEADERS]
)
def test_the_installed_versions_are_inside_every_fence(fence: Fence) -> None:
    assert fence.holds(), (
        f"{fence.package} {fence.installed()} is outside {fence.versions}: re-check the patch in aicml/compat.py "
        "against this version (and the attributes asserted below), then widen its fence"
    )


def test_prefect_still_runs_flow_heartbeats_through_the_replaced_function() -> None:
    import prefect.flow_engine as flow_engine

    from aicml.stack.heartbeats import flow_heartbeats

    current = flow_engine._send_heartbeats
    assert compat.parameters(current) == compat.HEARTBEATS_PARAMETERS
    assert compat.parameters(flow_heartbeats) == compat.HEARTBEATS_PARAMETERS
    # The engines call the module global by name, so replacing it reaches every flow run.
    for engine in (flow_engine.FlowRunEngine, flow_engine.AsyncFlowRunEngine):
        assert "_send_heartbeats(self" in inspect.getsource(engine)
    # What flow_heartbeats reads of the engine.
    base = flow_engine.BaseFlowRunEngine
    assert isinstance(inspect.getattr_static(base, "heartbeat_seconds"), property)
    assert compat.parameters(base._build_heartbeat_event_template) == ("self",)
    assert compat.parameters(base._emit_flow_run_heartbeat)[:3] == ("self", "resource", "related")
    assert {"flow_run", "logger"} <= set(base.__dataclass_fields__)


def test_prefect_server_still_has_the_slot_function_and_the_begin_mode() -> None:
    from prefect.server.api import concurrency_limits_v2 as api
    from prefect.server.database import configurations

    acquire = api._acquire_concurrency_slots
    assert compat.parameters(acquire) == compat.SLOTS_PARAMETERS
    assert inspect.iscoroutinefunction(inspect.unwrap(acquire))
    assert isinstance(configurations.SQLITE_BEGIN_MODE, contextvars.ContextVar)
    # Both increment endpoints call it by its module-global name.
    source = inspect.getsource(api)
    assert source.count("await _acquire_concurrency_slots(") >= 2


def test_great_expectations_views_still_take_the_parameters_the_wrap_passes(tmp_path: Path) -> None:
    import jinja2
    from great_expectations.render.view import view as gx_view

    assert compat.parameters(gx_view.DefaultJinjaView.__init__) == compat.TEMPLATES_PARAMETERS
    made = gx_view.DefaultJinjaView(custom_styles_directory=str(tmp_path))
    assert isinstance(made.env, jinja2.Environment)  # the wrap sets env.bytecode_cache on it


def test_mlflow_pyfunc_still_has_the_flavor_predict_the_fast_path_calls(tmp_path: Path) -> None:
    import mlflow.pyfunc
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
    model = LogisticRegression().fit(frame, [0, 0, 1, 1])
    mlflow.sklearn.save_model(
        model,
        str(tmp_path / "m"),
        signature=infer_signature(frame, model.predict(frame)),
        pip_requirements=["scikit-learn"],
    )
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    assert callable(pyfunc._predict_fn)
    assert pyfunc.metadata._is_signature_from_type_hint() is False
    assert pyfunc.metadata._is_type_hint_from_example() is False
    # PyFuncModel's predict ends in the same call, after its enforcement.
    assert "return self._predict_fn(data" in inspect.getsource(type(pyfunc))
    direct = compat.direct_predict(pyfunc)
    assert direct is not None
    assert direct(frame).tolist() == pyfunc.predict(frame).tolist()


def test_outside_its_fence_a_patch_is_not_installed_and_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.flow_engine as flow_engine

    before = flow_engine._send_heartbeats
    monkeypatch.setattr(compat, "HEARTBEATS", Fence("prefect", "<1"))
    monkeypatch.setattr(compat, "_warned", set())
    with pytest.warns(CompatWarning, match=r"prefect<1, installed: \d") as caught:
        assert compat.heartbeats_that_stop_at_once() is False
        assert compat.heartbeats_that_stop_at_once() is False
    assert len(caught) == 1
    assert flow_engine._send_heartbeats is before

    monkeypatch.setattr(compat, "PREDICT", Fence("mlflow", "<1"))
    with pytest.warns(CompatWarning, match="mlflow"):
        assert compat.direct_predict(object()) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compat.direct_predict(object()) is None  # warned once already


PROBE = """
import json, sys
import tasks, flows.pipeline, flows.ingestion, flows.training  # noqa: F401
import aicml.data.quality, aicml.serving.runtime, aicml.stack.engine, aicml.stack.prefect_server  # noqa: F401
import prefect.flow_engine
from great_expectations.render.view.view import DefaultJinjaView
from prefect.server.api import concurrency_limits_v2
from mlflow.tracking.request_header.databricks_request_header_provider import DatabricksRequestHeaderProvider

print(json.dumps({
    "heartbeats": prefect.flow_engine._send_heartbeats.__module__,
    "views": DefaultJinjaView.__init__.__module__,
    "slots": getattr(concurrency_limits_v2._acquire_concurrency_slots, "_aicml_begin_immediate", False),
    "databricks": getattr(DatabricksRequestHeaderProvider.in_context, "_aicml_once", False),
}))
"""


def test_importing_tasks_and_flows_installs_nothing() -> None:
    # A fresh process: this one may have installed patches in other tests.
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    originals = json.loads(done.stdout.strip().splitlines()[-1])
    assert originals == {
        "heartbeats": "prefect.flow_engine",
        "views": "great_expectations.render.view.view",
        "slots": False,
        "databricks": False,
    }


DATABRICKS_PROBE = """
import json
from mlflow.tracking.request_header.registry import resolve_request_headers
from mlflow.utils import databricks_utils

from aicml import compat

asked = []
for name in ("is_in_cluster", "is_in_databricks_notebook", "is_in_databricks_job"):
    original = getattr(databricks_utils, name)
    def counted(*args, _original=original, _name=name, **kwargs):
        asked.append(_name)
        return _original(*args, **kwargs)
    setattr(databricks_utils, name, counted)

before = [resolve_request_headers() for _ in range(3)]
unpatched = len(asked)
installed = compat.databricks_checked_once()
again = compat.databricks_checked_once()
after = [resolve_request_headers() for _ in range(50)]
print(json.dumps({"unpatched": unpatched, "patched": len(asked) - unpatched, "installed": installed,
                  "again": again, "same": before[0] == after[-1], "headers": sorted(after[-1])}))
"""


def test_mlflow_asks_whether_it_runs_on_databricks_once_per_process_not_per_request() -> None:
    """Before every REST request MLflow's client resolves its request headers, and the Databricks provider
    checked three times for Databricks (failed imports searched again each time): once per process now,
    through the same public header resolution, with the same headers."""
    done = subprocess.run(
        [sys.executable, "-c", DATABRICKS_PROBE], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["unpatched"] >= 3  # unpatched: asked at every resolution
    assert out["installed"] is True and out["again"] is True
    assert 1 <= out["patched"] <= 3  # 50 resolutions, one answer (at most the three checks of one ask)
    assert out["same"] is True

"""`import_skops`: skops imported without torch where torch is not imported, and nothing lost by it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

_CHILD = """
import json, sys
from pathlib import Path
import numpy as np
from sklearn.linear_model import LogisticRegression

from aicml.models.portable.files import import_skops, load_skops

out = {"torch_before": "torch" in sys.modules}
import threading
import aicml.models.portable.files as files
seen = []
class Probe:  # another thread asks for torch while skops imports: the finder lets it through
    def find_spec(self, name, path=None, target=None):
        if name == "skops.io._trusted_types" and not seen:
            t = threading.Thread(target=lambda: seen.append(
                [f.find_spec("torch") for f in sys.meta_path if isinstance(f, files._NoTorch)]))
            t.start(); t.join()
        return None
sys.meta_path.insert(0, Probe())
skops_io = import_skops()
out["other_thread"] = seen == [[None]]
out["torch_after_skops"] = "torch" in sys.modules
from skops.io._trusted_types import SKLEARN_ESTIMATOR_TYPE_NAMES
out["trusted"] = len(SKLEARN_ESTIMATOR_TYPE_NAMES)
out["logistic_trusted"] = "sklearn.linear_model._logistic.LogisticRegression" in SKLEARN_ESTIMATOR_TYPE_NAMES
x = np.arange(40.0).reshape(20, 2)
y = (x[:, 0] > 20).astype(int)
path = Path(sys.argv[1]) / "model.skops"
skops_io.dump(LogisticRegression().fit(x, y), path)
model = load_skops(path, [], "a test")
out["predicted"] = model.predict(x).tolist() == y.tolist()
out["torch_after_load"] = "torch" in sys.modules
import torch  # what needs torch afterwards still gets it
import sklearn.externals.array_api_compat.torch as compat
out["torch_tensor"] = float(torch.ones(2).sum())
out["compat"] = compat.__name__
print(json.dumps(out))
"""


def test_skops_imports_without_torch_and_torch_imports_afterwards(tmp_path: Path) -> None:
    """skops' list of trusted estimators walks every scikit-learn package and imported torch through
    ``sklearn.externals.array_api_compat.torch`` (1.1 s of a model server's start for a scikit-learn model):
    not any more, with the same list, and torch still imports for what needs it afterwards."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["torch_before"] is False and out["torch_after_skops"] is False
    assert out["other_thread"] is True  # the finder refuses torch to the importing thread only
    assert out["torch_after_load"] is False  # a scikit-learn model loads without torch
    # The same trusted list as a plain import (208 estimators with this scikit-learn): the walk skipped
    # only what it leaves out anyway.
    plain = subprocess.run(
        [sys.executable, "-c", "import skops.io._trusted_types as t; print(len(t.SKLEARN_ESTIMATOR_TYPE_NAMES))"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert out["trusted"] == int(plain.stdout.strip()) > 150 and out["logistic_trusted"]
    assert out["predicted"] is True
    assert out["torch_tensor"] == 2.0 and out["compat"] == "sklearn.externals.array_api_compat.torch"

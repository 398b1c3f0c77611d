"""Let the tuning tests (and the worker processes they start) import their helpers beside them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

"""Objectives for the tuning tests: cheap, deterministic curves with a known optimum.

Importable by worker processes (the tests put this folder on PYTHONPATH). Each evaluation can be
appended to a ledger file (``TOY_LEDGER``) so tests count what really ran, independent of Optuna.
"""

from __future__ import annotations

import os
import time
from typing import Any


def _ledger(ctx: Any) -> None:
    path = os.environ.get("TOY_LEDGER")
    if path:
        # One short line per write with O_APPEND: concurrent writers do not interleave.
        line = f"{os.getpid()} {ctx.number} {sorted(ctx.params.items())}\n".encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def quadratic(ctx: Any) -> float:
    """Minimum 0 at x = 2, y = -1; no epochs."""
    _ledger(ctx)
    time.sleep(float(os.environ.get("TOY_SLEEP", "0")))
    x, y = float(ctx.params["x"]), float(ctx.params.get("y", -1.0))
    return (x - 2.0) ** 2 + (y + 1.0) ** 2


def curve(ctx: Any) -> float:
    """A learning curve per epoch: loss = q + 1/(epoch+1), q = (x-2)^2; later epochs only refine it.

    Bad x are bad from the first epoch on, so a pruner can tell early. ``TOY_SLEEP`` seconds per epoch.
    """
    _ledger(ctx)
    pause = float(os.environ.get("TOY_SLEEP", "0"))
    q = (float(ctx.params["x"]) - 2.0) ** 2
    for epoch in range(ctx.max_epochs):
        if pause:
            time.sleep(pause)
        ctx.report(q + 1.0 / (epoch + 1), epoch)
    return ctx.best


def flat(ctx: Any) -> float:
    """Improves for two epochs, then stays flat: the plateau stop ends it early."""
    for epoch in range(ctx.max_epochs):
        ctx.report(max(1.0 - 0.25 * epoch, 0.5), epoch)
    return ctx.best


def broken(ctx: Any) -> float:
    raise ValueError("this objective always fails")

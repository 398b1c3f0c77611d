"""A checkpoint on a shared volume is data: one that would run code when unpickled is refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from aicml.models.trainers import _last_epoch


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "code ran"))


def test_a_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "epoch=3.ckpt"
    torch.save({"epoch": 3, "payload": _RunsCode(marker)}, evil, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(pickle.UnpicklingError):
        _last_epoch(evil)
    assert not marker.exists()


def test_a_plain_checkpoint_still_loads(tmp_path: Path) -> None:
    plain = tmp_path / "epoch=2.ckpt"
    torch.save({"epoch": 2, "state_dict": {"w": torch.zeros(2)}, "loops": {"fit": {"n": 1}}}, plain)
    assert _last_epoch(plain) == 2

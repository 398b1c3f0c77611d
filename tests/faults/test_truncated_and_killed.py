"""A checkpoint cut short on disk before a resume, and a backup process SIGKILLed mid-dump.

The resume names the bad checkpoint, sets it aside and resumes from the previous good one (or from
scratch) instead of failing to unpickle it. The killed backup leaves only a ``.partial`` directory,
which ``restore --verify`` refuses by name; the next backup succeeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.services import Postgres, wait_for

MAX_EPOCHS = 4


@pytest.mark.slow  # two trainings of a small CNN in this process: about a minute
def test_a_truncated_checkpoint_is_named_and_the_job_resumes_from_a_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import torch

    from aicml.models.jobs import TrainingJobSpec, job_directory, run_training_job
    from aicml.models.options import TrainerOptions

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) lands here
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def spec(epochs: int) -> TrainingJobSpec:
        return TrainingJobSpec(
            job_id="digits-truncated",
            family="digits",
            options=TrainerOptions(
                max_epochs=epochs, batch_size=48, accelerator="cpu", progress_bar=False, learning_rate=3e-3
            ),
            seed=3,
            checkpoint_root=str(tmp_path / "checkpoints"),
            tracking_uri=tracking,
            experiment="truncated",
            system_metrics=False,
        )

    first = run_training_job(spec(2))
    assert first is not None
    directory = job_directory(spec(2))
    # As a job killed after its second epoch leaves it: checkpoints, no completion marker.
    (directory / "COMPLETED").unlink()
    last = directory / "checkpoints" / "last.ckpt"
    best = sorted((directory / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1
    best_epoch = int(torch.load(best[0], map_location="cpu", weights_only=True)["epoch"])
    with last.open("r+b") as handle:  # cut short, as a copy interrupted by a full disk leaves it
        handle.truncate(last.stat().st_size // 3)

    result = run_training_job(spec(MAX_EPOCHS))

    assert result is not None
    assert len(result.discarded_checkpoints) == 1 and str(last) in result.discarded_checkpoints[0]
    assert (directory / "checkpoints" / "last.ckpt.corrupt").exists()
    # It resumed after the good checkpoint left (the best epoch's), and finished every epoch.
    assert result.resumed_from_epoch == best_epoch + 1
    assert result.epochs == MAX_EPOCHS
    assert result.run_id == first.run_id, "one MLflow run for the whole job"
    run = mlflow.MlflowClient(tracking).get_run(result.run_id)
    assert str(last) in run.data.tags["aicml.discarded_checkpoints"]
    assert result.metrics["accuracy"] > 0.8


def test_with_every_checkpoint_bad_the_job_starts_again_from_scratch(tmp_path: Path) -> None:
    from aicml.models.jobs import discard_bad_checkpoints

    directory = tmp_path / "checkpoints"
    directory.mkdir()
    (directory / "last.ckpt").write_bytes(b"PK\x03\x04 cut")
    (directory / "best-epoch=001.ckpt").write_bytes(b"")
    discarded = discard_bad_checkpoints(directory)
    assert sorted(Path(line.split(" (")[0]).name for line in discarded) == [
        "best-epoch=001.ckpt",
        "last.ckpt",
    ]
    assert not list(directory.glob("*.ckpt")), "nothing left to resume from: epoch 0"
    assert discard_bad_checkpoints(directory) == []  # set aside once, never loaded again


# A backup killed mid-dump.


def shutil_which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


# The backup process: pg_dump is replaced by a wrapper that writes part of a dump and then waits, so
# the kill lands mid-dump every time; the wrapper runs the real pg_dump first, to a side file.
CHILD = textwrap.dedent(
    """
    from pathlib import Path
    from aicml.stack.backup import backup_databases
    backup_databases({server!r}, [{database!r}], Path({output!r}))
    """
)
SLOW_PG_DUMP = textwrap.dedent(
    """\
    #!/bin/sh
    # pg_dump that writes the first 64 KiB of the real dump to --file, then hangs (until killed).
    for arg in "$@"; do case "$arg" in --file=*) out="${{arg#--file=}}";; esac; done
    if [ "$1" = "--version" ]; then exec {real} --version; fi
    {real} "$@" || exit $?
    head -c 65536 "$out" > "$out.cut" && mv "$out.cut" "$out"
    touch {signal}
    sleep 300
    """
)


def test_a_backup_killed_mid_dump_is_never_published_and_restore_refuses_it(
    postgres: Postgres, blob_database: str, tmp_path: Path
) -> None:
    from aicml.stack.backup import MANIFEST, STAMP_FORMAT, backup_databases
    from aicml.stack.backup_cli import app

    database, server = blob_database, postgres.server_url

    real = shutil_which("pg_dump")
    bin_dir, output, started = tmp_path / "bin", tmp_path / "backups", tmp_path / "dumping"
    bin_dir.mkdir()
    wrapper = bin_dir / "pg_dump"
    wrapper.write_text(SLOW_PG_DUMP.format(real=real, signal=started))
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(server=server, database=database, output=str(output))],
        env=env,
        start_new_session=True,  # its own process group: the kill takes the backup and its pg_dump
    )
    try:
        wait_for(lambda: started.exists() or child.poll() is not None, 60, "pg_dump starting")
        assert child.poll() is None, "the backup ended before it was killed"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    leftovers = list(output.iterdir())
    assert leftovers and all(p.name.endswith(".partial") for p in leftovers), leftovers
    assert not (leftovers[0] / MANIFEST).exists()

    runner = CliRunner()
    for path in (leftovers[0], output):
        refused = runner.invoke(
            app,
            ["restore", str(path), "-d", database, "--target", f"{database}_r", "--verify", "--url", server],
        )
        assert refused.exit_code == 1, refused.output
        assert "incomplete backup" in refused.output or "No backup under" in refused.output, refused.output
    # Even with a manifest in it (killed between the manifest and the rename), a .partial is refused.
    (leftovers[0] / MANIFEST).write_text("{}")
    refused = runner.invoke(app, ["restore", str(leftovers[0]), "-d", database, "--url", server])
    assert refused.exit_code == 1 and "incomplete backup" in refused.output, refused.output

    # The next backup gets a stamp of its own (they are to the second): wait for the clock to pass it.
    stamp = leftovers[0].name.removesuffix(".partial")
    wait_for(lambda: datetime.now(UTC).strftime(STAMP_FORMAT) > stamp, 5, "a new backup stamp")
    path = backup_databases(server, [database], output)
    assert (path / MANIFEST).is_file() and not path.name.endswith(".partial")
    assert (path / f"{database}.dump").read_bytes()[:5] == b"PGDMP"

"""The local Dagster instance of `onboarding-pipeline run` when several runs start at once on
a fresh output directory: Dagster creates its SQLite databases on first open, and without a
lock two processes raced on the same tables and alembic stamp."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock

# A child process: import everything first, wait for the common start time, open the instance.
_CHILD = """
import sys, time
from pathlib import Path
from onboarding_pipeline.runner import local_instance
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
instance, home = local_instance(Path(sys.argv[1]))
instance.get_runs(limit=1)
instance.dispose()
print("opened", home)
"""


def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "DAGSTER_HOME"}


def _start(output: Path, start_at: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", _CHILD, str(output), str(start_at)],
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_runs_starting_at_once_on_a_fresh_output_dir_all_open_the_instance(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out"
    # Four at once: without the lock, three rounds out of four failed here ("table
    # alembic_version already exists", "more than one head present").
    start_at = time.time() + 8  # after every child has imported Dagster
    children = [_start(output, start_at) for _ in range(4)]
    outputs = [child.communicate(timeout=180)[0] for child in children]
    for child, text in zip(children, outputs, strict=True):
        assert child.returncode == 0, text[-2000:]
        assert "opened" in text
    # The databases they made are sound: one more run opens them (a second alembic head
    # would fail it).
    again = _start(output, 0)
    text = again.communicate(timeout=120)[0]
    assert again.returncode == 0, text[-2000:]


def test_a_run_waits_while_another_creates_the_instance(tmp_path: Path) -> None:
    home = tmp_path / "out" / "dagster_home"
    home.mkdir(parents=True)
    with FileLock(home / ".instance.lock"):
        child = _start(tmp_path / "out", 0)
        time.sleep(6)  # long enough to import Dagster and reach the lock
        assert child.poll() is None  # waiting, not opening a half-made instance
        assert not (home / "history").exists()
    text = child.communicate(timeout=120)[0]
    assert child.returncode == 0, text[-2000:]
    assert (home / "history" / "runs.db").exists()

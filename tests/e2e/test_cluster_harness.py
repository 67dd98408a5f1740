"""The localcluster command line: clear errors for bad flags, and a clean stop on SIGTERM during start-up."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from e2e_harness.cluster import DEFAULT_BINARY


def binary() -> str:
    return os.environ.get("LOCALCLUSTER_BIN", str(DEFAULT_BINARY))


def test_localcluster_requires_a_data_dir() -> None:
    result = subprocess.run([binary()], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "--data-dir is required" in result.stderr


def test_localcluster_names_a_missing_scheduler_config(tmp_path: Path) -> None:
    result = subprocess.run(
        [binary(), f"--data-dir={tmp_path}", f"--scheduler-config={tmp_path / 'nope.yaml'}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--scheduler-config" in result.stderr
    assert "nope.yaml" in result.stderr


def test_localcluster_stops_cleanly_on_sigterm_during_start_up(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [binary(), f"--data-dir={tmp_path}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        # Wait until it is inside start-up (keys generated), not yet ready.
        while not (tmp_path / "pki" / "tokens.csv").exists() and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "stop" in out
    assert not (tmp_path / "ready.json").exists()

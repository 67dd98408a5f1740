"""The C unit tests of the pure parts (parsing, clamped atomics) and of the lock-free allocation table."""

from __future__ import annotations

import json
import subprocess

from conftest import BUILD, sanitizer_env


def test_unit_core() -> None:
    proc = subprocess.run([str(BUILD / "tests" / "unit_core")], capture_output=True, text=True, timeout=300,
                          env=sanitizer_env())
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["failures"] == 0
    assert result["checks"] >= 35

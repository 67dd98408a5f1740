"""The C unit tests of the pure parts (parsing, clamped atomics, the compute limiter's arithmetic) and of the
lock-free allocation table."""

from __future__ import annotations

import json
import subprocess

from conftest import BUILD, sanitizer_env


def run_checks(program: str) -> dict[str, int]:
    proc = subprocess.run(
        [str(BUILD / "tests" / program)], capture_output=True, text=True, timeout=300, env=sanitizer_env()
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, int] = json.loads(proc.stdout)
    assert result["failures"] == 0
    return result


def test_unit_core() -> None:
    assert run_checks("unit_core")["checks"] >= 35


def test_unit_limiter() -> None:
    """Costs, the policy table, monitor liveness, refill, and the controller on simulated devices."""
    assert run_checks("unit_limiter")["checks"] >= 45

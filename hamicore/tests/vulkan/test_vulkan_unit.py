"""Runs the C unit tests of the layer's pure parts (record map, memory policy) built next to the layer."""

from __future__ import annotations

import subprocess
from pathlib import Path


def test_policy_and_map_unit_tests_pass(build_dir: Path) -> None:
    binary = build_dir / "tests" / "hvk_unit_tests"
    assert binary.is_file(), f"{binary} is missing: run `make hamicore`"
    out = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "all checks passed" in out.stdout

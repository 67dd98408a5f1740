"""The import contracts hold, so `make test` enforces them as `make lint` does: each service's layers
(``services/<name>/.importlinter``: core <- adapters <- app, the core does no I/O) and the repository's
(``.importlinter``: services never import each other, hami_shared never imports a service)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / ".importlinter", *sorted((ROOT / "services").glob("*/.importlinter"))]
LINT_IMPORTS = pathlib.Path(sys.executable).parent / "lint-imports"


def test_every_service_declares_its_layers() -> None:
    assert {c.parent.name for c in CONFIGS[1:]} == {p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml")}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: str(c.relative_to(ROOT)))
def test_import_contracts_are_kept(config: pathlib.Path) -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--config", config.name, "--no-cache"],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout

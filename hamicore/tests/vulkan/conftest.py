"""Fixtures for the Vulkan layer tests (helpers in vk_harness.py): the build under test, the lavapipe
driver, and a clean per-test environment with a private budget file."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vk_harness import (
    LAVAPIPE_ICD,
    ProbeResult,
    RunProbe,
    SpawnProbe,
    clean_environ,
    fake_gpu_env,
    finish_probe,
    probe_argv,
    sanitizer_env,
    start_probe,
    uuid_text,
)
from vk_harness import (
    build_dir as _build_dir,
)


@pytest.fixture(scope="session")
def build_dir() -> Path:
    build = _build_dir()
    library = build / "libvgpu_vk.so"
    assert library.is_file(), f"{library} is missing: run `make hamicore`"
    return build


@pytest.fixture(scope="session")
def lavapipe_icd() -> Path:
    assert LAVAPIPE_ICD.is_file(), (
        f"{LAVAPIPE_ICD} is missing: install Debian's mesa-vulkan-drivers and libvulkan1 (`make deps`)"
    )
    return LAVAPIPE_ICD


def _loader_env(build: Path, icd: Path, runtime: Path) -> dict[str, str]:
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {
        **clean_environ(),
        "VK_ICD_FILENAMES": str(icd),
        "VK_DRIVER_FILES": str(icd),
        "XDG_DATA_HOME": str(build),
        "XDG_RUNTIME_DIR": str(runtime),
        # Mesa's own implicit layer would be one more layer in the chain that these tests are not about.
        "NODEVICE_SELECT": "1",
        **sanitizer_env(),
    }


@pytest.fixture
def base_env(build_dir: Path, lavapipe_icd: Path, tmp_path: Path) -> dict[str, str]:
    """lavapipe as the only driver, our layer findable (not enabled), a private budget file, layer logs on."""
    return {
        **_loader_env(build_dir, lavapipe_icd, tmp_path / "xdg-runtime"),
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(tmp_path / "vgpu.cache"),
        "LIBCUDA_LOG_LEVEL": "3",
    }


@pytest.fixture(scope="session")
def lavapipe_uuid(build_dir: Path, lavapipe_icd: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """lavapipe's deviceUUID as NVML spells UUIDs, read through Vulkan itself (no layer)."""
    env = _loader_env(build_dir, lavapipe_icd, tmp_path_factory.mktemp("uuid") / "xdg-runtime")
    out = subprocess.run(probe_argv(), env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    raw = json.loads(out.stdout)["uuid"]
    assert raw != "0" * 32, "lavapipe reported an all-zero deviceUUID"
    return uuid_text(raw)


@pytest.fixture
def gpu_env(base_env: dict[str, str], build_dir: Path, lavapipe_uuid: str) -> dict[str, str]:
    """base_env where the container's GPU 0, as NVML (the fake driver) reports it, is lavapipe."""
    return {**base_env, **fake_gpu_env(build_dir, lavapipe_uuid)}


@pytest.fixture
def run_probe() -> RunProbe:
    """run_probe(env, *steps, api=, validation=, budget_ext=) -> the probe's report (fails on a bad exit)."""

    def run(env: dict[str, str], *steps: str, **options: Any) -> ProbeResult:
        return finish_probe(start_probe(env, *steps, **options))

    return run


@pytest.fixture
def spawn_probe() -> Iterator[SpawnProbe]:
    """start_probe for tests with several processes: whatever still runs at teardown is killed."""
    started: list[subprocess.Popen[str]] = []

    def spawn(env: dict[str, str], *steps: str, **options: Any) -> subprocess.Popen[str]:
        process = start_probe(env, *steps, **options)
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)

"""Fixtures for the Vulkan layer tests: the build under test, the lavapipe driver, a clean environment.

Every scenario runs vk_probe.py in its own process, through the real Vulkan loader (Debian libvulkan1) and
Mesa's lavapipe (a real Vulkan driver on the CPU). The loader finds our implicit layer through
XDG_DATA_HOME=<build dir> (<build>/vulkan/implicit_layer.d/hami.json). HAMI_VK_BUILD_DIR picks another
build (the sanitizer build); HAMI_VK_PRELOAD is prepended to LD_PRELOAD of every probe (the ASan runtime).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HAMICORE = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("vk_probe.py")
LAVAPIPE_ICD = Path("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")
MiB = 1 << 20

# Variables of the parent environment that would change what a probe sees.
_INHERITED_PREFIXES = ("HAMI_", "CUDA_", "NVIDIA_", "VK_", "LIBCUDA_", "FAKE_", "XDG_", "LD_PRELOAD", "LD_LIBRARY_PATH")


@pytest.fixture(scope="session")
def build_dir() -> Path:
    build = Path(os.environ.get("HAMI_VK_BUILD_DIR", HAMICORE / "build")).resolve()
    library = build / "libvgpu_vk.so"
    assert library.is_file(), f"{library} is missing: run `make hamicore` first"
    return build


@pytest.fixture(scope="session")
def lavapipe_icd() -> Path:
    assert LAVAPIPE_ICD.is_file(), (
        f"{LAVAPIPE_ICD} is missing: install Debian's mesa-vulkan-drivers and libvulkan1 (`make deps`)"
    )
    return LAVAPIPE_ICD


@pytest.fixture
def base_env(build_dir: Path, lavapipe_icd: Path, tmp_path: Path) -> dict[str, str]:
    """An environment with lavapipe as the only driver, our layer findable, and a private budget file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    env.update(
        VK_ICD_FILENAMES=str(lavapipe_icd),
        VK_DRIVER_FILES=str(lavapipe_icd),
        XDG_DATA_HOME=str(build_dir),
        XDG_RUNTIME_DIR=str(runtime),
        CUDA_DEVICE_MEMORY_SHARED_CACHE=str(tmp_path / "vgpu.cache"),
        LIBCUDA_LOG_LEVEL="3",
        # Mesa's own implicit layer would be a second layer we do not test; keep the chain small.
        NODEVICE_SELECT="1",
    )
    if os.environ.get("HAMI_VK_PRELOAD"):
        env["LD_PRELOAD"] = os.environ["HAMI_VK_PRELOAD"]
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


class ProbeResult(dict[str, Any]):
    """vk_probe.py's JSON report, with the process's stderr kept for assertions on the layer's log."""

    stderr: str

    def outcomes(self) -> list[Any]:
        return [step["outcome"] for step in self["steps"]]


RunProbe = Callable[..., ProbeResult]


def _finish(process: subprocess.Popen[str], argv: list[str]) -> ProbeResult:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, f"{argv} exited {process.returncode}\nstderr:\n{stderr}\nstdout:\n{stdout}"
    result = ProbeResult(json.loads(stdout))
    result.stderr = stderr
    return result


@pytest.fixture
def run_probe() -> RunProbe:
    """run_probe(env, *steps, api=, validation=, budget_ext=) -> the probe's report (fails on a bad exit)."""

    def run(env: dict[str, str], *steps: str, **options: Any) -> ProbeResult:
        process = start_probe(env, *steps, **options)
        return _finish(process, list(steps))

    return run


def probe_argv(*steps: str, api: str = "1.3", validation: bool = False, budget_ext: bool = False) -> list[str]:
    argv = [sys.executable, str(PROBE), "--api", api]
    if validation:
        argv.append("--validation")
    if budget_ext:
        argv.append("--budget-ext")
    return [*argv, *steps]


def start_probe(env: dict[str, str], *steps: str, **options: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        probe_argv(*steps, **options), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish_probe(process: subprocess.Popen[str]) -> ProbeResult:
    return _finish(process, [str(a) for a in process.args])  # type: ignore[union-attr]


SpawnProbe = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def spawn_probe() -> Iterator[SpawnProbe]:
    """start_probe for tests with several processes: whatever is still running at teardown is killed."""
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


@pytest.fixture(scope="session")
def lavapipe_uuid(build_dir: Path, lavapipe_icd: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """lavapipe's deviceUUID as "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", read through Vulkan itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
    runtime = tmp_path_factory.mktemp("uuid-runtime")
    env.update(VK_ICD_FILENAMES=str(lavapipe_icd), VK_DRIVER_FILES=str(lavapipe_icd), XDG_RUNTIME_DIR=str(runtime))
    out = subprocess.run(probe_argv(), env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    raw = json.loads(out.stdout)["uuid"]
    assert raw != "0" * 32, "lavapipe reported an all-zero deviceUUID"
    return f"GPU-{raw[0:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:32]}"


def fake_gpu_env(build_dir: Path, uuid: str) -> dict[str, str]:
    """Settings that make the fake NVML/CUDA driver (TEST DOUBLE, hamicore/tests/fake) report one GPU with
    this UUID: the accounting core learns the container's GPUs from NVML."""
    return {"LD_LIBRARY_PATH": str(build_dir / "fake"), "FAKE_GPU_COUNT": "1", "FAKE_GPU_UUIDS": uuid}


@pytest.fixture
def gpu_env(base_env: dict[str, str], build_dir: Path, lavapipe_uuid: str) -> dict[str, str]:
    """base_env where the container's GPU 0, as NVML (the fake driver) reports it, is lavapipe."""
    return {**base_env, **fake_gpu_env(build_dir, lavapipe_uuid)}

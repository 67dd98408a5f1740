"""Helpers of the Vulkan layer tests: running vk_probe.py under a chosen environment.

Every scenario runs vk_probe.py in its own process, through the real Vulkan loader (Debian libvulkan1) and
Mesa's lavapipe (a real Vulkan driver on the CPU). The loader finds our implicit layer through
XDG_DATA_HOME=<build dir> (<build>/vulkan/implicit_layer.d/hami.json). Like the rest of the hamicore
suite, HAMI_BUILD_DIR picks the build under test and HAMI_SANITIZER=address|thread says it is a sanitizer
build, whose runtime is then preloaded into every probe (Python itself is not instrumented).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HAMICORE = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("vk_probe.py")
LAVAPIPE_ICD = Path("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")
SANITIZER = os.environ.get("HAMI_SANITIZER", "")
MiB = 1 << 20

# Variables of the parent environment that would change what a probe sees.
INHERITED_PREFIXES = (
    "HAMI_",
    "CUDA_",
    "NVIDIA_",
    "VK_",
    "LIBCUDA_",
    "FAKE_",
    "XDG_",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "ASAN_",
    "UBSAN_",
    "TSAN_",
)


def build_dir() -> Path:
    return Path(os.environ.get("HAMI_BUILD_DIR", HAMICORE / "build")).resolve()


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_PREFIXES)}


def _runtime(name: str) -> str:
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def sanitizer_env() -> dict[str, str]:
    """The sanitizer runtime first in LD_PRELOAD, and its options, for a sanitizer build."""
    if SANITIZER == "address":
        return {
            "LD_PRELOAD": f"{_runtime('libasan.so')} {_runtime('libubsan.so')}",
            # allocator_may_return_null: lavapipe must see a failed 1 TiB malloc, as in production.
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:allocator_may_return_null=1",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        }
    if SANITIZER == "thread":
        return {
            "LD_PRELOAD": _runtime("libtsan.so"),
            "TSAN_OPTIONS": "halt_on_error=1:report_thread_leaks=0:allocator_may_return_null=1"
            f":suppressions={Path(__file__).resolve().parent.parent / 'tsan.supp'}",
        }
    return {}


def fake_gpu_env(build: Path, uuid: str) -> dict[str, str]:
    """Settings that make the fake NVML/CUDA driver (TEST DOUBLE, hamicore/tests/fake) report one GPU with
    this UUID: the accounting core learns the container's GPUs from NVML."""
    return {"LD_LIBRARY_PATH": str(build / "fake"), "FAKE_GPU_COUNT": "1", "FAKE_GPU_UUIDS": uuid}


def with_libvgpu(env: dict[str, str], build: Path) -> dict[str, str]:
    """env with libvgpu.so preloaded (after the sanitizer runtime, if any)."""
    preload = [p for p in (env.get("LD_PRELOAD", ""), str(build / "libvgpu.so")) if p]
    return {**env, "LD_PRELOAD": " ".join(preload)}


class ProbeResult(dict[str, Any]):
    """vk_probe.py's JSON report, with the process's stderr kept for assertions on the layer's log."""

    stderr: str

    def outcomes(self) -> list[Any]:
        return [step["outcome"] for step in self["steps"]]


RunProbe = Callable[..., ProbeResult]
SpawnProbe = Callable[..., "subprocess.Popen[str]"]


def probe_argv(
    *steps: str, api: str = "1.3", validation: bool = False, budget_ext: bool = False, properties2: bool = True
) -> list[str]:
    argv = [sys.executable, str(PROBE), "--api", api]
    if not properties2:
        argv.append("--no-properties2")
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
    """Waits for a probe and returns its report; fails the test with its stderr on a bad exit."""
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, (
        f"{process.args!r} exited {process.returncode}\nstderr:\n{stderr}\nstdout:\n{stdout}"
    )
    result = ProbeResult(json.loads(stdout))
    result.stderr = stderr
    return result


def uuid_text(raw_hex: str) -> str:
    """32 hex digits -> "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (how NVML spells a UUID)."""
    return f"GPU-{raw_hex[0:8]}-{raw_hex[8:12]}-{raw_hex[12:16]}-{raw_hex[16:20]}-{raw_hex[20:32]}"

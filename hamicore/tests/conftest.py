"""Fixtures for the hamicore suite: real processes under LD_PRELOAD=libvgpu.so against the
fake driver (test doubles of libcuda.so.1 / libnvidia-ml.so.1 from hamicore/tests/fake).

HAMI_BUILD_DIR selects the build to test (default hamicore/build); HAMI_SANITIZER=address|thread
says it is a sanitizer build, so the sanitizer runtime is preloaded first and Python clients run
with the matching options.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from spec_mount import with_spec

HAMICORE = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("HAMI_BUILD_DIR", HAMICORE / "build")).resolve()
SANITIZER = os.environ.get("HAMI_SANITIZER", "")
MIB = 1 << 20


def _runtime(name: str) -> str:
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def sanitizer_preload() -> list[str]:
    if SANITIZER == "address":
        return [_runtime("libasan.so"), _runtime("libubsan.so")]
    if SANITIZER == "thread":
        return [_runtime("libtsan.so")]
    return []


TSAN_SUPPRESSIONS = Path(__file__).resolve().parent / "tsan.supp"


def sanitizer_env() -> dict[str, str]:
    if SANITIZER == "address":
        # Python itself is not instrumented: leak reports from the interpreter are noise.
        return {
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:allow_user_segv_handler=1",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        }
    if SANITIZER == "thread":
        # Thread leaks: forked children of the (multithreaded) test program inherit unjoined threads.
        return {
            "TSAN_OPTIONS": "halt_on_error=1:second_deadlock_stack=1:die_after_fork=0:report_signal_unsafe=0"
            f":report_thread_leaks=0:suppressions={TSAN_SUPPRESSIONS}"
        }
    return {}


def scaled(normal: int, sanitized: int) -> int:
    """Work sizes: full under the release build, smaller under (slow) sanitizer builds."""
    return sanitized if SANITIZER else normal


@dataclass
class Hami:
    """One container's worth of environment: its shared region, its fake GPUs, its limits, and optionally the
    device plugin's spec (``spec``: a file shown at SPEC_PATH as ``spec_how`` says)."""

    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    spec: Path | None = None
    spec_how: str = "mount"

    def command(self, argv: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        return (argv, env) if self.spec is None else with_spec(argv, env, self.spec, self.spec_how)

    @property
    def region(self) -> Path:
        return self.tmp / "region.cache"

    @property
    def lib(self) -> Path:
        return BUILD / "libvgpu.so"

    def environ(self, preload: bool = True, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "FAKE_", "LIBCUDA_"))}
        env.update(sanitizer_env())
        env["LD_LIBRARY_PATH"] = str(BUILD / "fake")
        env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = str(self.region)
        env["FAKE_GPU_STATE_FILE"] = str(self.tmp / "gpu.state")
        # The driver double's contexts and modules cost device memory like a real driver's (300 MiB, 2 MiB by
        # default), and libvgpu charges it. The tests written before that count exact budgets of allocations
        # alone, so they run with free contexts; tests of the context and module charge set realistic costs.
        env["FAKE_GPU_CONTEXT_MIB"] = "0"
        env["FAKE_MODULE_KIB"] = "0"
        env.update(self.env)
        env.update(extra)
        # The fake driver of a sanitizer build is instrumented: its runtime must load first, always.
        env["LD_PRELOAD"] = " ".join([*sanitizer_preload(), *([str(self.lib)] if preload else [])])
        if not env["LD_PRELOAD"]:
            del env["LD_PRELOAD"]
        return env

    def probe(
        self, *args: str, preload: bool = True, timeout: float = 120, check: bool = True, **extra: str
    ) -> list[dict[str, Any]]:
        """Run tests/cuda_probe with the commands args; return its JSON lines."""
        argv, env = self.command([str(BUILD / "tests" / "cuda_probe"), *args], self.environ(preload, **extra))
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"cuda_probe {' '.join(args)} exited {proc.returncode}\n{proc.stderr}")
        self.last_stderr = proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]

    def spawn(self, *args: str, **extra: str) -> subprocess.Popen[str]:
        argv, env = self.command([str(BUILD / "tests" / "cuda_probe"), *args], self.environ(True, **extra))
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @staticmethod
    def stop(proc: subprocess.Popen[str]) -> None:
        """Kill a spawned probe and reap it (closing its pipes)."""
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)

    def python(self, code: str, preload: bool = True, timeout: float = 120, **extra: str) -> str:
        """Run Python code in a fresh interpreter under the interposer; return stdout."""
        argv, env = self.command([sys.executable, "-c", code], self.environ(preload, **extra))
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"python client exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        self.last_stderr = proc.stderr
        return proc.stdout

    def inspect(self, *flags: str) -> dict[str, Any]:
        proc = subprocess.run(
            [str(BUILD / "hami-region-inspect"), "--json", *flags, str(self.region)],
            capture_output=True,
            text=True,
            timeout=60,
            env=sanitizer_env() | dict(os.environ),
        )
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result


@pytest.fixture
def hami(tmp_path: Path) -> Hami:
    if not (BUILD / "libvgpu.so").exists():
        pytest.fail(f"{BUILD}/libvgpu.so is missing: run `make hamicore` first")
    return Hami(tmp_path)


def region_layout() -> dict[str, int]:
    """Offsets of the region format, as hami-region-inspect --layout gives them to other languages."""
    out = subprocess.run([str(BUILD / "hami-region-inspect"), "--layout"], capture_output=True, text=True, check=True)
    layout: dict[str, int] = json.loads(out.stdout)
    return layout


def by_cmd(lines: list[dict[str, Any]], cmd: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["cmd"] == cmd]

"""Test kit: real shared libraries and a reader program built with the system C compiler,
source directories shaped like the hamicore build, and helpers to run the installer.

The libraries are real ELF shared objects exporting ``hami_test_version`` /
``hami_test_vk_version`` (returning the build's number) with a 1 MiB read-only payload, so
loading and reading them while the installer replaces them is a meaningful check.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hami_lib_installer.app.settings import Settings

TESTS = pathlib.Path(__file__).parent
CC = shutil.which("cc") or shutil.which("gcc") or "cc"
PAD_BYTES = 1 << 20

LIB_SOURCE = """
static const unsigned char payload[{pad}] __attribute__((used)) = {{ {n}, {tag} }};
int {symbol}(void) {{ return {n} + 0 * payload[1]; }}
"""


def _compile_library(out: pathlib.Path, n: int, symbol: str, tag: int, pad: int) -> None:
    src = out.with_suffix(".c")
    src.write_text(LIB_SOURCE.format(n=n, symbol=symbol, tag=tag, pad=pad))
    subprocess.run([CC, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", str(out), str(src)], check=True)


class LibraryBuilder:
    """Builds (once per session) and hands out copies of test libraries and sources."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self._built: dict[tuple[int, int], pathlib.Path] = {}

    def built(self, n: int, pad: int = PAD_BYTES) -> pathlib.Path:
        """Directory with libvgpu.so and libvgpu_vk.so of build number ``n``."""
        key = (n, pad)
        if key not in self._built:
            d = self.root / f"build-{n}-{pad}"
            d.mkdir()
            _compile_library(d / "libvgpu.so", n, "hami_test_version", 1, pad)
            _compile_library(d / "libvgpu_vk.so", n, "hami_test_vk_version", 2, pad)
            self._built[key] = d
        return self._built[key]

    def source(
        self, where: pathlib.Path, n: int, *, version: str | None = None, pad: int = PAD_BYTES, manifest: Any = None
    ) -> pathlib.Path:
        """A source directory like hamicore/build: libraries, optional VERSION and manifest."""
        where.mkdir(parents=True, exist_ok=True)
        built = self.built(n, pad)
        for name in ("libvgpu.so", "libvgpu_vk.so"):
            shutil.copyfile(built / name, where / name)
        if version is not None:
            (where / "VERSION").write_text(version + "\n")
        if manifest is not None:
            layer_dir = where / "vulkan" / "implicit_layer.d"
            layer_dir.mkdir(parents=True, exist_ok=True)
            (layer_dir / "hami.json").write_text(json.dumps(manifest))
        return where


def settings(source: pathlib.Path, dest: pathlib.Path, **overrides: Any) -> Settings:
    """Settings for in-process runs: GC on without grace, no /proc scan unless asked."""
    values: dict[str, Any] = {"source": source, "dest": dest, "gc_grace": 0.0, "process_scan": "off"}
    values.update(overrides)
    return Settings(**values)


def installer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hami_lib_installer.app.cli", *args]


def run_installer(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HAMI_LIB_INSTALLER")}
    full_env.update(env or {})
    return subprocess.run(installer_cmd(*args), capture_output=True, text=True, env=full_env, timeout=timeout)


def log_events(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines of an installer run."""
    events = []
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                events.append(value)
    return events


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def process_state(pid: int) -> str | None:
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return text.rsplit(")", 1)[1].split()[0]


def wait_stopped(proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Wait until the installer stopped itself at its test-hook point (state T)."""

    def stopped() -> bool:
        if proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"installer exited with {proc.returncode} before the hook point:\n{err[-3000:]}")
        return process_state(proc.pid) == "T"

    wait_until(stopped, timeout, "the installer to stop at the hook point")


def start_installer(*args: str, hook: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMI_LIB_INSTALLER")}
    env["HAMI_LIB_INSTALLER_TEST_HOOK"] = hook
    return subprocess.Popen(installer_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    reap(proc)


def reap(proc: subprocess.Popen[str]) -> None:
    """Make sure a child is gone and its pipes are closed (for finally blocks)."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(ValueError, OSError):  # pipes already closed by an earlier communicate()
        proc.communicate(timeout=30)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def run_reader_once(reader: pathlib.Path, library: pathlib.Path, symbol: str, expected: Sequence[pathlib.Path]) -> int:
    """Load ``library`` once in a fresh process; returns the version number it reports."""
    result = subprocess.run(
        [str(reader), "--once", str(library), symbol, "/nonexistent", *map(str, expected)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"reader failed on {library}: {result.stdout}{result.stderr}"
    return int(result.stdout.split("final=")[1].split()[0])


@contextlib.contextmanager
def small_filesystem(mountpoint: pathlib.Path, size_kib: int) -> Iterator[str]:
    """A small filesystem at ``mountpoint``: tmpfs, else an ext4 loop file; fails the test when neither mounts.

    Yields the kind ("tmpfs" or "loop"). Needs root (CAP_SYS_ADMIN).
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    attempts = []
    kind = None
    tmpfs = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if tmpfs.returncode == 0:
        kind = "tmpfs"
    else:
        attempts.append(f"tmpfs: {tmpfs.stderr.strip()}")
        image = mountpoint.with_suffix(".img")
        with open(image, "wb") as f:
            f.truncate(size_kib * 1024)
        mkfs = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
        loop = subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True)
        if mkfs.returncode == 0 and loop.returncode == 0:
            kind = "loop"
        else:
            attempts.append(f"loop file: {mkfs.stderr.strip()} {loop.stderr.strip()}")
    if kind is None:
        pytest.fail("cannot mount a small filesystem (run the suite as root): " + "; ".join(attempts))
    try:
        yield kind
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)

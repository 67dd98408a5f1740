"""Fixtures of the component tests: the real hami-device-plugin process on a temporary device-plugin
directory, with hamicore's fake NVML (a test double: no GPU driver here) describing the GPUs, and the
kubelet double registering it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubelet_double import KubeletDouble

ROOT = Path(__file__).resolve().parents[4]
FAKE_NVML_DIR = Path(os.environ.get("HAMI_FAKE_NVML_DIR", ROOT / "hamicore" / "build" / "fake"))
PLUGIN = Path(sys.executable).with_name("hami-device-plugin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PluginProcess:
    proc: subprocess.Popen[bytes]
    kubelet: KubeletDouble
    events: Path
    hook: Path
    metrics_port: int
    log: Path

    def inject(self, line: str) -> None:
        """Append a command to the fake NVML's event script (xid <gpu> <code> | lost <gpu> | recover <gpu>)."""
        with self.events.open("a") as f:
            f.write(line + "\n")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_devices(self, predicate: Callable[[dict[str, str]], bool], within: float = 60.0) -> dict[str, str]:
        """The kubelet double's latest device list once it satisfies ``predicate``; fails with the plugin log."""
        try:
            return await self.kubelet.wait_devices(predicate, within=within)
        except TimeoutError:
            last = self.kubelet.device_lists[-1] if self.kubelet.device_lists else None
            pytest.fail(
                f"device list never matched within {within} s; last: {last}\nplugin log:\n{self.log_text()[-6000:]}"
            )


StartPlugin = Callable[..., Awaitable[PluginProcess]]


@pytest.fixture
async def start_plugin(tmp_path: Path) -> AsyncIterator[StartPlugin]:
    """``await start_plugin(gpus=2, split=4, args=[...], env={...}, prepare=f)`` -> a registered plugin process;
    ``prepare(hook)`` runs before the process starts (e.g. to leave what an earlier run of the plugin wrote)."""
    if not (FAKE_NVML_DIR / "libnvidia-ml.so.1").is_file():
        pytest.fail(f"hamicore's fake NVML is not built at {FAKE_NVML_DIR}: run `make hamicore` first")
    started: list[PluginProcess] = []

    async def start(
        *,
        gpus: int = 1,
        split: int = 4,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        prepare: Callable[[Path], None] | None = None,
    ) -> PluginProcess:
        # unix socket paths are limited to 107 bytes: keep the directory short
        plugin_dir = Path(tempfile.mkdtemp(prefix="dpc-", dir="/tmp"))
        kubelet = KubeletDouble(plugin_dir)
        await kubelet.start()
        events = tmp_path / f"events-{len(started)}"
        events.touch()
        hook = tmp_path / f"hook-{len(started)}"
        if prepare is not None:
            prepare(hook)
        port = free_port()
        log = tmp_path / f"plugin-{len(started)}.log"
        environ = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FAKE_", "HAMI_DEVICE_PLUGIN_"))},
            "LD_LIBRARY_PATH": str(FAKE_NVML_DIR),
            "FAKE_GPU_COUNT": str(gpus),
            "FAKE_NVML_EVENTS_FILE": str(events),
            **(env or {}),
        }
        command = [
            str(PLUGIN),
            "--no-kubernetes",
            f"--device-plugin-dir={plugin_dir}",
            f"--hook-path={hook}",
            f"--split-count={split}",
            f"--metrics-listen=127.0.0.1:{port}",
            "--health-probe-interval=0.2",
            "--health-recovery=1",
            "--monitor-interval=0.5",
            *(args or []),
        ]
        with log.open("wb") as out:
            proc = await asyncio.to_thread(subprocess.Popen, command, env=environ, stdout=out, stderr=subprocess.STDOUT)
        handle = PluginProcess(proc, kubelet, events, hook, port, log)
        started.append(handle)
        listed = asyncio.create_task(kubelet.wait_devices(lambda devices: True, within=90))
        while not listed.done():
            if proc.poll() is not None:
                listed.cancel()
                pytest.fail(f"plugin exited with {proc.returncode} before listing devices; log:\n{handle.log_text()}")
            await asyncio.wait({listed}, timeout=0.2)
        if listed.exception() is not None:
            pytest.fail(f"plugin did not register and list devices within 90 s; log:\n{handle.log_text()}")
        return handle

    yield start
    for handle in started:
        if handle.proc.poll() is None:
            handle.proc.send_signal(signal.SIGTERM)
            try:
                handle.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                handle.proc.kill()
                handle.proc.wait()
        await handle.kubelet.stop()
        for entry in handle.kubelet.dir.iterdir():
            entry.unlink()
        handle.kubelet.dir.rmdir()

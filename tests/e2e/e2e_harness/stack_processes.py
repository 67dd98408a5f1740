"""The services of HamiStack (tests/e2e/hami_stack.py) as local processes: :class:`ServiceProcess` (argv,
environment, log, readiness URL; restartable), the environment they start from, and where the built artifacts
are (the workspace venv's console scripts, hamicore's build)."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
VENV_BIN = ROOT / ".venv" / "bin"
HAMICORE_BUILD = Path(os.environ.get("HAMI_BUILD_DIR", ROOT / "hamicore" / "build"))


class StackError(RuntimeError):
    """A piece of the stack did not come up; the message names it and carries its log tail."""


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def base_env() -> dict[str, str]:
    """What every service process starts from: a few variables of ours, the venv first on PATH, unbuffered."""
    keep = ("PATH", "HOME", "LANG", "SSL_CERT_FILE", "TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def missing_artifacts() -> list[str]:
    """What `make setup hamicore` builds and the stack needs, where it is missing."""
    needed = (
        HAMICORE_BUILD / "libvgpu.so",
        HAMICORE_BUILD / "libvgpu_vk.so",
        HAMICORE_BUILD / "fake" / "libcuda.so.1",
        HAMICORE_BUILD / "fake" / "libnvidia-ml.so.1",
        *(VENV_BIN / s for s in ("hami-webhook", "hami-scheduler-extender", "hami-device-plugin")),
        VENV_BIN / "hami-lib-installer",
    )
    return [str(p) for p in needed if not p.exists()]


@dataclass
class ServiceProcess:
    """A service run as a local process: its argv, environment and log; restartable."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    ready_url: str | None = None
    ready_ca: Path | None = None
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0

    async def start(self, limit_s: float = 90.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.starts += 1
        if self.ready_url:
            await self.wait_ready(limit_s)

    async def wait_ready(self, limit_s: float) -> None:
        assert self.ready_url is not None
        context = ssl.create_default_context(cafile=str(self.ready_ca)) if self.ready_ca else None
        deadline = time.monotonic() + limit_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.returncode is not None:
                raise StackError(f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            try:
                status = await asyncio.to_thread(_http_status, self.ready_url, context)
                if status == 200:
                    return
                last = f"HTTP {status}"
            except OSError as exc:
                last = str(exc)
            await asyncio.sleep(0.3)
        raise StackError(f"{self.name} not ready at {self.ready_url} after {limit_s}s ({last}):\n{tail(self.log_path)}")

    async def stop(self, limit_s: float = 30.0) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), limit_s)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        return self.proc.returncode

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


def _http_status(url: str, context: ssl.SSLContext | None) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code

"""Run the real ``hami-webhook`` console script as a child process and find the port it bound."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trustme

SCRIPT = pathlib.Path(sys.executable).with_name("hami-webhook")


def write_certificate(ca: trustme.CA, directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A serving certificate for 127.0.0.1/localhost, written at test time (never committed)."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


class WebhookProcess:
    def __init__(self, process: asyncio.subprocess.Process, port: int, log_lines: list[dict[str, Any]]) -> None:
        self.process = process
        self.port = port
        self.log_lines = log_lines


@contextlib.asynccontextmanager
async def running_webhook(args: Sequence[str], *, ready_timeout: float = 60.0) -> AsyncIterator[WebhookProcess]:
    """Start hami-webhook with ``args`` (add ``--listen 127.0.0.1:0``), wait for its "serving" log line."""
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    log_lines: list[dict[str, Any]] = []
    port = await asyncio.wait_for(_serving_port(process.stderr, log_lines), ready_timeout)
    drain = asyncio.create_task(_drain(process.stderr, log_lines))
    try:
        yield WebhookProcess(process, port, log_lines)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        await asyncio.wait_for(drain, 10)


async def _serving_port(stream: asyncio.StreamReader, log_lines: list[dict[str, Any]]) -> int:
    while line := await stream.readline():
        entry = _parse(line)
        log_lines.append(entry)
        if entry.get("event") == "serving":
            return int(str(entry["addresses"][0]).rsplit(":", 1)[1])
    raise RuntimeError(f"hami-webhook exited before serving; its log: {log_lines}")


async def _drain(stream: asyncio.StreamReader, log_lines: list[dict[str, Any]]) -> None:
    while line := await stream.readline():
        log_lines.append(_parse(line))


def _parse(line: bytes) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except ValueError:
        return {"event": "non-json", "text": line.decode(errors="replace")}
    return entry if isinstance(entry, dict) else {"event": "non-json", "text": repr(entry)}

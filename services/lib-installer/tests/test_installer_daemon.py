"""Daemon mode: periodic verification repairs the installation, health is reported, SIGTERM stops it."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from typing import Any

from installer_testkit import LibraryBuilder, installer_cmd, log_events, reap, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def files_replaced(port: int) -> float:
    _status, metrics = get(f"http://127.0.0.1:{port}/metrics")
    (line,) = [line for line in metrics.splitlines() if line.startswith("hami_lib_installer_files_replaced_total")]
    return float(line.split()[1])


def health_file(path: pathlib.Path) -> dict[str, Any]:
    try:
        value: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return value


def test_daemon_repairs_reports_health_and_stops_on_sigterm(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    source = libs.source(tmp_path / "src", 1, version="1.0")
    good_core = (source / "libvgpu.so").read_bytes()
    dest = tmp_path / "vgpu"
    health = tmp_path / "health.json"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMI_LIB_INSTALLER")}
    env |= {  # settings through the environment, as the DaemonSet sets them
        "HAMI_LIB_INSTALLER_SOURCE": str(source),
        "HAMI_LIB_INSTALLER_DEST": str(dest),
        "HAMI_LIB_INSTALLER_MODE": "daemon",
        "HAMI_LIB_INSTALLER_VERIFY_PERIOD": "0.3",
        "HAMI_LIB_INSTALLER_HEALTH_LISTEN": f"127.0.0.1:{port}",
        "HAMI_LIB_INSTALLER_HEALTH_FILE": str(health),
    }
    proc = subprocess.Popen(installer_cmd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: health_file(health).get("status") == "ok", what="first verification")
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200
        assert json.loads(body)["version"] == "1.0"

        # Deleted and tampered files come back; a deleted stable name too.
        (dest / "libvgpu_vk.so.1.0").unlink()
        with open(dest / "ld.so.preload", "w") as f:
            f.write("/tmp/evil.so\n")
        (dest / "libvgpu.so").unlink()
        wait_until(
            lambda: (
                (dest / "libvgpu_vk.so.1.0").exists()
                and (dest / "ld.so.preload").read_text() == f"{dest}/libvgpu.so\n"
                and (dest / "libvgpu.so").is_symlink()
            ),
            what="repair",
        )
        assert (dest / "libvgpu_vk.so.1.0").read_bytes() == (source / "libvgpu_vk.so").read_bytes()
        assert os.readlink(dest / "libvgpu.so") == "libvgpu.so.1.0"
        # The pass that repaired them records it when it ends: first install (6) + the three repairs.
        wait_until(lambda: files_replaced(port) >= 6 + 3, what="the repairs in /metrics")

        # A source that turns invalid makes the daemon unhealthy, with the reason, and leaves dest alone.
        (source / "libvgpu.so").write_text("not a library")
        wait_until(lambda: health_file(health).get("status") == "failing", what="failing health")
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 503
        assert "not a valid shared library" in json.loads(body)["error"]
        assert (dest / "libvgpu.so.1.0").read_bytes() == good_core
        (source / "libvgpu.so").write_bytes(good_core)
        wait_until(lambda: health_file(health).get("status") == "ok", what="recovery")

        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 0, err
    assert health_file(health)["status"] == "stopped"
    events = log_events(err)
    repaired = [e for e in events if e["event"] == "installation_repaired"]
    assert {p for e in repaired for p in e["changed"]} == {"libvgpu_vk.so.1.0", "ld.so.preload", "libvgpu.so"}
    assert any(e["event"] == "verification_failed" for e in events)
    # Passes that change nothing are not logged at info level: the log shows changes, not a heartbeat.
    assert [e["event"] for e in events].count("installation_updated") >= 2
    assert "installation_unchanged" not in [e["event"] for e in events]
    assert events[-1]["event"] == "stopped"


def test_daemon_without_health_endpoint_stops_on_sigterm(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    source = libs.source(tmp_path / "src", 1, version="1.0")
    dest = tmp_path / "vgpu"
    proc = subprocess.Popen(
        installer_cmd("--mode", "daemon", "--source", str(source), "--dest", str(dest), "--verify-period", "30"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: (dest / "ld.so.preload").exists(), what="install")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 0, err


def test_daemon_with_a_taken_health_port_fails_with_a_message(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    source = libs.source(tmp_path / "src", 1, version="1.0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            installer_cmd(
                "--mode",
                "daemon",
                "--source",
                str(source),
                "--dest",
                str(tmp_path / "vgpu"),
                "--health-listen",
                f"127.0.0.1:{port}",
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    (event,) = [e for e in log_events(result.stderr) if e["level"] == "error"]
    assert event["event"] == "service_failed"
    assert "in use" in event["error"]

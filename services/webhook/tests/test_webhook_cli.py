"""The real ``hami-webhook`` process and its settings (flags, environment, config file)."""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import signal
import ssl
import subprocess
import time

import aiohttp
import pytest
import trustme
from hami_shared.config import ConfigError
from hami_webhook.app.settings import PROGRAM
from webhook_pods import container, pod, review
from webhook_process import SCRIPT, running_webhook, write_certificate

CERTS = ["--cert-file", "/c.pem", "--key-file", "/k.pem"]


def test_help_lists_the_flags() -> None:
    result = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    for flag in (
        "--cert-file",
        "--key-file",
        "--listen",
        "--scheduler-name",
        "--gpu-resource",
        "--memory-resource",
        "--default-gpu-count",
        "--exclusive-cores",
        "--force-overwrite-default-scheduler",
        "--runtime-class-name",
        "--core-policy",
        "--config",
        "--log-level",
        "HAMI_WEBHOOK_CERT_FILE",
    ):
        assert flag in result.stdout


def test_missing_certificate_is_refused_with_what_to_give() -> None:
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "give --cert-file and --key-file" in result.stderr


def test_unreadable_certificate_is_refused(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [str(SCRIPT), "--cert-file", str(tmp_path / "nope.crt"), "--key-file", str(tmp_path / "nope.key")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_defaults() -> None:
    settings = PROGRAM.load_settings(CERTS, environ={})
    policy = settings.policy()
    assert settings.listen_address == ("0.0.0.0", 8443)
    assert policy.scheduler_name == "hami-scheduler"
    assert policy.default_gpu_count == 1
    assert policy.exclusive_cores_for_whole_card is True
    assert policy.force_overwrite_default_scheduler is True
    assert policy.runtime_class_name is None
    assert policy.core_policy == "default"
    assert policy.resource_names.memory == "nvidia.com/gpumem"
    assert settings.shutdown_delay == 0


def test_flag_beats_environment_beats_config_file(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "webhook.yaml"
    config.write_text(
        "version: v1\nscheduler-name: from-file\ndefault-gpu-count: 3\nexclusive-cores: false\n"
        "runtime-class-name: nvidia\ncore-policy: force\nmemory-resource: example.com/mem\n"
    )
    environ = {"HAMI_WEBHOOK_SCHEDULER_NAME": "from-env", "HAMI_WEBHOOK_DEFAULT_GPU_COUNT": "2"}
    settings = PROGRAM.load_settings([*CERTS, "--config", str(config), "--scheduler-name", "from-flag"], environ)
    policy = settings.policy()
    assert policy.scheduler_name == "from-flag"
    assert policy.default_gpu_count == 2
    assert policy.exclusive_cores_for_whole_card is False
    assert policy.runtime_class_name == "nvidia"
    assert policy.core_policy == "force"
    assert policy.resource_names.memory == "example.com/mem"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--listen", "nowhere"], "expected HOST:PORT"),
        (["--default-gpu-count", "0"], "must be a whole number in 1..128"),
        (["--scheduler-name", "Bad Name"], "must be a lowercase DNS name"),
        (["--memory-resource", "gpumem"], "must look like '<domain>/<name>'"),
        (["--gpu-resource", "nvidia.com/gpumem"], "must be distinct"),
        (["--cert-reload-interval", "0"], "between 0.05 and 3600"),
    ],
)
def test_bad_settings_say_what_to_change(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises((ConfigError, SystemExit)) as caught:
        PROGRAM.load_settings([*CERTS, *argv], environ={})
    message = str(caught.value) if isinstance(caught.value, ConfigError) else capsys.readouterr().err
    assert expected in message


async def test_real_process_serves_reviews_over_tls_and_stops_on_sigterm(tmp_path: pathlib.Path) -> None:
    ca = trustme.CA()
    cert_file, key_file = write_certificate(ca, tmp_path)
    args = ["--cert-file", str(cert_file), "--key-file", str(key_file), "--listen", "127.0.0.1:0"]
    args += ["--scheduler-name", "gpu-sched", "--log-level", "debug"]
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)
    async with running_webhook(args) as webhook, aiohttp.ClientSession() as session:
        base = f"https://127.0.0.1:{webhook.port}"
        obj = pod(container(limits={"nvidia.com/gpumem": "1000"}))
        resp = await session.post(f"{base}/mutate", json=review(obj, uid="cli-1"), ssl=client_ssl)
        assert resp.status == 200
        answer = await resp.json()
        operations = json.loads(base64.b64decode(answer["response"]["patch"]))
        assert {"op": "add", "path": "/spec/schedulerName", "value": "gpu-sched"} in operations
        metrics = await (await session.get(f"{base}/metrics", ssl=client_ssl)).text()
        assert 'hami_webhook_decisions_total{outcome="patched"} 1.0' in metrics
        # Plain HTTP on the TLS port is not served.
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"http://127.0.0.1:{webhook.port}/healthz")
        webhook.process.send_signal(signal.SIGTERM)
        assert await webhook.process.wait() == 0
    events = [line.get("event") for line in webhook.log_lines]
    assert "serving" in events
    assert "stopping" in events
    assert all(line.get("service") == "hami-webhook" for line in webhook.log_lines if line.get("event") != "non-json")


async def test_sigterm_with_a_shutdown_delay_drains_before_the_listener_closes(tmp_path: pathlib.Path) -> None:
    """During a rollout the pod is signalled when its endpoint is removed, and the cluster's routes follow later:
    for --shutdown-delay it keeps answering reviews (closing each connection after its response, so pooled
    connections end) while /readyz says 503; then it stops. A second signal stops it at once."""
    ca = trustme.CA()
    cert_file, key_file = write_certificate(ca, tmp_path)
    args = ["--cert-file", str(cert_file), "--key-file", str(key_file), "--listen", "127.0.0.1:0"]
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)
    delay = 3.0
    async with running_webhook([*args, "--shutdown-delay", str(delay)]) as webhook, aiohttp.ClientSession() as session:
        base = f"https://127.0.0.1:{webhook.port}"
        assert (await session.get(f"{base}/readyz", ssl=client_ssl)).status == 200
        signalled = time.monotonic()
        webhook.process.send_signal(signal.SIGTERM)

        await logged(webhook.log_lines, "draining")
        ready = await session.get(f"{base}/readyz", ssl=client_ssl)
        assert (ready.status, await ready.text()) == (503, "draining\n")
        obj = pod(container(limits={"nvidia.com/gpumem": "1000"}))
        resp = await session.post(f"{base}/mutate", json=review(obj, uid="drain-1"), ssl=client_ssl)
        assert resp.status == 200
        assert (await resp.json())["response"]["allowed"] is True
        assert resp.headers["Connection"].lower() == "close"
        assert await webhook.process.wait() == 0
        elapsed = time.monotonic() - signalled
        assert elapsed >= delay, elapsed
    events = [line.get("event") for line in webhook.log_lines]
    assert events.index("draining") < events.index("stopping")

    # A second signal ends the drain at once.
    async with running_webhook([*args, "--shutdown-delay", "60"]) as webhook:
        webhook.process.send_signal(signal.SIGTERM)
        await logged(webhook.log_lines, "draining")
        second = time.monotonic()
        webhook.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(webhook.process.wait(), 30) == 0
        assert time.monotonic() - second < 30


async def logged(log_lines: list[dict[str, object]], event: str, within: float = 30.0) -> None:
    """Until the process logged ``event`` (its stderr is read by another task, into ``log_lines``)."""
    async with asyncio.timeout(within):
        while not any(line.get("event") == event for line in log_lines):  # noqa: ASYNC110 - a list filled elsewhere
            await asyncio.sleep(0.05)


def test_shutdown_delay_is_bounded() -> None:
    with pytest.raises(ConfigError, match="shutdown delay"):
        PROGRAM.load_settings([*CERTS, "--shutdown-delay", "301"], environ={})

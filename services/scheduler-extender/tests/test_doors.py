"""Closed doors (issue 16): who may call the verbs, how much they may send, what a bind may take.

Settings refuse verbs on a non-loopback address without HTTPS and client certificates; over real TLS a
caller without a client certificate signed by the configured CA is refused; bodies over 4 MiB get 413
without being read; malformed arguments get 400; a bind takes GPUs only for pods of a scheduler name we
serve, one bind per pod at a time, and is refused with a clear reason when too many holds are pending.
"""

from __future__ import annotations

import asyncio
import io
import pathlib
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from extender_builders import container, gpu, node_json, pod_json, state_with
from hami_scheduler_extender.app import cli
from hami_scheduler_extender.app.extender import Extender, ExtenderConfig
from hami_scheduler_extender.app.metrics import ExtenderMetrics
from hami_scheduler_extender.app.server import MAX_BODY, create_verbs_app, server_tls_context
from hami_scheduler_extender.app.settings import PROGRAM, Settings
from hami_scheduler_extender.core import objects
from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.request import RequestDefaults
from hami_scheduler_extender.core.state import ClusterState
from hami_shared.config import ConfigError
from hami_shared.names import ResourceNames
from http_harness import FakeKube, Harness
from prometheus_client import CollectorRegistry


def load(argv: list[str]) -> Settings:
    return PROGRAM.load_settings(argv, {})


# --- settings ----------------------------------------------------------------------------------------------


def test_verbs_default_to_loopback_probes_to_all_addresses_metrics_to_loopback() -> None:
    settings = load([])
    assert settings.listen == ("127.0.0.1", 8888)
    assert settings.probe_listen == ("0.0.0.0", 8889)
    assert settings.metrics_listen == ("127.0.0.1", 9395)
    assert settings.tls_files() is None


@pytest.mark.parametrize("address", ["0.0.0.0:8888", "10.0.0.5:8888", ":8888", "[::]:8888", "example.org:8888"])
def test_non_loopback_verbs_without_tls_are_refused_with_what_to_set(address: str) -> None:
    with pytest.raises(ConfigError, match=r"not a loopback address.*tls-cert-file, tls-key-file and client-ca-file"):
        load([f"--listen={address}"])


@pytest.mark.parametrize("address", ["127.0.0.1:8888", "127.0.0.2:1", "[::1]:8888", "localhost:8888"])
def test_loopback_verbs_need_no_tls(address: str) -> None:
    load([f"--listen={address}"])


def test_tls_needs_all_three_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="missing: client-ca-file"):
        load([f"--tls-cert-file={tmp_path}/c", f"--tls-key-file={tmp_path}/k", "--listen=0.0.0.0:8888"])
    settings = load(
        [
            f"--tls-cert-file={tmp_path}/c",
            f"--tls-key-file={tmp_path}/k",
            f"--client-ca-file={tmp_path}/ca",
            "--listen=0.0.0.0:8888",
        ]
    )
    assert settings.tls_files() is not None


def test_listeners_need_distinct_ports() -> None:
    with pytest.raises(ConfigError, match="different ports"):
        load(["--probe-listen=0.0.0.0:8888"])


def test_served_scheduler_names() -> None:
    settings = load(["--scheduler-name=a", "--extra-scheduler-names=b, c"])
    assert settings.scheduler_names() == frozenset({"a", "b", "c"})


def test_max_pending_holds_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max-pending-holds"):
        load(["--max-pending-holds=0"])


# --- mutual TLS ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def tls_verbs(tmp_path: pathlib.Path) -> AsyncIterator[tuple[str, trustme.CA, trustme.CA]]:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    context = server_tls_context(
        cert_file=tmp_path / "server.pem", key_file=tmp_path / "server.pem", client_ca_file=tmp_path / "client-ca.pem"
    )
    state = state_with(node_json("n1", [gpu("GPU-a")]))
    extender = _extender(state, FakeKube())
    runner = web.AppRunner(
        create_verbs_app(extender=extender, metrics=ExtenderMetrics(CollectorRegistry(), version="t"))
    )
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{port}", server_ca, client_ca
    finally:
        await runner.cleanup()


def _client_context(server_ca: trustme.CA, client: trustme.CA | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    server_ca.configure_trust(context)
    if client is not None:
        client.issue_cert("kube-scheduler").configure_cert(context)
    return context


async def test_https_verbs_answer_a_client_certificate_of_the_ca(tls_verbs: tuple[str, trustme.CA, trustme.CA]) -> None:
    url, server_ca, client_ca = tls_verbs
    body = {"Pod": pod_json(containers=[container(gpu=1, mem=100)]), "NodeNames": ["n1"]}
    context = _client_context(server_ca, client_ca)
    async with aiohttp.ClientSession() as session, session.post(f"{url}/filter", json=body, ssl=context) as response:
        assert response.status == 200
        assert (await response.json())["NodeNames"] == ["n1"]


@pytest.mark.parametrize("who", ["no client certificate", "a certificate of another CA"])
async def test_https_verbs_refuse_other_callers(tls_verbs: tuple[str, trustme.CA, trustme.CA], who: str) -> None:
    url, server_ca, _ = tls_verbs
    context = _client_context(server_ca, None if who == "no client certificate" else trustme.CA())
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.post(f"{url}/filter", json={}, ssl=context) as response:
                await response.read()


# --- bodies and arguments ----------------------------------------------------------------------------------


def _extender(state: ClusterState, kube: FakeKube, **config: Any) -> Extender:
    return Extender(
        state=state,
        kube=kube,
        config=ExtenderConfig(
            names=ResourceNames(),
            defaults=RequestDefaults(),
            node_policy=Policy.BINPACK,
            gpu_policy=Policy.SPREAD,
            **config,
        ),
        metrics=ExtenderMetrics(CollectorRegistry(), version="test"),
        ready=lambda: None,
    )


async def test_a_body_over_4_mib_gets_413_without_being_read(harness: Harness) -> None:
    refused = await harness.client.post("/filter", data=io.BytesIO(b"[" + b"0," * (MAX_BODY // 2) + b"0]"))
    assert refused.status == 413
    assert "larger than 4194304 bytes" in await refused.text()
    # Announced by Content-Length: refused before anything is read.
    reader, writer = await asyncio.open_connection(harness.client.host, harness.client.port)
    writer.write(
        b"POST /bind HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readline(), 10)
    assert b" 413 " in head
    writer.close()

    # Chunked, no length: refused once 4 MiB have been read.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield b" " * 65536

    refused = await harness.client.post("/prioritize", data=chunks())
    assert refused.status == 413
    # Still answering.
    ok = await harness.client.post("/filter", json={"Pod": pod_json(), "NodeNames": ["n1"]})
    assert ok.status == 200


@pytest.mark.parametrize(
    ("verb", "body", "says"),
    [
        ("filter", b"{", "not valid JSON"),
        ("filter", b"[" * 100_000, "not valid JSON"),
        ("filter", b'{"Pod": 1}', "'Pod' must be a Pod object"),
        ("filter", b'{"Pod": {"metadata": {}}, "NodeNames": [1]}', "'NodeNames' must be a list"),
        ("filter", b'{"Pod": {"metadata": {}}, "Nodes": {"items": 3}}', "'Nodes' must be a NodeList"),
        ("prioritize", b"[]", "must be a JSON object"),
        ("bind", b'{"PodName": "p", "PodNamespace": "d", "PodUID": 1e999, "Node": "n"}', "'PodUID' must be"),
        ("bind", b'{"PodName": 123456789012345678901234567890}', "'PodName' must be"),
        ("filter", b'{"Pod": {"metadata": {}}, "NodeNames": [' + b"9" * 5000 + b"]}", "not valid JSON"),
    ],
)
async def test_malformed_arguments_get_400_saying_what_is_wrong(
    harness: Harness, verb: str, body: bytes, says: str
) -> None:
    response = await harness.client.post(f"/{verb}", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert says in await response.text()


# --- what a bind may take ----------------------------------------------------------------------------------


async def test_a_gpu_pod_of_another_scheduler_is_neither_placed_nor_bound(harness: Harness) -> None:
    pod = harness.kube.add(pod_json("other", scheduler_name="default-scheduler"))
    answer = await harness.filter(pod, ["n1"])
    assert answer["NodeNames"] == []
    assert "spec.schedulerName is 'default-scheduler'" in answer["FailedAndUnresolvableNodes"]["n1"]
    answer = await harness.bind(pod, "n1")
    assert "not one this extender serves" in answer["Error"]
    assert "nodeName" not in pod["spec"]
    assert harness.state.allocation(pod["metadata"]["uid"]) is None


async def test_a_pod_without_gpu_of_another_scheduler_is_still_bound(harness: Harness) -> None:
    pod = harness.kube.add(pod_json("plain", containers=[container(priority=1)], scheduler_name="default-scheduler"))
    assert (await harness.bind(pod, "n1"))["Error"] == ""
    assert pod["spec"]["nodeName"] == "n1"
    assert names_of(pod) == set()


def names_of(pod: dict[str, Any]) -> set[str]:
    return {k for k in pod["metadata"].get("annotations", {}) if k.startswith("hami.io/")}


async def test_a_second_bind_of_a_pod_being_bound_is_refused_and_leaves_the_first(harness: Harness) -> None:
    pod = harness.kube.add(pod_json("p"))
    harness.kube.gate = asyncio.Event()
    first = asyncio.create_task(harness.bind(pod, "n1"))
    await asyncio.wait_for(harness.kube.binding_waiting.wait(), 10)  # the first bind waits for its Binding
    second = await harness.bind(pod, "n2")
    assert "already being bound" in second["Error"]
    harness.kube.gate.set()
    assert (await first)["Error"] == ""
    held = harness.state.allocation(pod["metadata"]["uid"])
    assert held is not None
    assert held.node == "n1"


async def test_bind_with_a_uid_filtered_as_another_pod_is_refused(harness: Harness) -> None:
    victim = harness.kube.add(pod_json("victim"))
    await harness.filter(victim, ["n1"])
    attacker = harness.kube.add(pod_json("attacker", uid=victim["metadata"]["uid"]))
    answer = await harness.bind(attacker, "n1")
    assert "was filtered as pod default/victim" in answer["Error"]
    assert "nodeName" not in attacker["spec"]


async def test_bind_is_refused_with_a_reason_when_too_many_holds_are_pending() -> None:
    state = ClusterState(max_assumed=1)
    state.replace_nodes([objects.node_inventory(node_json("n1", [gpu("GPU-a", count=10)]))])
    kube = FakeKube()
    extender = _extender(state, kube)
    first, second = kube.add(pod_json("first")), kube.add(pod_json("second"))
    kube.binding_error = None
    assert (await extender.bind(_binding(first)))["Error"] == ""  # assumed until the watch confirms it
    answer = await extender.bind(_binding(second))
    assert "reservations await confirmation" in answer["Error"]
    assert "max-pending-holds" in answer["Error"]
    assert "nodeName" not in second["spec"]
    assert kube.events[-1]["reason"] == "BindingFailed"


def _binding(pod: dict[str, Any]) -> dict[str, str]:
    meta = pod["metadata"]
    return {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": "n1"}


def test_the_service_refuses_to_start_with_open_verbs_and_says_what_to_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--listen=0.0.0.0:8888"]) == 2
    error = capsys.readouterr().err
    assert "not a loopback address" in error
    assert "tls-cert-file, tls-key-file and client-ca-file" in error


def test_unreadable_certificate_files_stop_the_start(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing.pem"
    argv = [f"--tls-cert-file={missing}", f"--tls-key-file={missing}", f"--client-ca-file={missing}"]
    assert cli.main([*argv, "--listen=0.0.0.0:8888", "--kubeconfig=/nonexistent"]) == 1

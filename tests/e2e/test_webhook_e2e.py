"""hami-webhook end to end: the real kube-apiserver calls the real ``hami-webhook`` process over TLS.

The MutatingWebhookConfiguration is the one of the deploy tree (deploy/kustomize/base/webhook/), so the real
apiserver also compiles and evaluates its matchConditions (CEL) and selectors; only clientConfig is pointed at
the local process (``url`` + the test CA as caBundle; no cluster Service exists here) and the namespace selector
is narrowed to the test's namespace, since other tests create pods on the same apiserver.

Uses the fixtures of tests/e2e/conftest.py (local_cluster, k8s_api, namespace, webhook_tls).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import ssl
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_harness.waiting import wait_for
from e2e_harness.webhooks import WebhookTLS, wait_until_webhook_serves
from hami_shared.quantity import parse_quantity
from kubernetes_asyncio import client as k8s

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kustomize" / "base" / "webhook" / "mutating-webhook.yaml"
OVERWRITE_ENV = ROOT / "deploy" / "kustomize" / "components" / "overwrite-env" / "kustomization.yaml"
WEBHOOK_BIN = ROOT / ".venv" / "bin" / "hami-webhook"
SCHEDULER = "hami-scheduler"


@dataclass
class RunningWebhook:
    url_base: str
    process: asyncio.subprocess.Process
    log: list[str]


@contextlib.asynccontextmanager
async def hami_webhook_process(tls: WebhookTLS, *extra_args: str) -> AsyncIterator[RunningWebhook]:
    """The real console script on a free loopback port; its port is read from the "serving" log line."""
    process = await asyncio.create_subprocess_exec(
        str(WEBHOOK_BIN),
        "--cert-file",
        str(tls.cert_file),
        "--key-file",
        str(tls.key_file),
        "--listen",
        "127.0.0.1:0",
        "--scheduler-name",
        SCHEDULER,
        *extra_args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    log: list[str] = []
    port = None
    async with asyncio.timeout(120):
        while line := await process.stderr.readline():
            log.append(line.decode(errors="replace"))
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") == "serving":
                    port = int(str(entry["addresses"][0]).rsplit(":", 1)[1])
                    break
    assert port is not None, f"hami-webhook did not start: {''.join(log)}"

    async def drain() -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            log.append(line.decode(errors="replace"))

    drainer = asyncio.create_task(drain())
    try:
        yield RunningWebhook(url_base=f"https://127.0.0.1:{port}", process=process, log=log)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        await asyncio.wait_for(drainer, 10)


def webhook_configuration(
    name: str,
    url: str,
    ca_bundle: str,
    namespace: str,
    *,
    versions: list[str] | None = None,
    hide_gpus: bool = False,
) -> dict[str, Any]:
    """The deploy tree's configuration (with ``hide_gpus``, as components/overwrite-env adds to it), pointed at
    ``url`` and limited to ``namespace``."""
    config: dict[str, Any] = copy.deepcopy(yaml.safe_load(MANIFEST.read_text()))
    assert config["kind"] == "MutatingWebhookConfiguration"
    if hide_gpus:
        component = yaml.safe_load(OVERWRITE_ENV.read_text())
        (patch,) = [p["patch"] for p in component["patches"] if p["target"]["kind"] == "MutatingWebhookConfiguration"]
        (operation,) = yaml.safe_load(patch)
        assert (operation["op"], operation["path"]) == ("add", "/webhooks/-")
        config["webhooks"].append(operation["value"])
    config["metadata"]["name"] = name
    for hook in config["webhooks"]:
        hook["clientConfig"] = {"url": url, "caBundle": ca_bundle}
        hook["namespaceSelector"].setdefault("matchLabels", {})["kubernetes.io/metadata.name"] = namespace
        if versions is not None:
            hook["admissionReviewVersions"] = versions
    return config


@dataclass
class Registered:
    webhook: RunningWebhook
    namespace: str
    tls: WebhookTLS


@contextlib.asynccontextmanager
async def registered(
    api: k8s.ApiClient, namespace: str, tls: WebhookTLS, *, versions: list[str] | None = None, hide_gpus: bool = False
) -> AsyncIterator[Registered]:
    admission = k8s.AdmissionregistrationV1Api(api)
    async with hami_webhook_process(tls, *(["--overwrite-env"] if hide_gpus else [])) as webhook:
        name = f"hami-webhook-{namespace}"
        url = f"{webhook.url_base}/mutate"
        config = webhook_configuration(name, url, tls.ca_bundle, namespace, versions=versions, hide_gpus=hide_gpus)
        await admission.create_mutating_webhook_configuration(config)
        try:
            # The apiserver picks up a new configuration asynchronously; probe with a dry-run GPU pod.
            await wait_until_webhook_serves(
                api,
                namespace,
                gpu_pod("probe", {"nvidia.com/gpumem": "1000"}),
                lambda p: p["spec"].get("schedulerName") == SCHEDULER,
            )
            yield Registered(webhook=webhook, namespace=namespace, tls=tls)
        finally:
            await admission.delete_mutating_webhook_configuration(name)


def gpu_pod(
    name: str,
    limits: dict[str, str],
    *,
    privileged: bool = False,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    node_name: str | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "cuda", "image": "registry.local/cuda:12", "resources": {"limits": limits}}
    if privileged:
        container["securityContext"] = {"privileged": True}
    spec: dict[str, Any] = {"containers": [container]}
    if node_name:
        spec["nodeName"] = node_name
    metadata: dict[str, Any] = {"name": name, "labels": labels or {}, "annotations": annotations or {}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


async def create(api: k8s.ApiClient, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    core = k8s.CoreV1Api(api)
    created = await core.create_namespaced_pod(namespace, pod)
    stored = await core.read_namespaced_pod(created.metadata.name, namespace)
    result: dict[str, Any] = api.sanitize_for_serialization(stored)
    return result


async def refused(api: k8s.ApiClient, namespace: str, pod: dict[str, Any]) -> str:
    core = k8s.CoreV1Api(api)
    with pytest.raises(k8s.ApiException) as caught:
        await core.create_namespaced_pod(namespace, pod)
    body = json.loads(caught.value.body)
    message: str = body["message"]
    assert 'admission webhook "vgpu.hami.io" denied the request' in message
    return message


async def test_gpu_pods_are_routed_and_defaulted_other_pods_pass(
    k8s_api: k8s.ApiClient, namespace: str, webhook_tls: WebhookTLS
) -> None:
    async with registered(k8s_api, namespace, webhook_tls) as reg:
        pod = await create(k8s_api, namespace, gpu_pod("mem-only", {"nvidia.com/gpumem": "3000"}))
        assert pod["spec"]["schedulerName"] == SCHEDULER
        container = pod["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        # The apiserver stores quantities in canonical form ("3000" reads back as "3k").
        assert (
            parse_quantity(container["resources"]["limits"]["nvidia.com/gpumem"], resource="m", container="c") == 3000
        )
        # The apiserver had copied limits into requests; the patch kept them equal, so validation passed.
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"

        whole = await create(k8s_api, namespace, gpu_pod("whole-card", {"nvidia.com/gpu": "1"}))
        assert whole["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpucores"] == "100"

        vulkan = await create(
            k8s_api, namespace, gpu_pod("vk", {"nvidia.com/gpumem": "2000"}, annotations={"hami.io/vulkan": "true"})
        )
        env = {e["name"]: e.get("value") for e in vulkan["spec"]["containers"][0]["env"]}
        assert env == {"HAMI_VULKAN_ENABLE": "1", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility,graphics"}

        # Not sent at all (matchConditions), so created as written even though the webhook would have no objection.
        plain = await create(k8s_api, namespace, gpu_pod("cpu-only", {"cpu": "100m"}))
        assert plain["spec"]["schedulerName"] == "default-scheduler"

        # Opted out by label (objectSelector): a GPU pod passes unpatched.
        ignored = await create(
            k8s_api,
            namespace,
            gpu_pod("ignored", {"nvidia.com/gpumem": "1000"}, labels={"hami.io/webhook": "ignore"}),
        )
        assert ignored["spec"]["schedulerName"] == "default-scheduler"
        assert "nvidia.com/gpu" not in ignored["spec"]["containers"][0]["resources"]["limits"]

        metrics = await _metrics(reg)
        assert 'hami_webhook_decisions_total{outcome="patched"}' in metrics


async def test_overwrite_env_component_hides_gpus_from_containers_that_ask_none(
    k8s_api: k8s.ApiClient, namespace: str, webhook_tls: WebhookTLS
) -> None:
    """components/overwrite-env through the real apiserver: its second webhook sends the pods the GPU webhook is not
    sent; every container asking no GPU gets NVIDIA_VISIBLE_DEVICES=none; with the webhook down, GPU pods are refused
    (Fail) and other pods are created as written (Ignore)."""
    visible = "NVIDIA_VISIBLE_DEVICES"

    def env(container: dict[str, Any]) -> dict[str, Any]:
        return {e["name"]: e.get("value") for e in container.get("env") or []}

    async with registered(k8s_api, namespace, webhook_tls, hide_gpus=True) as reg:
        cpu_only = gpu_pod("cpu-only", {"cpu": "100m"})
        cpu_only["spec"]["containers"][0]["env"] = [{"name": visible, "value": "all"}]
        plain = await create(k8s_api, namespace, cpu_only)
        assert env(plain["spec"]["containers"][0]) == {visible: "none"}
        assert plain["spec"]["schedulerName"] == "default-scheduler"

        mixed = gpu_pod("mixed", {"nvidia.com/gpumem": "1000"})
        mixed["spec"]["containers"].append({"name": "sidecar", "image": "registry.local/busybox:1"})
        stored = await create(k8s_api, namespace, mixed)
        gpu_container, sidecar = stored["spec"]["containers"]
        assert visible not in env(gpu_container)
        assert env(sidecar) == {visible: "none"}
        assert stored["spec"]["schedulerName"] == SCHEDULER

        # The ignore label is the pod author's: it skips the GPU mutation, not the hiding (no objectSelector).
        labelled = await create(
            k8s_api, namespace, gpu_pod("cpu-labelled", {"cpu": "100m"}, labels={"hami.io/webhook": "ignore"})
        )
        assert env(labelled["spec"]["containers"][0]) == {visible: "none"}
        # Another NVIDIA plugin's resource (static MIG): sent to neither webhook, its device list stands.
        static_mig = await create(k8s_api, namespace, gpu_pod("static-mig", {"nvidia.com/mig-1g.5gb": "1"}))
        assert visible not in env(static_mig["spec"]["containers"][0])

        reg.webhook.process.kill()
        await reg.webhook.process.wait()
        core = k8s.CoreV1Api(k8s_api)
        with pytest.raises(k8s.ApiException) as caught:
            await core.create_namespaced_pod(namespace, gpu_pod("gpu-while-down", {"nvidia.com/gpumem": "1000"}))
        assert 'failed calling webhook "vgpu.hami.io"' in json.loads(caught.value.body)["message"]
        unhidden = await create(k8s_api, namespace, gpu_pod("cpu-while-down", {"cpu": "100m"}))
        assert visible not in env(unhidden["spec"]["containers"][0])


async def test_namespace_labelled_ignore_is_not_sent(
    k8s_api: k8s.ApiClient, namespace: str, webhook_tls: WebhookTLS
) -> None:
    async with registered(k8s_api, namespace, webhook_tls):
        core = k8s.CoreV1Api(k8s_api)
        await core.patch_namespace(namespace, {"metadata": {"labels": {"hami.io/webhook": "ignore"}}})

        async def unpatched() -> bool:
            # The apiserver sees the new label through its namespace informer, a moment later.
            created = await core.create_namespaced_pod(
                namespace, gpu_pod("ns-ignored", {"nvidia.com/gpumem": "1000"}), dry_run="All"
            )
            return bool(created.spec.scheduler_name == "default-scheduler")

        await wait_for(unpatched, what="pods of a namespace labelled hami.io/webhook=ignore to pass unpatched")
        pod = await create(k8s_api, namespace, gpu_pod("ns-ignored", {"nvidia.com/gpumem": "1000"}))
        assert pod["spec"]["schedulerName"] == "default-scheduler"
        assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"]["limits"]


async def test_what_cannot_work_is_refused_with_our_message(
    k8s_api: k8s.ApiClient, namespace: str, webhook_tls: WebhookTLS
) -> None:
    async with registered(k8s_api, namespace, webhook_tls):
        message = await refused(k8s_api, namespace, gpu_pod("priv", {"nvidia.com/gpu": "1"}, privileged=True))
        assert "container 'cuda' is privileged and asks for nvidia.com/gpu: 1" in message
        assert "remove securityContext.privileged" in message

        message = await refused(k8s_api, namespace, gpu_pod("pct", {"nvidia.com/gpumem-percentage": "150"}))
        assert "use a value from 0 to 100" in message

        message = await refused(k8s_api, namespace, gpu_pod("pinned", {"nvidia.com/gpumem": "10"}, node_name="n1"))
        assert "remove spec.nodeName" in message

        message = await refused(k8s_api, namespace, gpu_pod("neg", {"nvidia.com/gpumem": "1500m"}))
        assert "must be a whole number" in message

        core = k8s.CoreV1Api(k8s_api)
        names = [p.metadata.name for p in (await core.list_namespaced_pod(namespace)).items]
        assert not {"priv", "pct", "pinned", "neg"} & set(names)


async def test_v1beta1_reviews_are_answered_in_kind(
    k8s_api: k8s.ApiClient, namespace: str, webhook_tls: WebhookTLS
) -> None:
    async with registered(k8s_api, namespace, webhook_tls, versions=["v1beta1"]):
        pod = await create(k8s_api, namespace, gpu_pod("beta", {"nvidia.com/gpucores": "30"}))
        assert pod["spec"]["schedulerName"] == SCHEDULER
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


async def _metrics(reg: Registered) -> str:
    context = ssl.create_default_context(cadata=reg.tls.ca_pem.decode())

    def fetch() -> str:
        with urllib.request.urlopen(f"{reg.webhook.url_base}/metrics", context=context, timeout=10) as resp:
            text: str = resp.read().decode()
            return text

    return await asyncio.to_thread(fetch)

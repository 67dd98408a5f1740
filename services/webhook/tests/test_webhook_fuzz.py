"""Fuzz: 10,000 generated and mutated AdmissionReviews over real HTTP; no 5xx, no crash, no rule failure.

Reviews are generated from a fixed seed (reproducible), then mutated structurally (keys dropped,
values replaced by other JSON types, deep nesting, huge numbers) and at the byte level (flips,
truncation, insertion), and sent to both entry points (``/mutate`` and ``/validate``, chosen per review).
Every answer must be HTTP 200 with a review for the same uid or HTTP 400 with a message (our errors
only: never 5xx, never an errored review); a 200 patch must apply to the pod with the ``jsonpatch``
library, a second review of the patched pod must yield no patch, and ``/validate`` never patches.
Afterwards the process has not grown by more than :data:`RSS_GROWTH_LIMIT` and still answers a valid
review of each endpoint correctly (issue 16, Acceptance: fuzz).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import jsonpatch
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hami_webhook.app.metrics import WebhookMetrics
from hami_webhook.app.server import create_app
from hami_webhook.core.decision import Allowed
from hami_webhook.core.policy import MutationPolicy
from hami_webhook.core.rules import mutate_pod

SEED = 20260923
REVIEWS = 10_000
CONCURRENCY = 16
POLICY = MutationPolicy(runtime_class_name="nvidia", core_policy="force")

RESOURCE_NAMES = [
    "nvidia.com/gpu",
    "nvidia.com/gpumem",
    "nvidia.com/gpumem-percentage",
    "nvidia.com/gpucores",
    "nvidia.com/priority",
    "cpu",
    "memory",
]
QUANTITIES: list[Any] = [
    "1",
    "2",
    "0",
    "100",
    "101",
    "50",
    "8000",
    "1Gi",
    "1k",
    "-1",
    "1.5",
    "abc",
    "",
    3,
    -2,
    True,
    None,
]
ENV_NAMES = [
    "CUDA_TASK_PRIORITY",
    "NVIDIA_DRIVER_CAPABILITIES",
    "HAMI_VULKAN_ENABLE",
    "GPU_CORE_UTILIZATION_POLICY",
    "NVIDIA_VISIBLE_DEVICES",
    "CUDA_DEVICE_MEMORY_LIMIT_0",
    "CUDA_DISABLE_CONTROL",
    "PATH",
]
ANNOTATION_KEYS = ["hami.io/vulkan", "hami.io/vgpu-node", "hami.io/vgpu-devices-allocated", "hami.io/bind-phase"]
PATHS = ["/mutate", "/validate"]
RSS_GROWTH_LIMIT = 64 * 1024 * 1024
"""Bytes the server process may grow by over the whole run (caches, allocator slack; a leak of one body per
review would exceed it)."""
WEIRD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**70,
    1.5e308,
    "",
    "x" * 300,
    "\u0000\ud7ff",
    "\ud800",  # a lone surrogate: valid JSON escape, not valid UTF-8
    [],
    [None],
    {},
    {"a": {"b": {"c": []}}},
]


def generate_container(rng: random.Random, index: int) -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"c{index}", "image": "busybox"}
    resources: dict[str, Any] = {}
    for key in ("limits", "requests"):
        if rng.random() < 0.6:
            resources[key] = {rng.choice(RESOURCE_NAMES): rng.choice(QUANTITIES) for _ in range(rng.randint(0, 4))}
    if resources:
        body["resources"] = resources
    if rng.random() < 0.4:
        env = []
        for _ in range(rng.randint(0, 3)):
            name = rng.choice(ENV_NAMES)
            if rng.random() < 0.2:
                env.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
            else:
                env.append({"name": name, "value": rng.choice(["", "all", "compute", "1", "force", "void", "80g"])})
        body["env"] = env
    if rng.random() < 0.15:
        body["securityContext"] = {"privileged": rng.random() < 0.7}
    return body


def generate_review(rng: random.Random, uid: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [generate_container(rng, i) for i in range(rng.randint(1, 3))]}
    if rng.random() < 0.3:
        spec["initContainers"] = [generate_container(rng, 10 + i) for i in range(rng.randint(1, 2))]
    sub_resource = ""
    if rng.random() < 0.1:
        spec["ephemeralContainers"] = [generate_container(rng, 20)]
        sub_resource = rng.choice(["ephemeralcontainers", ""])
    if rng.random() < 0.8:
        spec["schedulerName"] = rng.choice(["default-scheduler", "hami-scheduler", "volcano", ""])
    if rng.random() < 0.05:
        spec["nodeName"] = "node-a"
    metadata: dict[str, Any] = {"name": "p", "namespace": "ns"}
    if rng.random() < 0.2:
        metadata["labels"] = {"hami.io/webhook": rng.choice(["ignore", "on"])}
    if rng.random() < 0.3:
        metadata["annotations"] = {
            rng.choice(ANNOTATION_KEYS): rng.choice(["true", "false", "TRUE", "n1", "9" * 5000])
            for _ in range(rng.randint(1, 2))
        }
    kind, resource = rng.choice([("Pod", "pods")] * 9 + [("Deployment", "deployments")])
    return {
        "apiVersion": rng.choice(["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]),
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": resource},
            "namespace": "ns",
            "name": "p",
            "operation": rng.choice(["CREATE"] * 8 + ["UPDATE", "DELETE"]),
            "subResource": sub_resource,
            "userInfo": {"username": "fuzz"},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec},
            "dryRun": False,
        },
    }


def _containers_of(document: Any) -> list[Any]:
    """Every dict or list inside ``document`` (targets for structural mutations)."""
    found: list[Any] = []
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            found.append(item)
            stack.extend(item)
    return found


def mutate_structure(rng: random.Random, document: dict[str, Any]) -> None:
    for _ in range(rng.randint(1, 3)):
        target = rng.choice(_containers_of(document))
        if isinstance(target, dict) and target:
            key = rng.choice(list(target))
            action = rng.random()
            if action < 0.3:
                del target[key]
            elif action < 0.8:
                target[key] = copy.deepcopy(rng.choice(WEIRD_VALUES))
            else:
                # A copy: inserting a shared value could make it contain itself.
                target[rng.choice(["x", "/", "~", "nvidia.com/gpu", "privileged"])] = copy.deepcopy(
                    rng.choice(WEIRD_VALUES)
                )
        elif isinstance(target, list) and target:
            index = rng.randrange(len(target))
            if rng.random() < 0.5:
                del target[index]
            else:
                target[index] = copy.deepcopy(rng.choice(WEIRD_VALUES))


def mutate_bytes(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        action = rng.random()
        position = rng.randrange(len(data))
        if action < 0.4:
            data[position] = rng.randrange(256)
        elif action < 0.6:
            del data[position:]
        elif action < 0.8:
            data[position:position] = rng.choice([b"\x00", b"\xff\xfe", b'"', b"{", b"]", b"\\u12", b"9" * 40])
        else:
            del data[position : position + rng.randint(1, 20)]
    return bytes(data)


def fuzz_bodies(seed: int, count: int) -> list[tuple[str, bytes]]:
    """``(path, body)`` pairs."""
    rng = random.Random(seed)
    bodies: list[tuple[str, bytes]] = []
    for number in range(count):
        uid = f"fuzz-{number}"
        document = generate_review(rng, uid)
        roll = rng.random()
        if roll < 0.45:
            mutate_structure(rng, document)
        body = json.dumps(document).encode()
        if 0.45 <= roll < 0.75:
            body = mutate_bytes(rng, body)
        elif roll >= 0.97:
            body = rng.choice([b"[" * 5000 + b"]" * 5000, b"null", b"1e999999", b'"\\ud800"', b"{}" * 100])
        bodies.append((rng.choice(PATHS), body))
    return bodies


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(policy=POLICY, metrics=WebhookMetrics.create())
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def check_answer(path: str, body: bytes, status: int, text: str) -> str:
    """Assert one answer is acceptable; returns its category for the tally."""
    assert status in (200, 400), f"HTTP {status} for body {body[:200]!r}: {text[:300]}"
    if status == 400:
        assert text.startswith("malformed AdmissionReview: "), text
        return "400"
    answer = json.loads(text)
    sent = json.loads(body)
    request = sent["request"]
    response = answer["response"]
    assert answer["apiVersion"] == sent["apiVersion"]
    assert response["uid"] == request["uid"]
    if not response["allowed"]:
        status_block = response["status"]
        assert status_block["code"] in (400, 403), f"errored review (rule failure): {status_block}"
        assert status_block["message"]
        return "denied"
    if "patch" not in response:
        return "allowed"
    assert path == "/mutate", f"/validate answered with a patch: {response}"
    operations = json.loads(base64.b64decode(response["patch"]))
    patched = jsonpatch.apply_patch(copy.deepcopy(request["object"]), operations)
    again = mutate_pod(patched, policy=POLICY)
    assert isinstance(again, Allowed), again
    assert again.patch == (), f"second pass not empty for {request['uid']}: {again.patch}"
    return "patched"


def resident_bytes() -> int:
    """The process's resident set now (not its peak), from /proc."""
    with open("/proc/self/status") as status:
        match = re.search(r"^VmRSS:\s+(\d+) kB", status.read(), re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


async def answers_valid_reviews(client: TestClient[Any, Any]) -> None:
    """A well-formed GPU pod is mutated, a well-formed attack is refused by the guard."""
    gpu_pod: dict[str, Any] = {
        "metadata": {"name": "ok", "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
    }
    attack = copy.deepcopy(gpu_pod)
    attack["spec"]["containers"][0]["env"] = [{"name": "CUDA_DEVICE_MEMORY_LIMIT", "value": "80g"}]
    for path, obj, allowed in (("/mutate", gpu_pod, True), ("/validate", attack, False)):
        document = generate_review(random.Random(0), f"after-{path}")
        document["request"].update(
            operation="CREATE",
            kind={"group": "", "version": "v1", "kind": "Pod"},
            resource={"group": "", "version": "v1", "resource": "pods"},
            subResource="",
            object=obj,
        )
        resp = await client.post(path, json=document)
        assert resp.status == 200
        response = (await resp.json())["response"]
        assert response["uid"] == f"after-{path}"
        assert response["allowed"] is allowed, response
        if allowed:
            assert "patch" in response
        else:
            assert "CUDA_DEVICE_MEMORY_LIMIT" in response["status"]["message"]


@pytest.mark.timeout(600)
async def test_fuzzed_reviews_never_get_5xx_or_crash(client: TestClient[Any, Any]) -> None:
    bodies = fuzz_bodies(SEED, REVIEWS)
    tally: dict[str, int] = {}
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    # Warm up (first-request allocations, imports) before the baseline.
    await answers_valid_reviews(client)
    baseline = resident_bytes()

    async def worker() -> None:
        while not queue.empty():
            path, body = queue.get_nowait()
            resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
            category = check_answer(path, body, resp.status, await resp.text())
            key = f"{path} {category}"
            tally[key] = tally.get(key, 0) + 1

    async with asyncio.TaskGroup() as tasks:
        for _ in range(CONCURRENCY):
            tasks.create_task(worker())

    assert sum(tally.values()) == REVIEWS
    growth = resident_bytes() - baseline
    assert growth < RSS_GROWTH_LIMIT, f"the server grew by {growth >> 20} MiB over {REVIEWS} reviews"
    await answers_valid_reviews(client)
    # The corpus reaches every kind of answer of each endpoint in quantity (guards against a generator that
    # degenerates).
    for key in ("400", "denied", "allowed", "patched"):
        assert tally.get(f"/mutate {key}", 0) >= 150, tally
    for key in ("400", "denied", "allowed"):
        assert tally.get(f"/validate {key}", 0) >= 300, tally
    health = await client.get("/healthz")
    assert health.status == 200
    metrics = await (await client.get("/metrics")).text()
    assert f"hami_webhook_request_duration_seconds_count {float(REVIEWS + 4)}" in metrics

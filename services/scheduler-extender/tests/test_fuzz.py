"""Fuzz of the verbs through the real aiohttp application (issue 16): 10,000 generated bodies.

ExtenderArgs, ExtenderBindingArgs and ExtenderPreemptionArgs as random JSON, near-valid documents with one part
replaced by anything, huge numbers, deep nesting, wrong types and bytes that are not JSON, POSTed over HTTP to an
in-process server of ``create_verbs_app``. Every answer must be a deliberate one (200, 400 or 413), no
exception may reach the verb's catch-all (``internal-error``), the extender's own memory stays bounded
(remembered pods, pending holds), and afterwards a valid filter is answered exactly as before.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from extender_builders import container, gpu, node_json, pod_json
from hami_scheduler_extender.app.extender import PENDING_CACHE_SIZE, Extender, ExtenderConfig
from hami_scheduler_extender.app.metrics import ExtenderMetrics
from hami_scheduler_extender.app.server import create_verbs_app
from hami_scheduler_extender.core import objects
from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.request import RequestDefaults
from hami_scheduler_extender.core.state import ClusterState
from hami_shared import names
from hami_shared.names import ResourceNames
from http_harness import FakeKube
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

EXAMPLES = 10_000
BODIES_PER_EXAMPLE = 10
MAX_PENDING_HOLDS = 50

# --- generated bodies ------------------------------------------------------------------------------------
#
# Hypothesis draws a seed per example; the bodies of one example come from a plain ``random.Random`` of that
# seed (hypothesis's own recursive JSON strategies cost ~5 ms a body here, more than the request itself).
# Derandomized, so every run sends the same 10,000 bodies.

NODES = ["n1", "n2", "ghost", ""]
RESOURCES = ["nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpumem-percentage", "nvidia.com/gpucores"]
ANNOTATIONS = [
    "nvidia.com/use-gputype",
    "nvidia.com/nouse-gpuuuid",
    "hami.io/node-scheduler-policy",
    "hami.io/gpu-scheduler-policy",
    "nvidia.com/numa-bind",
    "nvidia.com/vgpu-mode",
    names.VGPU_NODE,
    names.DEVICES_ALLOCATED,
]
TEXTS = ["", "1", "1.5", "-3", "1e40", "9" * 100, "Gi", "n1", "GPU-a", "hami-scheduler", "binpack", "spread", "\u0000"]
NUMBERS: list[Any] = [10**40, -(10**40), 2**63, 2**31, -1, 0, 1, 1e308, -0.0, 1.5, True, False]
RAW = [
    b"",
    b"{",
    b"[" * 50_000,
    b'{"Pod":' * 20_000,
    b"9" * 5000,
    b'{"PodUID": ' + b"9" * 5000 + b"}",
    b'{"Pod": {"metadata": {}}, "NodeNames": ["n1"' + b', "n1"' * 5000 + b"]}",
    b"\xff\xfe{}",
    b"null",
    b'"text"',
    b"NaN",
    b'{"Pod": {"metadata": {"uid": "u1"}, "spec": {"containers": [{"resources": {"limits": '
    b'{"nvidia.com/gpu": 1e999}}}]}}, "NodeNames": ["n1"]}',
]
Maker = Callable[[random.Random], Any]


def any_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 4 and roll < 0.15:
        return [any_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if depth < 4 and roll < 0.3:
        return {
            rng.choice([*TEXTS, "Pod", "metadata", "spec"]): any_json(rng, depth + 1) for _ in range(rng.randrange(4))
        }
    if roll < 0.45:
        return rng.choice(NUMBERS)
    if roll < 0.6:
        return rng.randint(-(2**70), 2**70)
    if roll < 0.75:
        return "".join(chr(rng.randrange(0x20, 0x2FF)) for _ in range(rng.randrange(12)))
    return rng.choice([*TEXTS, None])


def quantity(rng: random.Random) -> Any:
    if rng.random() < 0.7:
        return rng.choice(["1", "2", "1000", "0", "100", "1.5", "-1", "1e3", "9" * 40, "1Ki", "3000"])
    return any_json(rng)


def extender_args(rng: random.Random) -> dict[str, Any]:
    limits = {rng.choice(RESOURCES): quantity(rng) for _ in range(rng.randrange(4))}
    annotations = {
        rng.choice(ANNOTATIONS): rng.choice([*TEXTS, "GPU-a,NVIDIA,1000,0:;"]) for _ in range(rng.randrange(3))
    }
    pod = pod_json(
        rng.choice(["p", "q", "r"]),
        uid=rng.choice(["u1", "u2", "u3", "u4"]),
        containers=[{"name": "c", "resources": {"limits": limits}} for _ in range(1 + rng.randrange(2))],
        annotations=annotations,
        scheduler_name=rng.choice(["hami-scheduler", "hami-scheduler", "other"]),
    )
    pod["metadata"]["resourceVersion"] = rng.choice(["1", "2", ""])
    if rng.random() < 0.8:
        return {"Pod": pod, "NodeNames": [rng.choice(NODES) for _ in range(rng.randrange(5))]}
    return {"Pod": pod, "Nodes": {"items": [node_json(rng.choice(["n1", "n2"])) for _ in range(rng.randrange(3))]}}


def binding_args(rng: random.Random) -> dict[str, Any]:
    return {
        "PodName": rng.choice(["p", "q", "r", "missing"]),
        "PodNamespace": rng.choice(["default", "default", "other"]),
        "PodUID": rng.choice(["u1", "u2", "u3", "u4", "u9"]),
        "Node": rng.choice(NODES),
    }


def preemption_args(rng: random.Random) -> dict[str, Any]:
    """ExtenderPreemptionArgs: a pod (sometimes with a priority) and victims per node, as UIDs or as pods."""
    args = extender_args(rng)
    if rng.random() < 0.7:
        args["Pod"]["spec"]["priority"] = rng.choice([0, 1000, -5, 2**40, "high"])
    victims = {
        rng.choice([*NODES, "ghost"]): {
            "Pods": [{"UID": rng.choice(["u1", "u2", "u3", "u9", ""])} for _ in range(rng.randrange(4))],
            "NumPDBViolations": rng.choice([0, 1, -1, 2**70]),
        }
        for _ in range(rng.randrange(4))
    }
    if rng.random() < 0.8:
        return {"Pod": args["Pod"], "NodeNameToMetaVictims": victims}
    full = {n: {"Pods": [{"metadata": {"uid": p["UID"]}} for p in v["Pods"]]} for n, v in victims.items()}
    return {"Pod": args["Pod"], "NodeNameToVictims": full}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def mutated(make: Maker) -> Maker:
    """A valid document with one part (possibly the whole) replaced by anything, or removed."""

    def mutate(rng: random.Random) -> Any:
        document = make(rng)
        path = rng.choice(list(_paths(document)))
        if not path:
            return any_json(rng)
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and rng.random() < 0.3:
            del parent[path[-1]]
        else:
            parent[path[-1]] = any_json(rng)
        return document

    return mutate


MAKERS: list[Maker] = [
    any_json,
    extender_args,
    mutated(extender_args),
    binding_args,
    mutated(binding_args),
    preemption_args,
    mutated(preemption_args),
]


def body(rng: random.Random) -> bytes:
    if rng.random() < 0.08:
        return rng.choice(RAW) if rng.random() < 0.5 else rng.randbytes(rng.randrange(64))
    return json.dumps(rng.choice(MAKERS)(rng)).encode()


# --- the server ------------------------------------------------------------------------------------------


class Served:
    """The verbs application on an in-process server, driven from synchronous hypothesis examples.

    The client writes HTTP/1.1 requests on one kept-alive connection itself (reconnecting after an
    answer that closes it): aiohttp's own client would cost several times the server's work per request.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.state = ClusterState(max_assumed=MAX_PENDING_HOLDS)
        nodes = [
            node_json("n1", [gpu("GPU-a", count=4), gpu("GPU-b", count=4, index=1)]),
            node_json("n2", [gpu("GPU-c", count=2)]),
            node_json("quiet", [gpu("GPU-q", count=2, devmem=8000)]),
        ]
        self.state.replace_nodes([objects.node_inventory(n) for n in nodes])
        self.kube = FakeKube()
        for name, uid in (("p", "u1"), ("q", "u2"), ("r", "u3")):
            self.kube.add(pod_json(name, uid=uid, containers=[container(gpu=1, mem=1000)]))
        self.metrics = ExtenderMetrics(CollectorRegistry(), version="fuzz")
        self.extender = Extender(
            state=self.state,
            kube=self.kube,
            config=ExtenderConfig(
                names=ResourceNames(), defaults=RequestDefaults(), node_policy=Policy.BINPACK, gpu_policy=Policy.SPREAD
            ),
            metrics=self.metrics,
            ready=lambda: None,
        )
        self.runner = web.AppRunner(create_verbs_app(extender=self.extender, metrics=self.metrics), access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def post(self, verb: str, body: bytes) -> tuple[int, bytes]:
        return self.loop.run_until_complete(self._post(verb, body))

    async def _post(self, verb: str, body: bytes) -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self._streams
        head = f"POST /{verb} HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        writer.write(head.encode() + b"\r\n\r\n" + body)
        status = int((await reader.readline()).split()[1])
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
        answer = await reader.readexactly(length)
        if close:
            writer.close()
            self._streams = None
        return status, answer

    def internal_errors(self) -> float:
        return sum(
            sample.value
            for metric in self.metrics.decisions.collect()
            for sample in metric.samples
            if sample.labels.get("result") == "internal-error" and sample.name.endswith("_total")
        )

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    server = Served()
    yield server
    server.close()


def _probe_pod() -> dict[str, Any]:
    return pod_json("probe", uid="probe-uid", containers=[container(gpu=1, mem=3000, cores=30)])


def test_fuzzed_verbs_answer_deliberately_and_the_extender_still_works(served: Served) -> None:
    valid = {"Pod": _probe_pod(), "NodeNames": ["quiet", "ghost"]}
    status, before = served.post("filter", json.dumps(valid).encode())
    assert status == 200
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    bodies: list[int] = []

    @settings(
        max_examples=EXAMPLES // BODIES_PER_EXAMPLE,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(seed=st.integers(min_value=0, max_value=2**64))
    def one(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(BODIES_PER_EXAMPLE):
            verb = rng.choice(["filter", "prioritize", "bind", "preempt"])
            status, answer = served.post(verb, body(rng))
            bodies.append(status)
            assert status in (200, 400, 413), (status, answer[:300])
            if status == 200:
                json.loads(answer)

    one()
    assert len(bodies) == EXAMPLES
    assert served.internal_errors() == 0, "an exception reached the verb's catch-all"
    # Bounded memory: what the extender keeps per request is bounded, and the process did not balloon.
    assert len(served.extender._pending) <= PENDING_CACHE_SIZE
    assert served.state.assumed_count() <= MAX_PENDING_HOLDS
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mib < 200, f"peak RSS grew by {grown_mib:.0f} MiB"
    # The node the fuzz never names answers exactly as before.
    status, after = served.post("filter", json.dumps(valid).encode())
    assert status == 200
    assert json.loads(after) == json.loads(before)
    assert json.loads(after)["NodeNames"] == ["quiet"]

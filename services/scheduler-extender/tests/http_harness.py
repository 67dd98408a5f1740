"""The HTTP component-test harness: ``FakeKube`` (a test double of the API boundary) and ``Harness``
(an in-process aiohttp client of the real application). The ``harness`` fixture is in conftest.py."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

from aiohttp.test_utils import TestClient
from hami_scheduler_extender.app.extender import Extender, ExtenderConfig
from hami_scheduler_extender.core.commit import NO_METADATA, BindingMetadata
from hami_scheduler_extender.core.state import ClusterState
from hami_shared.service.kube import KubeError


class FakeKube:
    """Test double of the API boundary: pods in a dict, optional latency and failures.

    A Binding behaves as kube-apiserver's: UID precondition, refused when already bound, and the
    Binding's annotations written onto the pod with ``spec.nodeName`` (its labels only when
    ``copy_binding_labels``, i.e. with the PodTopologyLabelsAdmission gate on)."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.order: list[str] = []
        self.labels_queued: list[tuple[dict[str, str], dict[str, str]]] = []
        self.binding_error: KubeError | None = None
        self.copy_binding_labels = False
        self.latency = 0.0
        self.gate: asyncio.Event | None = None  # when set, create_binding waits for it
        self.binding_waiting = asyncio.Event()  # set once a create_binding waits for the gate

    def add(self, pod: dict[str, Any]) -> dict[str, Any]:
        self.pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod
        return pod

    async def _delay(self) -> None:
        if self.latency:
            await asyncio.sleep(random.uniform(0, self.latency))

    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any]:
        await self._delay()
        try:
            return self.pods[(namespace, name)]
        except KeyError:
            raise KubeError(f'pods "{name}" not found', status=404) from None

    async def create_binding(
        self, namespace: str, name: str, uid: str, node: str, metadata: BindingMetadata = NO_METADATA
    ) -> None:
        await self._delay()
        if self.gate is not None:
            self.binding_waiting.set()
            await self.gate.wait()
        if self.binding_error is not None:
            raise self.binding_error
        pod = self.pods[(namespace, name)]
        if pod["metadata"]["uid"] != uid:
            raise KubeError("HTTP 409: Precondition failed: UID in precondition", status=409)
        if pod["spec"].get("nodeName"):
            raise KubeError(f"HTTP 409: pod {name} is already assigned to node", status=409)
        pod["spec"]["nodeName"] = node
        pod["metadata"].setdefault("annotations", {}).update(metadata.annotations)
        if self.copy_binding_labels:
            pod["metadata"].setdefault("labels", {}).update(metadata.labels)
        self.order.append(f"bind {name}")

    def label_pod(self, *, pod: Mapping[str, str], labels: Mapping[str, str]) -> None:
        self.labels_queued.append((dict(pod), dict(labels)))

    def emit_event(self, *, pod: Mapping[str, str], event_type: str, reason: str, message: str) -> None:
        self.events.append({"pod": dict(pod), "type": event_type, "reason": reason, "message": message})


class Harness:
    def __init__(
        self, client: TestClient, kube: FakeKube, state: ClusterState, extender: Extender, config: ExtenderConfig
    ) -> None:
        self.client, self.kube, self.state, self.extender = client, kube, state, extender
        self.extender_config = config
        self.not_ready: str | None = None

    async def post(self, verb: str, body: Any) -> Any:
        response = await self.client.post(f"/{verb}", json=body)
        assert response.status == 200, await response.text()
        return await response.json()

    async def filter(self, pod: dict[str, Any], nodes: list[str]) -> Any:
        return await self.post("filter", {"Pod": pod, "NodeNames": nodes, "Nodes": None})

    async def bind(self, pod: dict[str, Any], node: str) -> Any:
        meta = pod["metadata"]
        return await self.post(
            "bind", {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node}
        )

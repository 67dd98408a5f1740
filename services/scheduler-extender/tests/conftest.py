"""Make the test helpers importable (``extender_builders``, ``http_harness``); the ``harness`` fixture."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from extender_builders import gpu, node_json, state_with
from hami_scheduler_extender.app.extender import Extender, ExtenderConfig
from hami_scheduler_extender.app.metrics import ExtenderMetrics
from hami_scheduler_extender.app.server import create_app
from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.request import RequestDefaults
from hami_shared.names import ResourceNames
from http_harness import FakeKube, Harness
from prometheus_client import CollectorRegistry


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    state = state_with(
        node_json("n1", [gpu("GPU-a0", count=2), gpu("GPU-a1", count=2)]),
        node_json("n2", [gpu("GPU-b0", count=10)]),
        node_json("dead", allocatable="0"),
    )
    kube = FakeKube()
    metrics = ExtenderMetrics(CollectorRegistry(), version="test")
    holder: list[Harness] = []
    config = ExtenderConfig(
        names=ResourceNames(),
        defaults=RequestDefaults(),
        node_policy=Policy.BINPACK,
        gpu_policy=Policy.SPREAD,
        success_events=True,
    )
    extender = Extender(
        state=state,
        kube=kube,
        config=config,
        metrics=metrics,
        ready=lambda: holder[0].not_ready,
    )
    app = create_app(extender=extender, metrics=metrics, health=lambda: None, ready=lambda: holder[0].not_ready)
    async with TestClient(TestServer(app)) as client:
        holder.append(Harness(client, kube, state, extender, config))
        yield holder[0]

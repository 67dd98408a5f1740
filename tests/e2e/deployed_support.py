"""Fixtures' building blocks for the tests of the stack as deployed (test_deployed_*.py): a control plane whose
apiserver pods reach through the ``kubernetes`` Service, real GPU nodes whose containerd already holds the stack
images (kube-proxy on the first), and the four services installed from operator overlays
(e2e_harness.deployed_stack). Nothing of the stack runs as a host process.

One such deployment serves every test module that asks for it (conftest's ``deployed``): test_deployed_stack.py
reads it, test_deployed_rollouts.py then rolls its services to new tags (conftest orders it last, see
:func:`rollouts_last`), and it is torn down after the last module that uses it (:class:`SharedDeployment`), before
the other real-node modules start nodes and a kube-proxy of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path

import pytest
from e2e_harness.cluster import LocalCluster
from e2e_harness.deployed_stack import DeployedStack
from e2e_harness.node_images import NodeImages
from e2e_harness.real_node import RealNode, RealNodeConfig
from e2e_harness.stack_images import NodeRootTemplate, StackImages
from hami_stack import FAKE_DRIVER_LIBRARIES, GpuSpec, NodeSpec
from real_node_support import finished, gpu_client_pod, mount_options, probe_results

# The images a GPU node of the deployed stack holds: every stack image (the webhook and scheduler pods land on
# these nodes too: they are the cluster's only nodes).
__all__ = ["finished", "gpu_client_pod", "mount_options", "probe_results"]  # shared with the real-node tests

NODE_COMPONENTS = ("webhook", "scheduler-extender", "device-plugin", "lib-installer", "kube-scheduler")
CUDA_OUT_OF_MEMORY = 2  # CUresult CUDA_ERROR_OUT_OF_MEMORY
WAIT_S = 120.0
# The deployment's one GPU node: one simulated GPU of 8 GiB.
GPU_UUID = "GPU-eeeeeeee-0000-4000-8000-000000000000"
NODE = NodeSpec("deployed-gpu-a", (GpuSpec(GPU_UUID, 8192),))
# The module that changes the shared deployment (new tags) and so runs after the modules that only read it.
ROLLOUTS_MODULE = "test_deployed_rollouts.py"
READ_ONLY_MODULE = "test_deployed_stack.py"

Deployment = tuple[DeployedStack, list[RealNode]]


@contextlib.asynccontextmanager
async def deployed_stack(
    cluster: LocalCluster,
    node_images: NodeImages,
    stack_images: StackImages,
    templates: Callable[[tuple[str, ...]], NodeRootTemplate],
    node_indexes: Iterator[int],
    work_dir: Path,
    specs: Sequence[NodeSpec],
) -> AsyncIterator[tuple[DeployedStack, list[RealNode]]]:
    """Real GPU nodes for ``specs`` (labels gpu=on, the toolkit double with the node's fake GPUs, the stack images
    seeded into containerd; the first runs the run's kube-proxy) and the stack installed on them. At the end the
    nodes are stopped and must leave nothing behind."""
    template = templates(NODE_COMPONENTS)
    nodes: list[RealNode] = []
    try:
        for position, spec in enumerate(specs):
            root = work_dir / "nodes" / spec.name
            root.mkdir(parents=True, exist_ok=True)
            # The node's shared fake-GPU state exists before any container, like the driver's device nodes: the
            # toolkit double bind-mounts it into GPU containers (the device plugin's first), and runc needs the
            # source to exist; the fake driver sizes it on first use.
            (root / "gpu.state").touch(mode=0o666)
            driver = {k: v for k, v in spec.fake_driver_env(root / "gpu.state").items() if k.startswith("FAKE_")}
            config = RealNodeConfig(
                spec.name,
                next(node_indexes),
                {"gpu": "on"},
                driver,
                FAKE_DRIVER_LIBRARIES,
                kube_proxy=position == 0,
            )
            node = RealNode(cluster, config, node_images, work_dir / "logs" / spec.name, seed_root=template.root)
            nodes.append(node)
            await node.start()
        stack = DeployedStack(cluster, stack_images, work_dir / "deploy")
        await stack.install(nodes)
        yield stack, nodes
        await stack.uninstall()
    finally:
        for node in reversed(nodes):
            await node.stop()
    left = [piece for node in nodes for piece in node.leftovers()]
    assert not left, f"real nodes left behind: {left}"


class SharedDeployment:
    """A deployment opened on first :meth:`get` and closed by :meth:`close` (idempotent), so several test modules
    share one control plane, node and install instead of one each."""

    def __init__(self, open_deployment: Callable[[], AbstractAsyncContextManager[Deployment]]) -> None:
        self._open = open_deployment
        self._exit: AsyncExitStack | None = None
        self._deployment: Deployment | None = None

    async def get(self) -> Deployment:
        if self._deployment is None:
            exit_stack = AsyncExitStack()
            try:
                self._deployment = await exit_stack.enter_async_context(self._open())
            except BaseException:
                await exit_stack.aclose()
                raise
            self._exit = exit_stack
        return self._deployment

    async def close(self) -> None:
        exit_stack, self._exit, self._deployment = self._exit, None, None
        if exit_stack is not None:
            await exit_stack.aclose()


def used_after_module(request: pytest.FixtureRequest, fixture: str) -> bool:
    """Whether a test of a later module of this session uses ``fixture``."""
    items = request.session.items
    module = request.node.path
    positions = [n for n, item in enumerate(items) if item.path == module]
    if not positions:
        return False
    return any(fixture in getattr(item, "fixturenames", ()) for item in items[positions[-1] + 1 :])


def rollouts_last(items: list[pytest.Item]) -> None:
    """Put the rollout module's tests right after the read-only module's (when both are collected): they share
    the deployment and the rollouts change it."""
    rollouts = [item for item in items if item.path.name == ROLLOUTS_MODULE]
    rest = [item for item in items if item.path.name != ROLLOUTS_MODULE]
    read_only = [n for n, item in enumerate(rest) if item.path.name == READ_ONLY_MODULE]
    if rollouts and read_only:
        items[:] = [*rest[: read_only[-1] + 1], *rollouts, *rest[read_only[-1] + 1 :]]

"""Fixtures' building blocks for the tests of the stack as deployed (test_deployed_*.py): a control plane whose
apiserver pods reach through the ``kubernetes`` Service, real GPU nodes whose containerd already holds the stack
images (kube-proxy on the first), and the four services installed from operator overlays
(e2e_harness.deployed_stack). Nothing of the stack runs as a host process.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import pytest
from e2e_harness.cluster import LocalCluster
from e2e_harness.deployed_stack import DeployedStack
from e2e_harness.node_images import NodeImages
from e2e_harness.real_node import RealNode, RealNodeConfig
from e2e_harness.stack_images import NodeRootTemplate, StackImages
from hami_stack import FAKE_DRIVER_LIBRARIES, NodeSpec
from real_node_support import finished, gpu_client_pod, mount_options, probe_results

# The images a GPU node of the deployed stack holds: every stack image (the webhook and scheduler pods land on
# these nodes too: they are the cluster's only nodes).
__all__ = ["finished", "gpu_client_pod", "mount_options", "probe_results"]  # shared with the real-node tests

NODE_COMPONENTS = ("webhook", "scheduler-extender", "device-plugin", "lib-installer", "kube-scheduler")
CUDA_OUT_OF_MEMORY = 2  # CUresult CUDA_ERROR_OUT_OF_MEMORY
WAIT_S = 120.0


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


def module_work_dir(tmp_path_factory: pytest.TempPathFactory, label: str) -> Path:
    return tmp_path_factory.mktemp(label)

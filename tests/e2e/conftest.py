"""pytest fixtures for the end-to-end suite, shared by every tests/e2e/test_*.py.

* ``local_cluster`` (session): the real control plane (etcd, kube-apiserver, kube-scheduler) as a child process;
  a :class:`e2e_harness.cluster.LocalCluster` (kubeconfig, api_url, api_client(), kubeconfig_for_user(),
  kubeconfig_for_service_account(), restart_scheduler()).
* ``k8s_api``: an admin kubernetes-asyncio ApiClient for the test.
* ``namespace``: a fresh namespace (with its default ServiceAccount) for the test.
* ``webhook_tls``: a throw-away CA and serving certificate for a local webhook server.
* ``node_images`` (session): the pause and GPU-client images real nodes import (e2e_harness.node_images).
* ``stack_images`` (session): the stack's five images as deployed (`make e2e-images`), exported to one OCI layout
  kept between sessions (only images whose ID changed are pushed again; e2e_harness.stack_images).
* ``stack_root_templates`` (session): ``get(components)`` -> a containerd root with those stack images unpacked,
  made once per set; ``add_real_node(stack=...)`` seeds nodes from it.
* ``add_real_node``: factory that starts a real node (kubelet + containerd + runc, e2e_harness.real_node) and
  returns it Ready; stopped (and checked to leave nothing behind) at the end of the test. Needs the run's own
  namespaces (tests/e2e/isolated.sh).
* ``deployed`` (module; one deployment shared by the modules that use it, deployed_support.SharedDeployment): the
  stack as deployed on its own control plane (every controller) and one real GPU node, as ``(DeployedStack,
  [RealNode])``; ``deployed_api`` (its admin ApiClient) and ``deployed_ns`` (a namespace of it) for the test.
  These run in the session's event loop (their modules: ``pytest.mark.asyncio(loop_scope="session")``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path

import pytest
import pytest_asyncio
from deployed_support import (
    NODE,
    Deployment,
    SharedDeployment,
    deployed_stack,
    rollouts_last,
    used_after_module,
)
from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import NodeImages, build_node_images
from e2e_harness.real_node import RealNode, RealNodeConfig, require_isolation
from e2e_harness.stack_images import (
    MANIFEST_DEFAULT,
    NodeRootTemplate,
    StackImages,
    build_node_root_template,
    export_stack_images,
)
from e2e_harness.waiting import wait_for
from e2e_harness.webhooks import WebhookTLS
from kubernetes_asyncio import client as k8s
from real_node_support import own_control_plane, pod_namespace

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster.start(tmp_path_factory.mktemp("localcluster"))
    try:
        yield cluster
    finally:
        rc = cluster.stop()
    assert rc == 0, f"localcluster did not shut down cleanly (exit {rc}); log: {cluster.log_path}"


@pytest.fixture
async def k8s_api(local_cluster: LocalCluster) -> AsyncIterator[k8s.ApiClient]:
    async with local_cluster.api_client() as api:
        yield api


@pytest.fixture
async def namespace(local_cluster: LocalCluster, k8s_api: k8s.ApiClient) -> AsyncIterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core = k8s.CoreV1Api(k8s_api)
    await core.create_namespace({"metadata": {"name": name}})

    async def default_sa() -> bool:
        try:
            await core.read_namespaced_service_account("default", name)
        except k8s.ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    # The service-account controller creates it; pods are rejected by admission until then.
    await wait_for(default_sa, what=f"ServiceAccount {name}/default")
    yield name
    # Nodes without a kubelet never finish a graceful deletion and no namespace controller empties the
    # namespace: delete the pods at once; the namespace itself stays Terminating.
    await core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
    await core.delete_namespace(name)


@pytest.fixture
def webhook_tls(tmp_path: Path) -> WebhookTLS:
    return WebhookTLS.create(tmp_path / "webhook-tls")


@pytest.fixture(scope="session")
def node_images(tmp_path_factory: pytest.TempPathFactory) -> NodeImages:
    require_isolation()
    return build_node_images(tmp_path_factory.mktemp("node-images"), ROOT / "hamicore" / "build")


@pytest.fixture(scope="session")
def stack_images() -> StackImages:
    """References and OCI layout of the images `make e2e-images` built (HAMI_E2E_IMAGES_MANIFEST: another
    manifest). The layout is kept in .work/images/e2e-archives; only images whose ID changed are pushed again."""
    manifest = Path(os.environ.get("HAMI_E2E_IMAGES_MANIFEST") or MANIFEST_DEFAULT)
    return export_stack_images(ROOT / ".work" / "images" / "e2e-archives", manifest)


@pytest.fixture(scope="session")
def stack_root_templates(
    stack_images: StackImages, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[Iterable[str]], NodeRootTemplate]:
    """``get(components)``: a containerd root holding those stack images unpacked, made on first use per set."""
    made: dict[frozenset[str], NodeRootTemplate] = {}

    def get(components: Iterable[str]) -> NodeRootTemplate:
        wanted = tuple(components)
        key = frozenset(wanted)
        if key not in made:
            made[key] = build_node_root_template(stack_images, wanted, tmp_path_factory.mktemp("stack-root"))
        return made[key]

    return get


@pytest.fixture(scope="session")
def real_node_indexes() -> Iterator[int]:
    """Each real node of the session gets its own index (address, pod subnet, bridge)."""
    return itertools.count()


@pytest.fixture
async def add_real_node(
    local_cluster: LocalCluster,
    node_images: NodeImages,
    tmp_path: Path,
    real_node_indexes: Iterator[int],
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[..., Awaitable[RealNode]]]:
    """``await add_real_node(name=None, *, labels=None, fake_driver=None, cluster=None, stack=())`` starts a real
    node (Ready) on ``cluster`` (default: the session's), its containerd holding the ``stack`` images (components
    of e2e_harness.stack_images.COMPONENTS, seeded from ``stack_root_templates``; needs `make e2e-images`); stopped
    at the end of the test, which then fails if anything of it was left behind."""
    started: list[RealNode] = []

    async def add(
        name: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        fake_driver: Mapping[str, str] | None = None,
        cluster: LocalCluster | None = None,
        stack: Iterable[str] = (),
    ) -> RealNode:
        name = name or f"real-node-{uuid.uuid4().hex[:6]}"
        config = RealNodeConfig(name, next(real_node_indexes), labels or {}, fake_driver, FAKE_DRIVER_LIBRARIES)
        components = tuple(stack)
        seed = request.getfixturevalue("stack_root_templates")(components).root if components else None
        node = RealNode(cluster or local_cluster, config, node_images, tmp_path / name, seed_root=seed)
        started.append(node)
        await node.start()
        return node

    yield add
    left = []
    for node in reversed(started):
        await node.stop()
        left += node.leftovers()
    assert not left, f"real nodes left behind: {left}"


FAKE_DRIVER_LIBRARIES = (
    ROOT / "hamicore" / "build" / "fake" / "libcuda.so.1",
    ROOT / "hamicore" / "build" / "fake" / "libnvidia-ml.so.1",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rollouts_last(items)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def shared_deployment(
    node_images: NodeImages,
    stack_images: StackImages,
    stack_root_templates: Callable[[tuple[str, ...]], NodeRootTemplate],
    real_node_indexes: Iterator[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[SharedDeployment]:
    @contextlib.asynccontextmanager
    async def open_deployment() -> AsyncIterator[Deployment]:
        # Every controller: the stack's Deployments and DaemonSets make its pods.
        with own_control_plane(tmp_path_factory, "deployed", controllers="*") as cluster:
            work_dir = tmp_path_factory.mktemp("deployed-stack")
            templates = stack_root_templates
            async with deployed_stack(
                cluster, node_images, stack_images, templates, real_node_indexes, work_dir, (NODE,)
            ) as (stack, nodes):
                print(f"deployed stack: nodes {[n.timings for n in nodes]}, install {stack.timings}")
                yield stack, nodes

    shared = SharedDeployment(open_deployment)
    yield shared
    await shared.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(shared_deployment: SharedDeployment, request: pytest.FixtureRequest) -> AsyncIterator[Deployment]:
    yield await shared_deployment.get()
    if not used_after_module(request, "deployed"):
        await shared_deployment.close()


@pytest_asyncio.fixture(loop_scope="session")
async def deployed_api(deployed: Deployment) -> AsyncIterator[k8s.ApiClient]:
    stack, _nodes = deployed
    async with stack.cluster.api_client() as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def deployed_ns(deployed_api: k8s.ApiClient) -> AsyncIterator[str]:
    async with pod_namespace(deployed_api, f"deployed-{uuid.uuid4().hex[:6]}") as name:
        yield name

"""The local control plane side of bench_extender.py: the e2e harness it borrows (tests/e2e: LocalCluster, the
extender process), the synthetic cluster written through the API, and small API helpers (a namespace's default
ServiceAccount, the apiserver's /metrics)."""

from __future__ import annotations

import asyncio
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from hami_shared.kube import discard

E2E_DIR = pathlib.Path(__file__).resolve().parents[3] / "tests" / "e2e"
WRITERS = 48  # concurrent creations while loading


def use_e2e_harness() -> None:
    """Make tests/e2e's modules (e2e_harness, extender_support) importable."""
    if str(E2E_DIR) not in sys.path:
        sys.path.insert(0, str(E2E_DIR))


async def load_cluster(
    cluster: Any, nodes: list[dict[str, Any]], pods: list[dict[str, Any]], quotas: Sequence[dict[str, Any]] = ()
) -> None:
    """Create the synthetic nodes (with allocatable GPUs), ResourceQuotas and pods (bound, placed, Running) through
    the API."""
    from kubernetes_asyncio import client as k8s

    async with cluster.api_client() as api:
        core = k8s.CoreV1Api(api)
        limit = asyncio.Semaphore(WRITERS)
        await asyncio.gather(*(create_node(core, limit, n) for n in nodes))
        namespaces = sorted({o["metadata"]["namespace"] for o in [*pods, *quotas]})
        for namespace in namespaces:
            await core.create_namespace({"metadata": {"name": namespace}})
        for namespace in namespaces:
            await wait_for_service_account(core, namespace)
        for quota in quotas:
            await discard(
                core.create_namespaced_resource_quota(quota["metadata"]["namespace"], quota, _preload_content=False)
            )
        await asyncio.gather(*(create_pod(core, limit, p) for p in pods))


async def create_node(core: Any, limit: asyncio.Semaphore, obj: dict[str, Any]) -> None:
    async with limit:
        name = obj["metadata"]["name"]
        await discard(core.create_node({"metadata": obj["metadata"]}, _preload_content=False))
        await discard(core.patch_node_status(name, {"status": obj["status"]}, _preload_content=False))


async def create_pod(core: Any, limit: asyncio.Semaphore, obj: dict[str, Any]) -> None:
    async with limit:
        metadata = {k: v for k, v in obj["metadata"].items() if k != "uid"}
        name, namespace = metadata["name"], metadata["namespace"]
        body = {"metadata": metadata, "spec": obj["spec"]}
        await discard(core.create_namespaced_pod(namespace, body, _preload_content=False))
        await discard(
            core.patch_namespaced_pod_status(name, namespace, {"status": obj["status"]}, _preload_content=False)
        )


async def wait_for_service_account(core: Any, namespace: str) -> None:
    """The ServiceAccount admission plugin refuses pods until the controller made ``default``."""
    from kubernetes_asyncio import client as k8s

    for _ in range(240):
        try:
            await core.read_namespaced_service_account("default", namespace)
            return
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
        await asyncio.sleep(0.25)
    raise SystemExit(f"no default ServiceAccount in namespace {namespace} after 60 s")


async def api_text(api: Any, path: str) -> str:
    """GET a non-resource path of the API server (as the admin) as text."""
    from hami_shared.kube import checked

    response = await checked(
        api.call_api(path, "GET", auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True)
    )
    try:
        return str(await response.text())
    finally:
        response.release()

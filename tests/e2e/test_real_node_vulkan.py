"""The Vulkan vertical slice on a real node: a pod that opts into Vulkan limits (``hami.io/vulkan: "true"``) goes
through the webhook, kube-scheduler + our extender and the real kubelet's device manager calling our device
plugin, and starts in a real runc container where a Vulkan application, through the real loader
(``libvulkan.so.1``) and Mesa's lavapipe, finds our implicit layer where Allocate mounted its manifest
(``/etc/vulkan/implicit_layer.d/hami.json``), sees its slice as the device-local heap and its budget, and is
refused with ``VK_ERROR_OUT_OF_DEVICE_MEMORY`` at exactly its cap. CUDA in the same container draws on the same
budget. A pod without the opt-in gets no layer.

Test doubles: lavapipe (a real Vulkan driver on the CPU) stands in for NVIDIA's Vulkan driver, and is in the image
(e2e_harness/node_images.py: the Vulkan client) instead of being mounted by the NVIDIA toolkit; the fake
NVML/CUDA driver (mounted by the toolkit's double) describes the node's one GPU with lavapipe's deviceUUID, so the
layer recognises lavapipe as the GPU Allocate gave the container (the layer passes devices of other UUIDs
through, uncharged). Run inside tests/e2e/isolated.sh (make test-e2e does).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog
from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import (
    LAVAPIPE_ICD,
    VULKAN_CLIENT_IMAGE,
    NodeImages,
    VulkanClientImage,
    build_vulkan_client_image,
)
from e2e_harness.real_node import RealNode
from e2e_harness.waiting import wait_for_pod
from hami_shared import names
from hami_stack import HAMICORE_BUILD, ROOT, GpuSpec, HamiStack, NodeSpec
from kubernetes_asyncio import client as k8s
from real_node_support import own_control_plane, pod_namespace, real_node_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

log = structlog.get_logger("test_real_node_vulkan")

NODE_NAME = "real-vk-a"
CAP = 1000 << 20
STEP = 250 << 20
WAIT_S = 120.0
LAYER = "VK_LAYER_HAMI_vgpu"
MANIFEST_IN_CONTAINER = "/etc/vulkan/implicit_layer.d/hami.json"
LAYER_IN_CONTAINER = "/usr/local/vgpu/libvgpu_vk.so"
VK_SUCCESS = 0
VK_ERROR_OUT_OF_DEVICE_MEMORY = -2
CUDA_OUT_OF_MEMORY = 2
IMAGE_CACHE = Path(os.environ.get("HAMI_E2E_IMAGE_CACHE", ROOT / "tests" / "e2e" / ".work" / "images"))


def nvml_uuid(raw_hex: str) -> str:
    """32 hex digits -> "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (how NVML spells a UUID)."""
    return f"GPU-{raw_hex[0:8]}-{raw_hex[8:12]}-{raw_hex[12:16]}-{raw_hex[16:20]}-{raw_hex[20:32]}"


@pytest.fixture(scope="module")
def lavapipe_uuid() -> str:
    """lavapipe's deviceUUID as NVML spells UUIDs, read on the host through the loader (no layer): the same
    driver file as in the image, so the same UUID."""
    probe = HAMICORE_BUILD / "tests" / "vk_alloc_probe"
    env = {"PATH": "/usr/bin:/bin", "VK_ICD_FILENAMES": str(LAVAPIPE_ICD), "NODEVICE_SELECT": "1"}
    out = subprocess.run([str(probe), "init"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    raw = str(json.loads(out.stdout)["uuid"])
    assert raw != "0" * 32, "lavapipe reported an all-zero deviceUUID"
    return nvml_uuid(raw)


@pytest.fixture(scope="module")
def vulkan_image(tmp_path_factory: pytest.TempPathFactory) -> VulkanClientImage:
    image = build_vulkan_client_image(tmp_path_factory.mktemp("vulkan-image"), HAMICORE_BUILD, IMAGE_CACHE)
    log.info("vulkan client image", archive=str(image.archive), size_bytes=image.size_bytes, build_s=image.build_s)
    return image


@pytest.fixture(scope="module")
def vk_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with own_control_plane(tmp_path_factory, "real-vulkan") as cluster:
        yield cluster


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    vk_cluster: LocalCluster,
    node_images: NodeImages,
    vulkan_image: VulkanClientImage,
    lavapipe_uuid: str,
    real_node_indexes: Iterator[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[HamiStack]:
    # Only this module's node imports the Vulkan client (hundreds of MB unpacked).
    images = dataclasses.replace(node_images, archives=(*node_images.archives, vulkan_image.archive))
    node = NodeSpec(NODE_NAME, (GpuSpec(lavapipe_uuid, 8192),))
    started = time.monotonic()
    async with real_node_stack(
        vk_cluster, images, real_node_indexes, tmp_path_factory, "real-vk-stack", (node,)
    ) as hami:
        real = hami.gpu_nodes[NODE_NAME].kubelet
        assert isinstance(real, RealNode)
        # containerd_ready_s includes importing the images (the Vulkan client's ~190 MB unpacked among them).
        log.info("vulkan real-node stack ready", seconds=round(time.monotonic() - started, 1), **real.timings)
        yield hami


@pytest_asyncio.fixture(loop_scope="module")
async def api(vk_cluster: LocalCluster) -> AsyncIterator[k8s.ApiClient]:
    async with vk_cluster.api_client() as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module")
async def ns(stack: HamiStack, api: k8s.ApiClient) -> AsyncIterator[str]:
    async with pod_namespace(api, f"real-vk-{uuid.uuid4().hex[:6]}") as name:
        yield name


def vulkan_pod(name: str, memory_mib: int, script: str, *, opt_in: bool) -> dict[str, Any]:
    """A pod asking for GPU memory only (the webhook adds the GPU count); ``opt_in`` annotates it for Vulkan.
    The loader logs which layers it finds and inserts (VK_LOADER_DEBUG=layer, on stderr)."""
    annotations = {names.VULKAN: "true"} if opt_in else {}
    return {
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": NODE_NAME},
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": VULKAN_CLIENT_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", script],
                    "env": [{"name": "VK_LOADER_DEBUG", "value": "layer"}],
                    "resources": {"limits": {"nvidia.com/gpumem": str(memory_mib)}},
                }
            ],
        },
    }


def finished(pod: dict[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def probe_results(log_text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_text.splitlines() if line.startswith('{"cmd"')]


def mount_options(log_text: str, path: str) -> list[str] | None:
    """Options of ``path`` in the /proc/mounts lines the pod printed; None when it is not mounted."""
    for line in log_text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == path:
            return fields[3].split(",")
    return None


async def run_pod(api: k8s.ApiClient, namespace: str, pod: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Create ``pod``, wait until it finished, and return it with its log (one stream: the script does 2>&1)."""
    core = k8s.CoreV1Api(api)
    name = pod["metadata"]["name"]
    body: Any = pod  # the client takes a plain manifest as well as a V1Pod
    created = await core.create_namespaced_pod(namespace, body)
    assert created.spec.scheduler_name == "hami-scheduler"
    assert created.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    done = await wait_for_pod(api, namespace, name, finished, what="finished", within=WAIT_S)
    text: str = await core.read_namespaced_pod_log(name, namespace, container="main")
    assert done["status"]["phase"] == "Succeeded", (done["status"], text)
    assert done["spec"]["nodeName"] == NODE_NAME
    return done, text


# Prints the Vulkan env, the manifest's mount and content, then the probe: the layers the loader lists, the
# device, its heap and budget, four steps of 250 MiB (1000 MiB), one byte more, the heap again, and whether the
# layer's library is mapped. One stream (2>&1): the runtime timestamps each pipe's lines separately.
STEPS = "layers init heap alloc 250m alloc 250m alloc 250m alloc 250m alloc 1 heap mapped"
CAP_SCRIPT = (
    "exec 2>&1; env | grep -E '^(HAMI_VULKAN_[A-Z]+|NVIDIA_DRIVER_CAPABILITIES)='; "
    f"grep -E ' {MANIFEST_IN_CONTAINER} | {LAYER_IN_CONTAINER} ' /proc/mounts; cat {MANIFEST_IN_CONTAINER}; "
    f"exec vk_alloc_probe {STEPS}"
)


async def test_vulkan_pod_under_the_real_loader_is_refused_at_exactly_its_cap(
    stack: HamiStack, api: k8s.ApiClient, ns: str, lavapipe_uuid: str
) -> None:
    pod, text = await run_pod(api, ns, vulkan_pod("vk-capped", 1000, CAP_SCRIPT, opt_in=True))
    assert pod["metadata"]["annotations"][names.BIND_PHASE] == "success"
    lines = text.splitlines()
    # The webhook's opt-in env (graphics for the toolkit) and the device plugin's, in the container.
    assert f"{names.ENV_VULKAN_ENABLE}=1" in lines, text
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics" in lines, text
    # Allocate mounted the manifest and the layer read-only; the manifest names the layer where it is mounted.
    assert "ro" in (mount_options(text, MANIFEST_IN_CONTAINER) or []), text
    assert "ro" in (mount_options(text, LAYER_IN_CONTAINER) or []), text
    manifest_start = next(i for i, line in enumerate(lines) if line.startswith("{") and '"cmd"' not in line)
    manifest_end = next(i for i, line in enumerate(lines) if line.startswith("}")) + 1
    manifest = json.loads("\n".join(lines[manifest_start:manifest_end]))
    assert manifest["layer"]["name"] == LAYER
    assert manifest["layer"]["library_path"] == LAYER_IN_CONTAINER

    # The real loader found the manifest in its system search path and inserted the layer.
    assert f"Manifest: {MANIFEST_IN_CONTAINER}" in text, text
    assert f'Insert instance layer "{LAYER}" ({LAYER_IN_CONTAINER})' in text, text

    probe = probe_results(text)
    assert [r["cmd"] for r in probe] == [
        *("layers", "init", "heap"),
        *("alloc",) * 5,
        *("heap", "mapped"),
    ], text
    layers, init, heap, *allocs, heap_after, mapped = probe
    assert layers["rc"] == VK_SUCCESS, text
    assert LAYER in layers["names"], text
    assert init["rc"] == VK_SUCCESS, text
    assert nvml_uuid(init["uuid"]) == lavapipe_uuid, text
    # The layer adds VK_EXT_memory_budget (lavapipe of this Mesa lists none) and shows the slice, not the host's heap.
    assert init["budget_ext"] is True, text
    assert (heap["rc"], heap["size"], heap["budget"], heap["usage"]) == (VK_SUCCESS, CAP, CAP, 0), text
    # Up to the cap every step is granted; one byte more is refused.
    assert [(a["size"], a["rc"]) for a in allocs[:4]] == [(STEP, VK_SUCCESS)] * 4, text
    assert (allocs[4]["size"], allocs[4]["result"]) == (1, "VK_ERROR_OUT_OF_DEVICE_MEMORY"), text
    assert allocs[4]["rc"] == VK_ERROR_OUT_OF_DEVICE_MEMORY, text
    assert (heap_after["size"], heap_after["budget"], heap_after["usage"]) == (CAP, CAP, CAP), text
    assert mapped["layer"] is True, text
    # The refusal is the budget's (HAMi-core's line: device index, usage with the request, limit).
    assert f"Device 0 OOM {CAP + 1} / {CAP}" in text, text


# CUDA takes 400 MiB and holds it; then, in the same container, Vulkan sees it used and gets only the rest.
SHARED_SCRIPT = (
    "exec 2>&1; cuda_probe init ctx 0 alloc 400m hold >/tmp/cuda.log & cuda=$!; "
    'until grep -q \'"cmd":"hold"\' /tmp/cuda.log; do sleep 0.1; done; cat /tmp/cuda.log; '
    "vk_alloc_probe init heap alloc 600m alloc 1 heap; kill $cuda"
)


async def test_cuda_and_vulkan_in_one_container_share_one_budget(stack: HamiStack, api: k8s.ApiClient, ns: str) -> None:
    _pod, text = await run_pod(api, ns, vulkan_pod("vk-shared", 1000, SHARED_SCRIPT, opt_in=True))
    probe = probe_results(text)
    assert [r["cmd"] for r in probe] == ["init", "ctx", "alloc", "hold", "init", "heap", "alloc", "alloc", "heap"]
    assert [r["rc"] for r in probe[:3]] == [0, 0, 0], text  # CUDA holds its 400 MiB ("hold" has no rc)
    _init, heap, alloc_rest, alloc_byte, heap_after = probe[4:]
    # CUDA's 400 MiB are in use on the Vulkan heap, and the budget left is the remaining 600 MiB.
    assert (heap["size"], heap["usage"], heap["budget"]) == (CAP, 400 << 20, CAP), text
    assert (alloc_rest["size"], alloc_rest["rc"]) == (600 << 20, VK_SUCCESS), text
    assert alloc_byte["rc"] == VK_ERROR_OUT_OF_DEVICE_MEMORY, text
    assert heap_after["usage"] == CAP, text


# What a tenant could set to keep the loader from loading the layer, and to unset the opt-in: through envFrom of
# a ConfigMap, which the webhook's guard cannot read. Outside such a container, VK_LOADER_LAYERS_DISABLE and
# HAMI_VULKAN_DISABLE=1 each keep the image's loader (1.3.239) from loading the layer; VK_IMPLICIT_LAYER_PATH is
# for newer loaders; HAMI_VULKAN_ENABLE=0 loses to the webhook's env entry (env wins over envFrom).
ESCAPE_ENV = {
    "VK_LOADER_LAYERS_DISABLE": "~implicit~",
    "VK_IMPLICIT_LAYER_PATH": "/nonexistent",
    names.ENV_VULKAN_DISABLE: "1",
    names.ENV_VULKAN_ENABLE: "0",
}
ESCAPE_SCRIPT = (
    "exec 2>&1; id -u; env | grep -E '^(VK_LOADER_LAYERS_DISABLE|VK_IMPLICIT_LAYER_PATH|HAMI_VULKAN_[A-Z]+)='; "
    "exec vk_alloc_probe init heap alloc 1000m alloc 1 mapped"
)


async def test_a_non_root_tenant_cannot_switch_the_layer_off(stack: HamiStack, api: k8s.ApiClient, ns: str) -> None:
    """A container user other than root on a read-only root file system (files mounted by Allocate must be
    readable to it) whose env tries every switch that unloads the layer: the layer is still loaded (libvgpu.so
    puts the switches back before main under the spec's Vulkan flag) and the cap holds."""
    core = k8s.CoreV1Api(api)
    await core.create_namespaced_config_map(
        ns, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="vk-escape"), data=ESCAPE_ENV)
    )
    pod = vulkan_pod("vk-escape", 1000, ESCAPE_SCRIPT, opt_in=True)
    container = pod["spec"]["containers"][0]
    container["envFrom"] = [{"configMapRef": {"name": "vk-escape"}}]
    container["securityContext"] = {
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,  # the runtime still makes the mount points of Allocate's files
    }
    _pod, text = await run_pod(api, ns, pod)
    lines = text.splitlines()
    assert lines[0] == "1000", text
    # The switches reached the container's environment as the tenant wrote them (busybox is static: no
    # libvgpu.so in `env`); libvgpu.so put them back before the probe's main, and said so.
    assert "VK_LOADER_LAYERS_DISABLE=~implicit~" in lines, text
    assert f"{names.ENV_VULKAN_DISABLE}=1" in lines, text
    assert "ignoring HAMI_VULKAN_ENABLE/HAMI_VULKAN_DISABLE, VK_LOADER_LAYERS_DISABLE" in text, text
    assert f'Insert instance layer "{LAYER}" ({LAYER_IN_CONTAINER})' in text, text
    probe = probe_results(text)
    assert [r["cmd"] for r in probe] == ["init", "heap", "alloc", "alloc", "mapped"], text
    init, heap, alloc_cap, alloc_byte, mapped = probe
    assert init["rc"] == VK_SUCCESS, text
    assert (heap["size"], heap["budget"]) == (CAP, CAP), text
    assert alloc_cap["rc"] == VK_SUCCESS, text
    assert alloc_byte["rc"] == VK_ERROR_OUT_OF_DEVICE_MEMORY, text
    assert mapped["layer"] is True, text


NO_OPT_IN_SCRIPT = (
    "exec 2>&1; env | grep -E '^HAMI_VULKAN'; "
    "echo layer-mounts=$(grep -c -e libvgpu_vk -e implicit_layer /proc/mounts); "
    "exec vk_alloc_probe layers init heap alloc 1000m alloc 1 mapped"
)


async def test_pod_without_the_opt_in_gets_no_layer(stack: HamiStack, api: k8s.ApiClient, ns: str) -> None:
    _pod, text = await run_pod(api, ns, vulkan_pod("vk-plain", 1000, NO_OPT_IN_SCRIPT, opt_in=False))
    assert not any(line.startswith("HAMI_VULKAN") for line in text.splitlines()), text
    assert "layer-mounts=0" in text.splitlines(), text  # neither the manifest nor libvgpu_vk.so
    assert f'Insert instance layer "{LAYER}"' not in text, text
    probe = probe_results(text)
    assert [r["cmd"] for r in probe] == ["layers", "init", "heap", "alloc", "alloc", "mapped"], text
    layers, init, heap, alloc_cap, alloc_byte, mapped = probe
    assert layers["rc"] == init["rc"] == VK_SUCCESS, text
    assert LAYER not in layers["names"], text
    assert mapped["layer"] is False, text
    # lavapipe's own heap, unclamped and uncharged: the cap is not applied to Vulkan without the opt-in.
    assert heap["size"] > CAP, text
    assert "budget" not in heap, text
    assert (alloc_cap["rc"], alloc_byte["rc"]) == (VK_SUCCESS, VK_SUCCESS), text

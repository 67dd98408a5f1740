"""The stack's images run on a real node as deployed: the five images `make e2e-images` builds (the four services
and kube-scheduler from the control plane's k8s.io/kubernetes module), exported from buildah's storage and
imported into a real node's containerd, each start as a pod (``imagePullPolicy: Never``, the user and read-only
root filesystem of its Deployment or DaemonSet) and answer ``--help`` (kube-scheduler: ``--version``, also run
as its Deployment names it, ``command: [kube-scheduler]`` found on the image's PATH).
Run inside tests/e2e/isolated.sh after `make e2e-images` (make test-e2e does both)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from e2e_harness.real_node import RealNode
from e2e_harness.stack_images import COMPONENTS, NodeRootTemplate, StackImages, import_stack_images, layout_size
from e2e_harness.waiting import wait_for_pod
from kubernetes_asyncio import client as k8s

AddRealNode = Callable[..., Awaitable[RealNode]]


@dataclass(frozen=True)
class EntrypointRun:
    """One pod of the test: a component's image, the command line (None: the image's entrypoint), what its output
    must contain, and the user its manifest runs it as (deploy/kustomize/base: the device plugin and the lib
    installer run as root)."""

    component: str
    command: list[str] | None
    args: list[str]
    expected: str
    uid: int


RUNS = {
    "webhook": EntrypointRun("webhook", None, ["--help"], "usage: hami-webhook", 65532),
    "scheduler-extender": EntrypointRun(
        "scheduler-extender", None, ["--help"], "usage: hami-scheduler-extender", 65532
    ),
    "device-plugin": EntrypointRun("device-plugin", None, ["--help"], "usage: hami-device-plugin", 0),
    "lib-installer": EntrypointRun("lib-installer", None, ["--help"], "usage: hami-lib-installer", 0),
    "kube-scheduler": EntrypointRun("kube-scheduler", None, ["--version"], "Kubernetes v1.34.4", 65532),
    # As the scheduler Deployment names it: `command: [kube-scheduler, ...]`, found on the image's PATH.
    "kube-scheduler-command": EntrypointRun(
        "kube-scheduler", ["kube-scheduler"], ["--version"], "Kubernetes v1.34.4", 65532
    ),
}


def entrypoint_pod(name: str, node: str, image: str, run: EntrypointRun) -> dict[str, Any]:
    """A pod that runs ``run`` once, locked down as the stack's manifests do."""
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "args": run.args,
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if run.command is not None:
        container["command"] = run.command
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "securityContext": {"runAsUser": run.uid, "runAsGroup": run.uid, "runAsNonRoot": run.uid != 0},
            "containers": [container],
        },
    }


def finished(pod: dict[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


async def test_stack_images_run_their_entrypoints_on_a_real_node(
    add_real_node: AddRealNode,
    k8s_api: k8s.ApiClient,
    namespace: str,
    stack_images: StackImages,
    stack_root_templates: Callable[[tuple[str, ...]], NodeRootTemplate],
) -> None:
    assert [i.component for i in stack_images.images] == list(COMPONENTS)
    node = await add_real_node(stack=COMPONENTS)
    template = stack_root_templates(COMPONENTS)
    mib = layout_size(stack_images) / 2**20
    print(
        f"stack images: all five ({mib:.0f} MiB) imported into the template in {template.import_s:.1f} s; "
        f"{node.name} seeded from it, containerd ready in {node.timings['containerd_ready_s']:.1f} s"
    )
    # The node's containerd holds every reference, as the kubelet's image checks look them up.
    assert set(stack_images.references.values()) <= set(node.list_images())

    core = k8s.CoreV1Api(k8s_api)
    for name, run in RUNS.items():
        pod = entrypoint_pod(name, node.name, stack_images.reference(run.component), run)
        await core.create_namespaced_pod(namespace, pod)
    pods = await asyncio.gather(
        *(wait_for_pod(k8s_api, namespace, name, finished, what="finished", within=120) for name in RUNS)
    )
    for (name, run), pod in zip(RUNS.items(), pods, strict=True):
        log = await core.read_namespaced_pod_log(name, namespace, container="main")
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (pod["status"]["phase"], terminated["exitCode"]) == ("Succeeded", 0), (name, pod["status"], log)
        assert run.expected in log, (name, log)


async def test_a_running_node_imports_only_the_images_asked_for(
    add_real_node: AddRealNode, stack_images: StackImages
) -> None:
    node = await add_real_node()
    daemonsets = ("device-plugin", "lib-installer")
    seconds = await import_stack_images(node, stack_images, daemonsets)
    mib = layout_size(stack_images, daemonsets) / 2**20
    print(
        f"stack images: the two DaemonSets' images ({mib:.0f} MiB) imported into running {node.name} in {seconds:.1f} s"
    )
    listed = set(node.list_images())
    assert {stack_images.reference(c) for c in daemonsets} <= listed
    assert not {stack_images.reference(c) for c in COMPONENTS if c not in daemonsets} & listed

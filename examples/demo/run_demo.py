"""`make demo`: the whole stack on one machine, with sample pods, then where they landed and a refused allocation.

Starts the local control plane (real etcd, kube-apiserver and kube-scheduler), applies the deploy manifests,
runs the four services as local processes with their ServiceAccounts' credentials, adds two GPU nodes served
by the kubelet stand-in (a test double of the kubelet) over a fake NVIDIA driver (a test double of the GPU driver:
there is no GPU here), applies examples/pods/, prints each pod's node and GPU slice and the output of the program
that hamicore refused at its cap, and cleans everything up. See tests/e2e/hami_stack.py for how each piece runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from e2e_harness.cluster import LocalCluster  # noqa: E402
from hami_shared import names  # noqa: E402
from hami_shared.pod_devices import decode_pod_devices  # noqa: E402
from hami_stack import DEFAULT_NODES, HamiStack, StackError, kubectl  # noqa: E402

DEMO_NAMESPACE = "hami-demo"
PODS_DIR = ROOT / "examples" / "pods"
FINAL_PHASES = {"Succeeded", "Failed"}


def say(step: str, text: str) -> None:
    print(f"\n[{step}] {text}", flush=True)


def get_pods(kubeconfig: Path) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(kubectl(kubeconfig, "get", "pods", "-n", DEMO_NAMESPACE, "-o", "json"))[
        "items"
    ]
    return items


def pending_reason(kubeconfig: Path, pod: str) -> str:
    events = json.loads(
        kubectl(
            kubeconfig,
            "get",
            "events",
            "-n",
            DEMO_NAMESPACE,
            f"--field-selector=involvedObject.name={pod}",
            "-o",
            "json",
        )
    )["items"]
    messages = [e.get("message", "") for e in events if e.get("reason") == "FailedScheduling"]
    return messages[-1] if messages else "(no scheduling event yet)"


def settled(pod: dict[str, Any], kubeconfig: Path) -> bool:
    phase = pod["status"].get("phase")
    if phase in FINAL_PHASES:
        return True
    name = pod["metadata"]["name"]
    if name.startswith("shared-"):
        return phase == "Running"
    if phase == "Pending" and not pod["spec"].get("nodeName"):
        return pending_reason(kubeconfig, name) != "(no scheduling event yet)"
    return False


def slices(pod: dict[str, Any]) -> list[str]:
    value = (pod["metadata"].get("annotations") or {}).get(names.DEVICES_ALLOCATED)
    if not value:
        return []
    out = []
    for container in decode_pod_devices(value):
        for device in container:
            cores = f"{device.usedcores}%" if device.usedcores else "shared"
            out.append(f"{device.uuid}  {device.usedmem} MiB  cores {cores}")
    return out


async def demo(work: Path, keep: bool) -> int:
    say("1/6", "starting the local control plane (embedded etcd, kube-apiserver, kube-scheduler)")
    cluster = LocalCluster.start(work / "cluster")
    stack = HamiStack(cluster, work / "stack", DEFAULT_NODES)
    kubeconfig = cluster.kubeconfig
    try:
        say("2/6", "kubectl apply --server-side -k deploy/kustomize/overlays/default; starting the services")
        started = time.monotonic()
        await stack.start()
        print(f"  stack up in {time.monotonic() - started:.0f} s:")
        for service, role in (
            (stack.webhook, "the apiserver's admission webhook"),
            (stack.extender, "kube-scheduler's extender"),
        ):
            if service is not None and service.ready_url:
                print(f"  {service.name:<24} {service.ready_url.rsplit('/', 1)[0]:<26} {role}")
        for node in stack.gpu_nodes.values():
            gpus = ", ".join(f"{g.name} {g.memory_mib} MiB ({g.uuid[:12]}...)" for g in node.spec.gpus)
            devices = len(node.kubelet.plugin_devices("nvidia.com/gpu"))
            print(
                f"  {node.name:<24} {gpus}; {devices} virtual devices (kubelet stand-in, device plugin, lib installer)"
            )

        say("3/6", f"kubectl apply -n {DEMO_NAMESPACE} -f examples/pods/")
        kubectl(kubeconfig, "create", "namespace", DEMO_NAMESPACE)
        await asyncio.sleep(1)  # the service-account controller makes the namespace's default ServiceAccount
        for attempt in range(30):
            try:
                print(
                    "  "
                    + kubectl(kubeconfig, "apply", "-n", DEMO_NAMESPACE, "-f", str(PODS_DIR))
                    .strip()
                    .replace("\n", "\n  ")
                )
                break
            except StackError:
                if attempt == 29:
                    raise
                await asyncio.sleep(1)

        say("4/6", "waiting for the pods to be scheduled, admitted and run")
        deadline = time.monotonic() + 180
        while True:
            pods = get_pods(kubeconfig)
            if pods and all(settled(p, kubeconfig) for p in pods):
                break
            if time.monotonic() > deadline:
                print("  some pods did not settle within 180 s")
                break
            await asyncio.sleep(1)

        say("5/6", "where each pod landed, with its GPU slice")
        print(f"  {'POD':<10} {'PHASE':<10} {'SCHEDULER':<15} {'NODE':<12} GPU SLICE")
        for pod in sorted(get_pods(kubeconfig), key=lambda p: p["metadata"]["name"]):
            name = pod["metadata"]["name"]
            node = pod["spec"].get("nodeName") or "-"
            rows = slices(pod) or ["-"]
            phase = pod["status"].get("phase", "")
            scheduler = pod["spec"].get("schedulerName", "")
            print(f"  {name:<10} {phase:<10} {scheduler:<15} {node:<12} {rows[0]}")
            for row in rows[1:]:
                print(f"  {'':<10} {'':<10} {'':<15} {'':<12} {row}")
            if node == "-":
                print(f"  {'':<10} why: {pending_reason(kubeconfig, name)}")

        say("6/6", "the programs' own view (hami-gpu-alloc under hamicore, fake driver)")
        for pod in sorted(get_pods(kubeconfig), key=lambda p: p["metadata"]["name"]):
            node_name = pod["spec"].get("nodeName")
            if not node_name:
                continue
            kubelet = stack.gpu_nodes[node_name].kubelet
            for container in pod["spec"]["containers"]:
                log = kubelet.log_path(DEMO_NAMESPACE, pod["metadata"]["name"], container["name"])
                lines = (
                    [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
                    if log.exists()
                    else []
                )
                print(f"  {pod['metadata']['name']}: " + ("\n    ".join(lines[-4:]) or "(no output)"))
        gpu_slice = next((p for p in get_pods(kubeconfig) if p["metadata"]["name"] == "gpu-slice"), None)
        if gpu_slice and gpu_slice["status"].get("phase") == "Succeeded":
            print(
                "\n  gpu-slice asked for 1000 MiB: its allocations stopped at exactly 1000 MiB (refused by hamicore)."
            )
            return 0
        print("\n  gpu-slice did not finish as expected; logs:", *stack.logs().values(), sep="\n    ")
        return 1
    finally:
        say("cleanup", "stopping the services, the GPU nodes and the control plane")
        await stack.stop()
        cluster.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"  kept {work}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="run_demo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".work" / "demo", help="state and logs (deleted)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    args = parser.parse_args()
    try:
        shutil.rmtree(args.work_dir, ignore_errors=True)
        args.work_dir.mkdir(parents=True)
        return asyncio.run(demo(args.work_dir, args.keep))
    except StackError as exc:
        print(f"\nmake demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

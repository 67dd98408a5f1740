"""`make demo`: the whole stack on one machine, with sample pods, then where they landed and a refused allocation.

Starts the local control plane (real etcd, kube-apiserver and kube-scheduler), applies the deploy manifests,
runs the four services as local processes with their ServiceAccounts' credentials, starts two real GPU nodes (the
upstream kubelet with its own containerd and runc; the NVIDIA container toolkit and the GPU driver are test
doubles: there is no GPU here), applies the pods of examples/pods/ in real containers, prints each pod's node and
GPU slice and what the program inside saw and was refused, and cleans everything up. See tests/e2e/hami_stack.py
for how each piece runs.

Real nodes change the machine's network and mounts, so the demo runs in its own network and mount namespaces:
`make demo` starts it through tests/e2e/isolated.sh (root), which also restores the sysctls the kubelet changes.
The nodes reach no registry: each example pod runs the node image's CUDA client (hamicore's cuda_probe, doing what
the example's hami-gpu-alloc would: allocate in chunks until refused) instead of localhost/hami-examples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from e2e_harness.cluster import LocalCluster  # noqa: E402
from e2e_harness.node_images import GPU_CLIENT_IMAGE, ImageBuildError, build_node_images  # noqa: E402
from e2e_harness.real_node import RealNodeError, require_isolation  # noqa: E402
from hami_shared import names  # noqa: E402
from hami_shared.pod_devices import decode_pod_devices  # noqa: E402
from hami_stack import DEFAULT_NODES, HAMICORE_BUILD, HamiStack, StackError, kubectl  # noqa: E402

DEMO_NAMESPACE = "hami-demo"
PODS_DIR = ROOT / "examples" / "pods"
FINAL_PHASES = {"Succeeded", "Failed"}
MIB = 1 << 20
CUDA_ERRORS = {2: "CUDA_ERROR_OUT_OF_MEMORY", 101: "CUDA_ERROR_INVALID_DEVICE"}


def say(step: str, text: str) -> None:
    print(f"\n[{step}] {text}", flush=True)


def probe_script(command: list[str]) -> str:
    """The node image's equivalent of an example container's command.

    ``hami-gpu-alloc --chunk-mib=C --expect-mib=E [--hold=S]`` allocates C MiB at a time until refused: cuda_probe
    does the same E/C + 1 allocations (the last one must be refused) and, with --hold, keeps them while the demo
    looks. ``printenv A B`` prints those variables."""
    if command[:1] == ["printenv"]:
        return "env | grep -E '^(" + "|".join(command[1:]) + ")='"
    options = dict(arg.removeprefix("--").partition("=")[::2] for arg in command[1:])
    chunk = int(options.get("chunk-mib") or 100)
    expect = int(options.get("expect-mib") or 0)
    steps = ["init", "ctx 0", "total 0", *[f"alloc {chunk}m"] * (expect // chunk + 1)]
    if "hold" in options:
        steps.append("hold")
    return "exec cuda_probe " + " ".join(steps)


def demo_pods() -> list[dict[str, Any]]:
    """examples/pods/, each container running the node image's CUDA client (no registry is reachable)."""
    docs: list[dict[str, Any]] = []
    for path in sorted(PODS_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            spec = doc["spec"]
            spec["terminationGracePeriodSeconds"] = 1
            for container in spec["containers"]:
                container["command"] = ["/bin/sh", "-c", probe_script(container.get("command", []))]
                container["image"] = GPU_CLIENT_IMAGE
                container["imagePullPolicy"] = "Never"
            docs.append(doc)
    return docs


def get_pods(kubeconfig: Path) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(kubectl(kubeconfig, "get", "pods", "-n", DEMO_NAMESPACE, "-o", "json"))[
        "items"
    ]
    return items


def pod_log(kubeconfig: Path, pod: str) -> str:
    try:
        return kubectl(kubeconfig, "logs", "-n", DEMO_NAMESPACE, pod)
    except StackError:
        return ""  # not started yet


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
    if name.startswith("shared-"):  # they hold their memory until the demo ends
        return phase == "Running" and '"cmd":"hold"' in pod_log(kubeconfig, name)
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


def program_view(pod: dict[str, Any], log: str) -> tuple[str, int | None]:
    """A line on what cuda_probe saw and got in the pod's container, and the MiB it was granted before a refusal
    (None: it was never refused)."""
    results = [json.loads(line) for line in log.splitlines() if line.startswith('{"cmd"')]
    if not results:
        return (" ".join(log.split()) or "(no output)"), None
    script = pod["spec"]["containers"][0]["command"][-1]
    chunk_mib = int(m.group(1)) if (m := re.search(r"alloc (\d+)m", script)) else 0
    total = next((r["total"] // MIB for r in results if r["cmd"] == "total" and r["rc"] == 0), None)
    allocs = [r for r in results if r["cmd"] == "alloc"]
    granted = len([r for r in allocs if r["rc"] == 0])
    refused = next((r for r in allocs if r["rc"] != 0), None)
    granted_mib = granted * chunk_mib
    line = f"device 0 shows {total} MiB; allocated {granted_mib} MiB in {granted} chunks of {chunk_mib} MiB"
    if refused is None:
        return line + ", none refused", None
    return line + f"; the next one refused ({CUDA_ERRORS.get(refused['rc'], refused['rc'])})", granted_mib


async def demo(work: Path, keep: bool) -> int:
    """The story; 1 when gpu-slice was not capped at its 1000 MiB or a node left something behind."""
    require_isolation()
    began = time.monotonic()
    say("1/6", "starting the local control plane (embedded etcd, kube-apiserver, kube-scheduler)")
    images = build_node_images(work / "node-images", HAMICORE_BUILD)
    cluster = LocalCluster.start(work / "cluster")
    stack = HamiStack(cluster, work / "stack", DEFAULT_NODES, real_nodes=images)
    kubeconfig = cluster.kubeconfig
    left: list[str] = []
    rc = 1
    try:
        say("2/6", "kubectl apply --server-side -k deploy/kustomize/overlays/default; starting the services and nodes")
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
            allocatable = json.loads(kubectl(kubeconfig, "get", "node", node.name, "-o", "json"))["status"][
                "allocatable"
            ].get("nvidia.com/gpu", "0")
            print(f"  {node.name:<24} {gpus}; {allocatable} virtual devices")
            print(f"  {'':<24} (kubelet v1.34.4 + containerd + runc, our device plugin and lib installer)")

        say("3/6", f"kubectl apply -n {DEMO_NAMESPACE} -f examples/pods/ (image: the nodes' CUDA client)")
        kubectl(kubeconfig, "create", "namespace", DEMO_NAMESPACE)
        manifest = yaml.safe_dump_all(demo_pods())
        for attempt in range(30):
            try:  # the service-account controller makes the namespace's default ServiceAccount first
                applied = kubectl(kubeconfig, "apply", "-n", DEMO_NAMESPACE, "-f", "-", stdin=manifest)
                print("  " + applied.strip().replace("\n", "\n  "))
                break
            except StackError:
                if attempt == 29:
                    raise
                await asyncio.sleep(1)

        say("4/6", "waiting for the pods to be scheduled, admitted by the kubelets and run in their containers")
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
        pods = sorted(get_pods(kubeconfig), key=lambda p: p["metadata"]["name"])
        for pod in pods:
            name = pod["metadata"]["name"]
            node_name = pod["spec"].get("nodeName") or "-"
            rows = slices(pod) or ["-"]
            phase = pod["status"].get("phase", "")
            scheduler = pod["spec"].get("schedulerName", "")
            print(f"  {name:<10} {phase:<10} {scheduler:<15} {node_name:<12} {rows[0]}")
            for row in rows[1:]:
                print(f"  {'':<10} {'':<10} {'':<15} {'':<12} {row}")
            if node_name == "-":
                print(f"  {'':<10} why: {pending_reason(kubeconfig, name)}")

        say("6/6", "the programs' own view, from their containers (cuda_probe under hamicore, fake driver)")
        capped_at: int | None = None
        for pod in pods:
            name = pod["metadata"]["name"]
            if not pod["spec"].get("nodeName"):
                continue
            view, refused_after = program_view(pod, pod_log(kubeconfig, name))
            print(f"  {name}: {view}")
            if name == "gpu-slice":
                capped_at = refused_after
        if capped_at == 1000:
            print("\n  gpu-slice asked for 1000 MiB: hamicore let it allocate exactly 1000 MiB and refused more.")
            rc = 0
        else:
            print("\n  gpu-slice did not stop at 1000 MiB as expected; logs:", *stack.logs().values(), sep="\n    ")
            rc = 1
    finally:
        say("cleanup", "stopping the services, the GPU nodes and the control plane")
        nodes = [node.kubelet for node in stack.gpu_nodes.values()]
        await stack.stop()
        left = [piece for node in nodes for piece in node.leftovers()]
        cluster.stop()
        print(f"  left behind: {', '.join(left)}" if left else "  nothing of the nodes left behind")
        print(f"  demo done in {time.monotonic() - began:.0f} s")
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"  kept {work}")
    return 1 if left else rc


def main() -> int:
    parser = argparse.ArgumentParser(prog="run_demo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".work" / "demo", help="state and logs (deleted)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    args = parser.parse_args()
    try:
        shutil.rmtree(args.work_dir, ignore_errors=True)
        args.work_dir.mkdir(parents=True)
        return asyncio.run(demo(args.work_dir, args.keep))
    except (StackError, RealNodeError, ImageBuildError) as exc:
        print(f"\nmake demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

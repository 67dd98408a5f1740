"""What our stack as deployed needs from a cluster, on real nodes: the upstream controllers in localcluster
(Deployment -> ReplicaSet -> pods, DaemonSet, EndpointSlices, garbage collection, PodDisruptionBudget status),
kube-proxy routing Service ClusterIPs from the host side (where the apiserver calls webhooks through their
Service) and from pods, the apiserver reached by pods through the ``kubernetes`` Service with their
ServiceAccount token, and each node's own hostPaths (its own mount namespace).

Two real nodes (kubelet + containerd + runc); the first runs the network namespace's kube-proxy. Pods use the
GPU-client image's busybox (httpd, wget), no GPU. Run inside tests/e2e/isolated.sh (make test-e2e does).

busybox 1.35's wget crashes (SIGSEGV) whenever ``-T`` is given and on every error path: its exit status says
only success or not, and the waits bound it instead of ``-T``.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import GPU_CLIENT_IMAGE, NodeImages
from e2e_harness.real_node import (
    CONTROL_PLANE_ADDRESS,
    KUBERNETES_SERVICE_IP,
    NODE_PATHS,
    RealNode,
    RealNodeConfig,
)
from e2e_harness.waiting import read_pod, wait_for, wait_for_pod
from kubernetes_asyncio import client as k8s
from real_node_support import has_default_service_account, own_control_plane

pytestmark = pytest.mark.asyncio(loop_scope="module")

LABEL = "hami-e2e/controllers"
WAIT_S = 120.0
BUSYBOX = "/bin/busybox"
VGPU = "/usr/local/vgpu"


@pytest.fixture(scope="module")
def ctl_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with own_control_plane(tmp_path_factory, "real-ctl", controllers="*") as cluster:
        yield cluster


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def nodes(
    ctl_cluster: LocalCluster,
    node_images: NodeImages,
    real_node_indexes: Iterator[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[RealNode, RealNode]]:
    logs = tmp_path_factory.mktemp("real-ctl-nodes")
    a = RealNode(
        ctl_cluster,
        RealNodeConfig("ctl-a", next(real_node_indexes), {LABEL: "yes"}, kube_proxy=True),
        node_images,
        logs / "ctl-a",
    )
    b = RealNode(
        ctl_cluster, RealNodeConfig("ctl-b", next(real_node_indexes), {LABEL: "yes"}), node_images, logs / "ctl-b"
    )
    try:
        await asyncio.gather(a.start(), b.start())
        yield a, b
    finally:
        await asyncio.gather(a.stop(), b.stop())
    left = a.leftovers() + b.leftovers()
    assert not left, f"real nodes left behind: {left}"


@pytest_asyncio.fixture(loop_scope="module")
async def api(ctl_cluster: LocalCluster) -> AsyncIterator[k8s.ApiClient]:
    async with ctl_cluster.api_client() as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ns(nodes: tuple[RealNode, RealNode], ctl_cluster: LocalCluster) -> AsyncIterator[str]:
    """The module's namespace (each test names its objects apart), deleted at the end with everything in it by the
    namespace controller (Deployments and DaemonSets would otherwise re-create the pods a node's stop deletes)."""
    async with ctl_cluster.api_client() as api:
        core = k8s.CoreV1Api(api)
        name = f"real-ctl-{uuid.uuid4().hex[:6]}"
        await core.create_namespace({"metadata": {"name": name}})
        await wait_for(lambda: has_default_service_account(core, name), what=f"ServiceAccount {name}/default")
        try:
            yield name
        finally:
            await core.delete_namespace(name)

            async def gone() -> bool:
                try:
                    await core.read_namespace(name)
                except k8s.ApiException as exc:
                    if exc.status == 404:
                        return True
                    raise
                return False

            await wait_for(gone, what=f"namespace {name} deleted with its content", within=WAIT_S)


def busybox_container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": GPU_CLIENT_IMAGE,
        "imagePullPolicy": "Never",
        "command": [BUSYBOX, "sh", "-c", script],
        **extra,
    }


# Serves its own pod name on :8080 (busybox httpd), ready once it does.
WEB_SCRIPT = "mkdir -p /tmp/www && echo $HOSTNAME > /tmp/www/index.html && exec busybox httpd -f -p 8080 -h /tmp/www"


def web_deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        busybox_container(
                            "web",
                            WEB_SCRIPT,
                            ports=[{"containerPort": 8080}],
                            readinessProbe={"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                        )
                    ],
                },
            },
        },
    }


async def running_pods(api: k8s.ApiClient, ns: str, app: str) -> list[dict[str, Any]]:
    pods = await k8s.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"app={app}")
    return [api.sanitize_for_serialization(p) for p in pods.items if p.status.phase == "Running"]


async def deployment_ready(api: k8s.ApiClient, ns: str, name: str, replicas: int) -> list[dict[str, Any]] | None:
    deployment = await k8s.AppsV1Api(api).read_namespaced_deployment(name, ns)
    if (deployment.status.ready_replicas or 0) != replicas:
        return None
    pods = await running_pods(api, ns, name)
    return pods if len(pods) == replicas else None


async def create_web(api: k8s.ApiClient, ns: str, name: str, replicas: int) -> tuple[str, set[str]]:
    """The Deployment and its ClusterIP Service (80 -> 8080); returns the ClusterIP and the Running pods' names,
    once the Service's EndpointSlices list every one of them ready."""
    await k8s.AppsV1Api(api).create_namespaced_deployment(ns, web_deployment(name, replicas))
    service = await k8s.CoreV1Api(api).create_namespaced_service(
        ns,
        {
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    pods = await wait_for(
        lambda: deployment_ready(api, ns, name, replicas), what=f"Deployment {name} ready", within=WAIT_S
    )
    names = {p["metadata"]["name"] for p in pods}

    async def sliced() -> bool:
        slices = await k8s.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
            ns, label_selector=f"kubernetes.io/service-name={name}"
        )
        ready = {
            e.target_ref.name for s in slices.items for e in s.endpoints or [] if e.conditions and e.conditions.ready
        }
        return ready == names

    await wait_for(sliced, what=f"EndpointSlices of Service {name}", within=WAIT_S)
    return service.spec.cluster_ip, names


def http_get(url: str, timeout: float = 5.0, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
        return str(response.read().decode().strip())


async def pod_log(api: k8s.ApiClient, ns: str, name: str) -> str:
    return str(await k8s.CoreV1Api(api).read_namespaced_pod_log(name, ns))


async def run_to_completion(api: k8s.ApiClient, ns: str, pod: dict[str, Any]) -> tuple[str, str]:
    """Create ``pod`` (restartPolicy Never); its phase at the end and its log."""
    name = pod["metadata"]["name"]
    await k8s.CoreV1Api(api).create_namespaced_pod(ns, pod)
    done = await wait_for_pod(
        api,
        ns,
        name,
        lambda p: p.get("status", {}).get("phase") in ("Succeeded", "Failed"),
        what=f"pod {name} finished",
        within=WAIT_S,
    )
    return done["status"]["phase"], await pod_log(api, ns, name)


async def test_deployment_runs_its_replicas_and_its_service_reaches_them(
    api: k8s.ApiClient, ns: str, nodes: tuple[RealNode, RealNode]
) -> None:
    cluster_ip, names = await create_web(api, ns, "web", 2)
    assert len(names) == 2

    # Host side (where the apiserver calls a webhook's Service): kube-proxy's rules spread requests over both.
    # Ready EndpointSlices are not yet rules: kube-proxy programs them on its next sync, until then a connection to
    # the ClusterIP goes nowhere.
    async def answers() -> str | None:
        try:
            return await asyncio.to_thread(http_get, f"http://{cluster_ip}/", 1.0)
        except OSError:  # URLError is an OSError
            return None

    seen: set[str] = {await wait_for(answers, what=f"Service {cluster_ip} programmed by kube-proxy", within=WAIT_S)}

    # The first rules kube-proxy wrote may hold one replica only (a sync between the two becoming ready); the next
    # sync adds the other. So ask until both answered, for as long as a sync may take, not a fixed number of times.
    async def both_answered() -> bool:
        for _ in range(10):
            answer = await answers()
            if answer is not None:
                seen.add(answer)
        return seen == names

    try:
        await wait_for(both_answered, what=f"both replicas answering through {cluster_ip}", within=WAIT_S)
    except TimeoutError:
        raise AssertionError(f"host side reached {seen} of {names} in {WAIT_S} s") from None

    # From a pod, through the Service variables the kubelet puts into its environment.
    script = (
        'echo "host=$WEB_SERVICE_HOST"; '
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do "
        'busybox wget -q -O- "http://$WEB_SERVICE_HOST:$WEB_SERVICE_PORT/" || exit 1; done'
    )
    phase, log = await run_to_completion(
        api,
        ns,
        {
            "metadata": {"name": "web-client"},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [busybox_container("client", script)],
            },
        },
    )
    assert phase == "Succeeded", log
    lines = log.splitlines()
    assert lines[0] == f"host={cluster_ip}"
    answers = set(lines[1:])
    assert answers, log
    assert answers <= names, log
    assert len(lines) == 21


async def test_pod_disruption_budget_reports_its_status(api: k8s.ApiClient, ns: str) -> None:
    _, names = await create_web(api, ns, "guarded", 2)
    await k8s.PolicyV1Api(api).create_namespaced_pod_disruption_budget(
        ns,
        {"metadata": {"name": "guarded"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}},
    )

    async def status() -> Any:
        pdb = await k8s.PolicyV1Api(api).read_namespaced_pod_disruption_budget("guarded", ns)
        st = pdb.status
        if st is None or st.observed_generation != pdb.metadata.generation or st.current_healthy != 2:
            return None
        return st

    st = await wait_for(status, what="PDB status", within=WAIT_S)
    assert (st.desired_healthy, st.disruptions_allowed, st.expected_pods) == (1, 1, 2)

    # The eviction API honours it: one pod may go, the second not while the first's replacement is not ready.
    first, second = sorted(names)
    await k8s.CoreV1Api(api).create_namespaced_pod_eviction(first, ns, {"metadata": {"name": first, "namespace": ns}})
    with pytest.raises(k8s.ApiException) as refused:
        await k8s.CoreV1Api(api).create_namespaced_pod_eviction(
            second, ns, {"metadata": {"name": second, "namespace": ns}}
        )
    assert refused.value.status == 429, refused.value.body


async def test_deleting_a_deployment_collects_its_replicasets_and_pods(api: k8s.ApiClient, ns: str) -> None:
    await create_web(api, ns, "doomed", 1)
    apps = k8s.AppsV1Api(api)
    replica_sets = await apps.list_namespaced_replica_set(ns, label_selector="app=doomed")
    assert len(replica_sets.items) == 1
    owner = replica_sets.items[0].metadata.owner_references[0]
    assert (owner.kind, owner.name) == ("Deployment", "doomed")

    await apps.delete_namespaced_deployment("doomed", ns)

    async def collected() -> bool:
        left_rs = await apps.list_namespaced_replica_set(ns, label_selector="app=doomed")
        left_pods = await k8s.CoreV1Api(api).list_namespaced_pod(ns, label_selector="app=doomed")
        return not left_rs.items and not left_pods.items

    await wait_for(collected, what="ReplicaSet and pods of the deleted Deployment collected", within=WAIT_S)


async def test_daemonset_pods_see_their_own_nodes_host_paths(
    api: k8s.ApiClient, ns: str, nodes: tuple[RealNode, RealNode]
) -> None:
    # Each pod writes a marker named after its node into the node paths our DaemonSets use, then lists them
    # every second: on a node of its own it never sees the other node's marker.
    script = (
        'for d in /host/vgpu /host/run-hami; do echo "$NODE_NAME" > "$d/marker-$NODE_NAME"; done; '
        'while true; do echo "ls $(ls /host/vgpu | tr "\\n" " ")| $(ls /host/run-hami | tr "\\n" " ")"; '
        "busybox sleep 1; done"
    )
    volumes = [
        {"name": "vgpu", "hostPath": {"path": VGPU, "type": "DirectoryOrCreate"}},
        {"name": "run-hami", "hostPath": {"path": "/run/hami", "type": "DirectoryOrCreate"}},
    ]
    ds = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "marker"},
        "spec": {
            "selector": {"matchLabels": {"app": "marker"}},
            "template": {
                "metadata": {"labels": {"app": "marker"}},
                "spec": {
                    "nodeSelector": {LABEL: "yes"},
                    "terminationGracePeriodSeconds": 1,
                    "volumes": volumes,
                    "containers": [
                        busybox_container(
                            "marker",
                            script,
                            env=[{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                            volumeMounts=[
                                {"name": "vgpu", "mountPath": "/host/vgpu"},
                                {"name": "run-hami", "mountPath": "/host/run-hami"},
                            ],
                        )
                    ],
                },
            },
        },
    }
    await k8s.AppsV1Api(api).create_namespaced_daemon_set(ns, ds)

    async def one_per_node() -> list[dict[str, Any]] | None:
        daemon_set = await k8s.AppsV1Api(api).read_namespaced_daemon_set("marker", ns)
        st = daemon_set.status
        if not (st.desired_number_scheduled == st.number_ready == 2):
            return None
        pods = await running_pods(api, ns, "marker")
        return pods if len(pods) == 2 else None

    pods = await wait_for(one_per_node, what="DaemonSet marker ready on both nodes", within=WAIT_S)
    by_node = {p["spec"]["nodeName"]: p["metadata"]["name"] for p in pods}
    assert set(by_node) == {n.name for n in nodes}

    # Three listings made after both pods were Running.
    counts = {node: (await pod_log(api, ns, pod)).count("\n") for node, pod in by_node.items()}

    async def listed_again() -> dict[str, str] | None:
        logs = {node: await pod_log(api, ns, pod) for node, pod in by_node.items()}
        return logs if all(logs[n].count("\n") >= counts[n] + 3 for n in logs) else None

    logs = await wait_for(listed_again, what="listings after both pods ran", within=WAIT_S)
    for node_name, log in logs.items():
        own = f"marker-{node_name}"
        assert all(line == f"ls {own} | {own} " for line in log.splitlines()), log

    # The run's namespace sees each node's files at host_path(), and none in its own copy of the node paths.
    for node in nodes:
        for node_path in (VGPU, "/run/hami"):
            where = node.host_path(node_path)
            assert where != Path(node_path)
            assert sorted(p.name for p in where.iterdir()) == [f"marker-{node.name}"]
            assert (where / f"marker-{node.name}").read_text() == f"{node.name}\n"
        assert node.device_plugin_dir == node.host_path("/var/lib/kubelet/device-plugins")
        assert (node.device_plugin_dir / "kubelet.sock").is_socket()
        assert (node.host_path("/var/lib/kubelet/pod-resources") / "kubelet.sock").is_socket()
    for shared in NODE_PATHS:
        assert not [p for p in shared.iterdir() if p.name.startswith("marker-")]


async def test_pod_reaches_the_apiserver_through_the_kubernetes_service(
    api: k8s.ApiClient, ns: str, ctl_cluster: LocalCluster
) -> None:
    core = k8s.CoreV1Api(api)
    service = await core.read_namespaced_service("kubernetes", "default")
    assert service.spec.cluster_ip == KUBERNETES_SERVICE_IP
    slices = await k8s.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=kubernetes"
    )
    assert [a for s in slices.items for e in s.endpoints for a in e.addresses] == [CONTROL_PLANE_ADDRESS]

    # Host side: TLS to the ClusterIP verifies against the cluster CA for the names in-cluster clients use.
    context = ssl.create_default_context(cafile=str(ctl_cluster.info.ca_cert))
    version = await asyncio.to_thread(http_get, f"https://{KUBERNETES_SERVICE_IP}/version", context=context)
    assert '"gitVersion": "v1.34.4"' in version

    # A pod with a ServiceAccount allowed to list pods does so with its mounted token, at the address and port
    # the kubelet gives every pod (busybox's wget does not verify certificates: the host-side check above does).
    await core.create_namespaced_service_account(ns, {"metadata": {"name": "lister"}})
    rbac = k8s.RbacAuthorizationV1Api(api)
    await rbac.create_namespaced_role(
        ns,
        {"metadata": {"name": "lister"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
    )
    await rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": "lister"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lister"},
            "subjects": [{"kind": "ServiceAccount", "name": "lister", "namespace": ns}],
        },
    )
    script = (
        'echo "api=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"; '
        "token=$(cat /var/run/secrets/kubernetes.io/serviceaccount/token); "
        'busybox wget -q --no-check-certificate --header "Authorization: Bearer $token" -O- '
        f'"https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/{ns}/pods"; echo; '
        # Who the apiserver says the caller is (any authenticated user may ask).
        'busybox wget -q --no-check-certificate --header "Authorization: Bearer $token" '
        '--header "Content-Type: application/json" '
        '--post-data \'{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}\' -O- '
        '"https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/apis/authentication.k8s.io/v1/selfsubjectreviews"'
    )
    phase, log = await run_to_completion(
        api,
        ns,
        {
            "metadata": {"name": "in-cluster"},
            "spec": {
                "serviceAccountName": "lister",
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [busybox_container("client", script)],
            },
        },
    )
    assert phase == "Succeeded", log
    assert log.splitlines()[0] == f"api={KUBERNETES_SERVICE_IP}:443"
    assert '"kind": "PodList"' in log, log
    assert '"name": "in-cluster"' in log, log
    assert f'"username": "system:serviceaccount:{ns}:lister"' in log, log
    pod = await read_pod(api, ns, "in-cluster")
    assert pod is not None
    assert pod["spec"]["serviceAccountName"] == "lister"

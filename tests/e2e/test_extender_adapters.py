"""The extender's adapters against the real API server: the pod client (read, a Binding that carries the placement
annotations with the UID as a precondition, label patches, Events, errors as KubeError with the API's message) and
leader election on a real coordination.k8s.io/v1 Lease (one leader; the follower takes over once the leader stops
renewing)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from e2e_harness.waiting import wait_for
from hami_scheduler_extender.adapters.kube import KubeClient
from hami_scheduler_extender.adapters.leader import LeaseElector
from hami_scheduler_extender.core.commit import BindingMetadata
from hami_shared.service.kube import KubeError
from kubernetes_asyncio import client as k8s


async def test_one_leader_and_takeover_after_expiry(k8s_api: k8s.ApiClient, namespace: str) -> None:
    def elector(identity: str) -> LeaseElector:
        return LeaseElector(
            k8s_api, namespace=namespace, name="hami-extender", identity=identity, lease_duration=3, renew_interval=0.5
        )

    first, second = elector("replica-a"), elector("replica-b")
    first_task = asyncio.create_task(first.run())

    async def first_leads() -> bool:
        return first.is_leader

    await wait_for(first_leads, what="replica-a leading", within=60)
    second_task = asyncio.create_task(second.run())
    try:
        await asyncio.sleep(2)  # several renewals: replica-b must stay a follower
        assert first.is_leader
        assert not second.is_leader
        lease = await k8s.CoordinationV1Api(k8s_api).read_namespaced_lease("hami-extender", namespace)
        assert lease.spec.holder_identity == "replica-a"
        first_task.cancel()  # stops renewing, as a crashed replica would

        async def second_leads() -> bool:
            return second.is_leader

        await wait_for(second_leads, what="replica-b taking over", within=60)
        lease = await k8s.CoordinationV1Api(k8s_api).read_namespaced_lease("hami-extender", namespace)
        assert lease.spec.holder_identity == "replica-b"
        assert lease.spec.lease_transitions == 1
    finally:
        for task in (first_task, second_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def placed(node: str) -> BindingMetadata:
    return BindingMetadata(annotations={"hami.io/vgpu-node": node})


async def test_pod_client_and_its_errors(k8s_api: k8s.ApiClient, namespace: str) -> None:
    client = KubeClient(k8s_api, component="hami-scheduler")
    core = k8s.CoreV1Api(k8s_api)
    for name in ("p", "q"):
        await core.create_namespaced_pod(
            namespace, {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
        )
    pod = await client.get_pod(namespace, "p")
    uid = pod["metadata"]["uid"]
    with pytest.raises(KubeError) as missing:
        await client.get_pod(namespace, "ghost")
    assert missing.value.status == 404
    assert "ghost" in str(missing.value)
    with pytest.raises(KubeError) as unbound:
        await client.create_binding(namespace, "ghost", "no-uid", "n1", placed("n1"))
    assert unbound.value.status == 404
    # The UID is a precondition: a Binding for another incarnation of the pod writes nothing.
    with pytest.raises(KubeError) as wrong_uid:
        await client.create_binding(namespace, "p", "not-the-uid", "n1", placed("n1"))
    assert wrong_uid.value.status == 409
    untouched = await client.get_pod(namespace, "p")
    assert not untouched["spec"].get("nodeName")
    assert "hami.io/vgpu-node" not in (untouched["metadata"].get("annotations") or {})
    # One write: kube-apiserver copies the Binding's annotations onto the pod with spec.nodeName.
    placement = {"hami.io/vgpu-node": "n1", "hami.io/bind-phase": "allocating", "hami.io/vgpu-device-slots": "a-0;"}
    await client.create_binding(
        namespace, "p", uid, "n1", BindingMetadata(annotations=placement, labels={"hami.io/vgpu-node": "n1"})
    )
    bound = await client.get_pod(namespace, "p")
    assert bound["spec"]["nodeName"] == "n1"
    assert placement.items() <= bound["metadata"]["annotations"].items()
    assert any(c["type"] == "PodScheduled" and c["status"] == "True" for c in bound["status"]["conditions"])
    with pytest.raises(KubeError) as twice:
        await client.create_binding(namespace, "p", uid, "n2", placed("n2"))
    assert twice.value.status == 409
    assert (await client.get_pod(namespace, "p"))["metadata"]["annotations"]["hami.io/vgpu-node"] == "n1"
    writers = asyncio.create_task(client.run_writers())
    try:
        client.label_pod(pod={"name": "p", "namespace": namespace, "uid": uid}, labels={"hami.io/vgpu-node": "n1"})
        # A label patch with a stale UID is refused by the API server (logged, nothing written).
        client.label_pod(pod={"name": "q", "namespace": namespace, "uid": "stale"}, labels={"hami.io/vgpu-node": "n1"})
        client.emit_event(
            pod={"name": "p", "namespace": namespace, "uid": uid},
            event_type="Normal",
            reason="BindingSucceed",
            message="bound to n1",
        )

        async def label_and_event_seen() -> bool:
            labels = (await client.get_pod(namespace, "p"))["metadata"].get("labels") or {}
            events = await core.list_namespaced_event(namespace, field_selector="involvedObject.name=p")
            return labels.get("hami.io/vgpu-node") == "n1" and any(
                e.reason == "BindingSucceed" and e.source.component == "hami-scheduler" for e in events.items
            )

        await wait_for(label_and_event_seen, what="the label and the Event on the pod", within=60)
        assert "hami.io/vgpu-node" not in ((await client.get_pod(namespace, "q"))["metadata"].get("labels") or {})
    finally:
        writers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writers

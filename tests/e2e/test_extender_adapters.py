"""The extender's adapters against the real API server: the pod client (read, merge patch with the UID as a
precondition, Binding, Events, errors as KubeError with the API's message) and leader election on a real
coordination.k8s.io/v1 Lease (one leader; the follower takes over once the leader stops renewing)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from e2e_harness.waiting import wait_for
from hami_scheduler_extender.adapters.kube import KubeClient
from hami_scheduler_extender.adapters.leader import LeaseElector
from hami_scheduler_extender.app.ports import KubeError
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


async def test_pod_client_and_its_errors(k8s_api: k8s.ApiClient, namespace: str) -> None:
    client = KubeClient(k8s_api, component="hami-scheduler")
    core = k8s.CoreV1Api(k8s_api)
    await core.create_namespaced_pod(
        namespace, {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    )
    pod = await client.get_pod(namespace, "p")
    uid = pod["metadata"]["uid"]
    await client.patch_pod(namespace, "p", {"metadata": {"uid": uid, "annotations": {"hami.io/vgpu-node": "n1"}}})
    assert (await client.get_pod(namespace, "p"))["metadata"]["annotations"]["hami.io/vgpu-node"] == "n1"
    await client.patch_pod(namespace, "p", {"metadata": {"uid": uid, "annotations": {"hami.io/vgpu-node": None}}})
    assert "hami.io/vgpu-node" not in ((await client.get_pod(namespace, "p"))["metadata"].get("annotations") or {})
    with pytest.raises(KubeError) as missing:
        await client.get_pod(namespace, "ghost")
    assert missing.value.status == 404
    assert "ghost" in str(missing.value)
    with pytest.raises(KubeError) as wrong_uid:
        await client.patch_pod(namespace, "p", {"metadata": {"uid": "not-the-uid", "annotations": {"a": "b"}}})
    assert wrong_uid.value.status in (409, 422)
    with pytest.raises(KubeError) as unbound:
        await client.create_binding(namespace, "ghost", "no-uid", "n1")
    assert unbound.value.status == 404
    await client.create_binding(namespace, "p", uid, "n1")
    assert (await client.get_pod(namespace, "p"))["spec"]["nodeName"] == "n1"
    with pytest.raises(KubeError) as twice:
        await client.create_binding(namespace, "p", uid, "n2")
    assert twice.value.status == 409
    sender = asyncio.create_task(client.send_events())
    try:
        client.emit_event(
            pod={"name": "p", "namespace": namespace, "uid": uid},
            event_type="Normal",
            reason="BindingSucceed",
            message="bound to n1",
        )

        async def event_seen() -> bool:
            events = await core.list_namespaced_event(namespace, field_selector="involvedObject.name=p")
            return any(e.reason == "BindingSucceed" and e.source.component == "hami-scheduler" for e in events.items)

        await wait_for(event_seen, what="the Event on the pod", within=60)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender

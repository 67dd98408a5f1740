"""Claims: the pure decisions (core/claims.py: the patch that records a pod's claimed containers, which containers
an earlier run served) and the unit that holds the claims and the container records (app/claims.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.adapters.records import RecordStore
from hami_device_plugin.app.claims import Claims
from hami_device_plugin.core.claims import PodKey, PodPatch, consumed_patch, served_before
from hami_device_plugin.core.pods import pod_record
from hami_device_plugin.core.records import record_from_pod
from hami_shared import names
from hami_shared.pod_devices import decode_pod_devices
from podspecs import Ctr, pod_json

NODE = "node-a"
G0 = "GPU-00000000-0000-4000-8000-000000000000"
TWO = pod_json(
    "two", uid="uid-two", node=NODE, containers=[Ctr("a", [(G0, 0, 1000, 10)]), Ctr("b", [(G0, 1, 2000, 0)])]
)


def test_a_claimed_container_is_emptied_from_the_to_allocate_list_and_the_last_one_makes_it_a_success() -> None:
    pod = pod_record(TWO)
    patch, done = consumed_patch(pod, {("uid-two", 0)}, NODE)
    assert not done
    remaining = decode_pod_devices(patch.annotations[names.DEVICES_TO_ALLOCATE])
    assert [bool(c) for c in remaining] == [False, True]
    assert names.BIND_PHASE not in patch.annotations
    assert patch.labels == {}
    assert (patch.namespace, patch.name) == ("default", "two")

    patch, done = consumed_patch(pod, {("uid-two", 0), ("uid-two", 1), ("other", 0)}, NODE)
    assert done
    assert not any(decode_pod_devices(patch.annotations[names.DEVICES_TO_ALLOCATE]))
    assert patch.annotations[names.BIND_PHASE] == "success"
    assert patch.labels == {names.VGPU_NODE: NODE}


def test_a_node_name_too_long_for_a_label_value_gets_no_label() -> None:
    long_node = "n" * (names.LABEL_VALUE_MAX + 1)
    body = pod_json("p", uid="u", node=long_node, containers=[Ctr("a", [(G0, 0, 1000, 10)])])
    patch, done = consumed_patch(pod_record(body), {("u", 0)}, long_node)
    assert done
    assert patch.labels == {}


def test_later_patches_of_a_pod_win_key_by_key() -> None:
    older = PodPatch("ns", "p", {"a": "1", "b": "1"}, {"l": "1"})
    newer = PodPatch("ns", "p", {"b": "2"})
    assert older.then(newer) == PodPatch("ns", "p", {"a": "1", "b": "2"}, {"l": "1"})
    assert str(PodKey("uid", "ns/p")) == "ns/p"


def test_only_pending_containers_whose_directory_exists_were_served_before() -> None:
    pod = pod_record(TWO)
    assert served_before(pod, set(), {"uid-two_b", "uid-other_a"}) == (1,)
    assert served_before(pod, {("uid-two", 1)}, {"uid-two_b"}) == ()
    assert served_before(pod, set(), set()) == ()


async def test_claims_are_held_and_records_are_kept_rebuilt_written_and_forgotten(tmp_path: Path) -> None:
    cache = PodCache()
    cache.replace([TWO])
    store = RecordStore(tmp_path)
    claims = Claims(node=NODE, pods=cache, record_store=store)
    claims.claim("uid-two", 0)
    assert claims.held == {("uid-two", 0)}

    # Not allocated by this run: rebuilt from the pod's allocated devices, and kept.
    rebuilt = claims.record("uid-two_b")
    assert rebuilt == record_from_pod(pod_record(TWO), "b")
    assert claims.recorded("uid-two_b") == rebuilt
    assert claims.record("uid-unknown_a") is None

    record = record_from_pod(pod_record(TWO), "a")
    assert record is not None
    claims.keep(record)
    writer = asyncio.create_task(claims.run_record_writer())
    try:
        for _ in range(200):
            if record.dir_name in store.names():
                break
            await asyncio.sleep(0.01)
        assert store.load()[record.dir_name] == record
    finally:
        writer.cancel()
    claims.forget(record.dir_name)
    assert claims.recorded(record.dir_name) is None
    assert record.dir_name not in store.names()

    loaded = Claims(node=NODE, pods=None)
    loaded.load({record.dir_name: record})
    assert loaded.record(record.dir_name) == record

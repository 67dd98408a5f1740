"""ResourceQuota on GPU slices (core/quota.py, the ledger inside the usage cache, the quota watch handlers):
how pods count, how quota objects read, and the check that refuses an over-quota pod with HAMi's reason."""

from __future__ import annotations

from typing import Any

import pytest
from extender_builders import container, gpu, node_json, pod_json, request_of, state_with
from hami_scheduler_extender.adapters import quota_watch
from hami_scheduler_extender.core import quota
from hami_scheduler_extender.core.model import DeviceGrant, PodAllocation
from hami_scheduler_extender.core.quota import Demand, QuotaLedger, QuotaSpec
from hami_scheduler_extender.core.request import RequestDefaults
from hami_shared.errors import MalformedInputError
from hami_shared.names import ResourceNames
from hypothesis import assume, given, settings
from hypothesis import strategies as st


def quota_json(name: str = "gpu", namespace: str = "team", **hard: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hard": dict(hard)},
    }


def limits(mem: Any = None, cores: Any = None, **other: Any) -> dict[str, Any]:
    hard = dict(other)
    if mem is not None:
        hard["limits.nvidia.com/gpumem"] = mem
    if cores is not None:
        hard["limits.nvidia.com/gpucores"] = cores
    return hard


# --- how pods count ---------------------------------------------------------------------------------
def test_memory_and_cores_count_once_per_card() -> None:
    request = request_of(pod_json(containers=[container(gpu=2, mem=3000, cores=30), container("b", gpu=1, mem=500)]))
    assert quota.request_demand(request) == Demand(mem=6500, cores=60)


def test_memory_factor_scales_what_a_pod_asks() -> None:
    request = request_of(pod_json(containers=[container(gpu=1, mem=10)]), defaults=RequestDefaults(memory_factor=100))
    assert quota.request_demand(request) == Demand(mem=1000, cores=0)


def test_percentage_memory_is_known_only_per_card() -> None:
    request = request_of(pod_json(containers=[container(gpu=2, pct=50, cores=10)]))
    assert quota.request_demand(request) is None
    assert quota.fixed_demand(request) == Demand(mem=0, cores=20)
    grants = ((DeviceGrant(uuid="a", usedmem=8000, usedcores=10), DeviceGrant(uuid="b", usedmem=40960, usedcores=10)),)
    assert quota.grants_demand(grants, init_containers=0, sidecars=frozenset()) == Demand(mem=48960, cores=20)


def test_a_pod_counts_its_peak_like_hamis_webhook() -> None:
    # Plain init containers run one at a time before the app containers: the larger of the two phases counts.
    init = [container("i1", gpu=1, mem=7000), container("i2", gpu=1, mem=2000)]
    apps = [container("a", gpu=1, mem=3000), container("b", gpu=1, mem=1000)]
    request = request_of(pod_json(init_containers=init, containers=apps))
    assert quota.request_demand(request) == Demand(mem=7000, cores=0)
    # A sidecar (restartPolicy: Always) keeps running beside the later init containers and the app containers.
    sidecar = dict(container("s", gpu=1, mem=500), restartPolicy="Always")
    request = request_of(pod_json(init_containers=[sidecar, *init], containers=apps))
    assert quota.request_demand(request) == Demand(mem=7500, cores=0)


def test_grants_and_request_count_the_same() -> None:
    pod = pod_json(init_containers=[container("i", gpu=1, mem=4000, cores=50)], containers=[container(gpu=2, mem=1500)])
    request = request_of(pod)
    state = state_with(node_json("n1", [gpu("G0", index=0), gpu("G1", index=1)]))
    allocation, _ = state.reserve_fit(uid="u", namespace="team", name="p", node="n1", request=request, now=0.0)
    assert allocation is not None
    held = quota.grants_demand(allocation.grants, init_containers=1, sidecars=frozenset())
    assert held == quota.request_demand(request) == Demand(mem=4000, cores=50)
    assert state.quotas.used("team") == held


# --- quota objects ----------------------------------------------------------------------------------
def test_reads_the_gpu_limits_of_a_quota() -> None:
    spec = quota.read_quota(quota_json(**limits("8000", "150", **{"requests.cpu": "4"})), ResourceNames())
    assert spec == QuotaSpec(namespace="team", name="gpu", mem=8000, cores=150)


@pytest.mark.parametrize(("text", "value"), [("8000", 8000), ("8k", 8000), ("2Ki", 2048), ("1e3", 1000), (12, 12)])
def test_limits_use_kubernetes_quantities(text: Any, value: int) -> None:
    assert quota.read_quota(quota_json(**limits(text)), ResourceNames()).mem == value


def test_huge_limits_are_clamped_not_refused() -> None:
    assert quota.read_quota(quota_json(**limits("10E")), ResourceNames()).mem == quota.MAX_LIMIT


@pytest.mark.parametrize("bad", ["1.5", "-1", "lots", "", True, None, [1], "9" * 65])
def test_unreadable_limits_are_refused_with_the_key(bad: Any) -> None:
    with pytest.raises(MalformedInputError, match=r"team/gpu spec.hard\[limits.nvidia.com/gpumem\]"):
        quota.read_quota(quota_json(**{"limits.nvidia.com/gpumem": bad}), ResourceNames())


def test_requests_items_and_other_resources_are_not_ours() -> None:
    # requests.<extended resource> is kube-apiserver's own quota (docs/configuration.md): never counted here.
    spec = quota.read_quota(quota_json(**{"requests.nvidia.com/gpumem": "10", "limits.memory": "1Gi"}), ResourceNames())
    assert not spec.limits_gpu


def test_configured_resource_names_pick_the_keys() -> None:
    names = ResourceNames(memory="example.com/vmem", cores="example.com/vcores")
    obj = quota_json(**{"limits.example.com/vmem": "100", "limits.nvidia.com/gpumem": "5"})
    assert quota.read_quota(obj, names).mem == 100
    ledger = QuotaLedger(names)
    ledger.upsert(quota.read_quota(obj, names))
    refusal = ledger.check("team", Demand(mem=101))
    assert refusal is not None
    assert refusal.resource == "limits.example.com/vmem"


# --- the check ------------------------------------------------------------------------------------
def test_refusal_names_the_quota_the_resource_and_the_numbers() -> None:
    ledger = QuotaLedger()
    ledger.upsert(QuotaSpec(namespace="team", name="gpu", mem=8000))
    ledger.add("team", Demand(mem=6000))
    assert ledger.check("team", Demand(mem=2000)) is None
    refusal = ledger.check("team", Demand(mem=2001))
    assert refusal is not None
    assert refusal.message.startswith(
        "ResourceQuotaNotFit: ResourceQuota team/gpu limits.nvidia.com/gpumem: used 6000 + asked 2001 > limit 8000"
    )
    assert ledger.check("other", Demand(mem=10**9)) is None


def test_every_quota_of_the_namespace_binds() -> None:
    ledger = QuotaLedger()
    ledger.upsert(QuotaSpec(namespace="team", name="wide", mem=100_000, cores=1000))
    ledger.upsert(QuotaSpec(namespace="team", name="narrow", cores=100))
    refusal = ledger.check("team", Demand(mem=10, cores=101))
    assert refusal is not None
    assert (refusal.quota, refusal.resource) == ("narrow", "limits.nvidia.com/gpucores")
    ledger.delete("team", "narrow")
    assert ledger.check("team", Demand(mem=10, cores=101)) is None


def test_zero_limit_admits_nothing_and_unasked_resources_are_not_checked() -> None:
    ledger = QuotaLedger()
    ledger.upsert(QuotaSpec(namespace="team", name="gpu", mem=0, cores=50))
    assert ledger.check("team", Demand(mem=1)) is not None
    assert ledger.check("team", Demand(mem=0, cores=50)) is None
    ledger.add("team", Demand(mem=0, cores=80))  # usage above a lowered limit: only new cores are refused
    assert ledger.check("team", Demand(cores=1)) is not None
    assert ledger.check("team", Demand()) is None


def test_memory_limit_is_scaled_by_the_memory_factor() -> None:
    ledger = QuotaLedger()
    ledger.upsert(QuotaSpec(namespace="team", name="gpu", mem=80))
    assert ledger.check("team", Demand(mem=8000), memory_factor=100) is None
    assert ledger.check("team", Demand(mem=8001), memory_factor=100) is not None


def test_own_hold_is_left_out_of_the_usage() -> None:
    ledger = QuotaLedger()
    ledger.upsert(QuotaSpec(namespace="team", name="gpu", mem=8000))
    ledger.add("team", Demand(mem=8000))
    assert ledger.check("team", Demand(mem=8000), held=Demand(mem=8000)) is None
    assert ledger.check("team", Demand(mem=8000)) is not None


def test_quota_without_gpu_limits_is_not_kept() -> None:
    ledger = QuotaLedger()
    ledger.upsert(QuotaSpec(namespace="team", name="gpu", mem=10))
    ledger.upsert(QuotaSpec(namespace="team", name="gpu"))  # edited: GPU limits removed
    assert ledger.quotas("team") == ()
    ledger.replace([QuotaSpec(namespace="a", name="q", cores=1), QuotaSpec(namespace="b", name="q")])
    assert [q.namespace for ns in ("a", "b", "team") for q in ledger.quotas(ns)] == ["a"]


def test_samples_show_usage_and_the_binding_limit() -> None:
    ledger = QuotaLedger()
    ledger.upsert(QuotaSpec(namespace="team", name="a", mem=9000))
    ledger.upsert(QuotaSpec(namespace="team", name="b", mem=8000))
    ledger.add("free", Demand(mem=100, cores=10))
    samples = {(s.namespace, s.resource): (s.used, s.limit) for s in ledger.samples()}
    assert samples == {
        ("free", "nvidia.com/gpumem"): (100, None),
        ("free", "nvidia.com/gpucores"): (10, None),
        ("team", "nvidia.com/gpumem"): (0, 8000),
        ("team", "nvidia.com/gpucores"): (0, None),
    }


# --- usage from the holds -------------------------------------------------------------------------------
def _allocation(uid: str, namespace: str, mem: int, *, node: str = "n1", assumed: bool = False) -> PodAllocation:
    return PodAllocation(
        uid=uid,
        namespace=namespace,
        name=uid,
        node=node,
        grants=((DeviceGrant(uuid="G0", usedmem=mem, usedcores=10),),),
        assumed=assumed,
    )


def test_usage_follows_the_holds_through_their_life() -> None:
    state = state_with(node_json("n1", [gpu("G0")]))
    state.replace_pods({"a": _allocation("a", "team", 3000), "b": _allocation("b", "team", 2000)})
    assert state.quotas.used("team") == Demand(mem=5000, cores=20)
    with state.without_hold("a"):  # confirmed holds are not set aside
        assert state.quotas.used("team") == Demand(mem=5000, cores=20)
    state.delete_pod("a")  # deleted, or Succeeded/Failed: the watch ends the hold
    assert state.quotas.used("team") == Demand(mem=2000, cores=10)
    request = request_of(pod_json(containers=[container(gpu=1, mem=1000)]))
    state.reserve_fit(uid="c", namespace="team", name="c", node="n1", request=request, now=0.0)
    assert state.quotas.used("team") == Demand(mem=3000, cores=10)
    with state.without_hold("c"):  # a pod filtered again does not count against itself
        assert state.quotas.used("team") == Demand(mem=2000, cores=10)
    assert state.quotas.used("team") == Demand(mem=3000, cores=10)
    state.unreserve("c")
    state.replace_pods({})  # re-list: the pod is gone
    assert state.quotas.used("team") == Demand()
    assert list(state.quotas.samples()) == []


def test_card_sizes_per_node_come_from_the_table() -> None:
    state = state_with(
        node_json("one", [gpu("A0", devmem=16000)]),
        node_json(
            "mixed", [gpu("B0", devmem=81920), gpu("B1", devmem=16000, index=1), gpu("B2", devmem=32768, index=2)]
        ),
    )
    assert state.card_mem_range(["mixed", "ghost", "one"]) == (["mixed", "one"], [16000, 16000], [81920, 16000])
    assert state.largest_card_mem() == 81920


# --- the watch handlers -----------------------------------------------------------------------------
def test_watch_events_keep_the_quotas_and_malformed_objects_are_counted() -> None:
    ledger = QuotaLedger()
    malformed: list[int] = []
    names = ResourceNames()

    def event(kind: str, obj: Any) -> None:
        quota_watch.apply_quota_event(ledger, kind, obj, names=names, on_malformed=lambda: malformed.append(1))

    event("ADDED", quota_json(**limits("8000")))
    assert ledger.quotas("team")[0].mem == 8000
    event("MODIFIED", quota_json(**limits("1.5")))  # unreadable: left out, with the limit it had
    assert ledger.quotas("team") == ()
    assert len(malformed) == 1
    event("MODIFIED", quota_json(**limits("4000")))
    event("MODIFIED", "not an object")
    event("ADDED", {"metadata": {"name": "x"}, "spec": {"hard": {}}})
    event("ADDED", quota_json("bad-hard", hard=None) | {"spec": {"hard": ["x"]}})
    assert len(malformed) == 4
    assert ledger.quotas("team")[0].mem == 4000
    event("DELETED", quota_json(**limits("4000")))
    assert ledger.quotas("team") == ()
    specs = [quota_watch.digest_quota(o, names=names) for o in (quota_json(**limits("1")), 7, quota_json("b"))]
    ledger.replace(s for s in specs if s is not None)
    assert [q.name for q in ledger.quotas("team")] == ["gpu"]


# --- property: the card-size demand is what the grants say ------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    card_mem=st.integers(1000, 81920),
    containers=st.lists(
        st.tuples(
            st.integers(1, 2),
            st.one_of(st.integers(1, 100).map(lambda p: ("pct", p)), st.integers(1, 900).map(lambda m: ("mem", m))),
            st.integers(0, 40),
        ),
        min_size=1,
        max_size=3,
    ),
    init=st.integers(0, 1),
)
def test_demand_on_a_card_size_is_what_a_placement_on_such_cards_holds(
    card_mem: int, containers: list[tuple[int, tuple[str, int], int]], init: int
) -> None:
    specs = [
        container(f"c{i}", gpu=n, **{kind: amount}, cores=cores)
        for i, (n, (kind, amount), cores) in enumerate(containers)
    ]
    init = min(init, len(specs) - 1)
    request = request_of(pod_json(init_containers=specs[:init], containers=specs[init:]))
    state = state_with(node_json("n", [gpu(f"G{i}", index=i, devmem=card_mem, count=10) for i in range(2)]))
    allocation, _ = state.reserve_fit(uid="u", namespace="t", name="p", node="n", request=request, now=0.0)
    assume(allocation is not None)
    assert allocation is not None
    held = quota.grants_demand(allocation.grants, init_containers=init, sidecars=frozenset())
    assert quota.demand_on_card(request, card_mem) == held == state.quotas.used("t")
    smaller = quota.demand_on_card(request, card_mem - 1)
    assert smaller.mem <= held.mem
    assert smaller.cores == held.cores

"""Property tests: whatever the nodes and pods, a placement never exceeds a card and obeys filters."""

from __future__ import annotations

from extender_builders import gpu, node_json, state_with
from hami_scheduler_extender.core.fit import fit_pod, node_priority
from hami_scheduler_extender.core.model import DeviceGrant, PodAllocation, Policy
from hami_scheduler_extender.core.policy import GpuPolicy, ScoringWeights, SortKey
from hami_scheduler_extender.core.request import PlacementOptions, PodRequest, RequestDefaults, resolve_container
from hami_shared.quantity import GpuRequest
from hypothesis import given, settings
from hypothesis import strategies as st

TYPES = ("NVIDIA-Tesla T4", "NVIDIA A100-SXM4-80GB", "NVIDIA-Tesla V100-PCIE-32GB")

gpus = st.lists(
    st.builds(
        dict,
        count=st.integers(1, 10),
        devmem=st.integers(1000, 80000),
        devcore=st.sampled_from([100, 100, 200]),
        numa=st.integers(0, 1),
        health=st.sampled_from([True, True, True, False]),
        type=st.sampled_from(TYPES),
    ),
    min_size=1,
    max_size=8,
)

container_requests = st.builds(
    GpuRequest,
    count=st.one_of(st.none(), st.integers(0, 4)),
    memory=st.one_of(st.none(), st.integers(0, 40000)),
    memory_percentage=st.one_of(st.none(), st.integers(-5, 120)),
    cores=st.one_of(st.none(), st.integers(0, 120)),
)

options = st.builds(
    PlacementOptions,
    use_types=st.sampled_from([(), ("a100",), ("t4", "v100")]),
    nouse_types=st.sampled_from([(), ("t4",)]),
    numa_bind=st.booleans(),
    gpu_policy=st.sampled_from(list(Policy)),
    gpu_chain=st.sampled_from(
        [None, GpuPolicy(mutex=True), GpuPolicy(keys=(SortKey.NUMA, SortKey.BINPACK), topology_aware=True)]
    ),
    weights=st.sampled_from([ScoringWeights(), ScoringWeights(0, 0, 1), ScoringWeights(3, 1, 0)]),
)


def pod_request(
    requests: list[GpuRequest], init: int, opts: PlacementOptions, sidecars: frozenset[int] = frozenset()
) -> PodRequest:
    defaults = RequestDefaults()
    init = min(init, len(requests))
    return PodRequest(
        needs=tuple(resolve_container(r, defaults) for r in requests),
        init_containers=init,
        sidecars=frozenset(p for p in sidecars if p < init),
        options=opts,
    )


def running_sets(request: PodRequest) -> list[list[int]]:
    """Every set of the pod's containers that run at one moment, from Kubernetes' timeline (KEP-753) written
    out directly: a plain init container with the sidecars started before it; a sidecar as it starts, with the
    sidecars before it; the steady state, every sidecar and every app container."""
    n, init = len(request.needs), request.init_containers
    sets: list[list[int]] = []
    for position in range(init):
        before = [s for s in sorted(request.sidecars) if s < position]
        sets.append([*before, position])
    sets.append([*sorted(request.sidecars), *range(init, n)])
    return sets


@settings(max_examples=300, deadline=None)
@given(
    devices=gpus,
    pods=st.lists(
        st.tuples(
            st.lists(container_requests, min_size=1, max_size=4),
            st.integers(0, 3),
            options,
            st.frozensets(st.integers(0, 2)),
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_reservations_never_exceed_a_card(
    devices: list[dict[str, object]], pods: list[tuple[list[GpuRequest], int, PlacementOptions, frozenset[int]]]
) -> None:
    infos = [gpu(f"GPU-{i}", index=i, **d) for i, d in enumerate(devices)]  # type: ignore[arg-type]
    state = state_with(node_json("n1", infos))
    for number, (requests, init, opts, sidecars) in enumerate(pods):
        request = pod_request(requests, init, opts, sidecars)
        before = state.view("n1")
        assert before is not None
        allocation, result = state.reserve_fit(
            uid=f"u{number}", namespace="d", name=f"p{number}", node="n1", request=request, now=0.0
        )
        if not request.wants_gpu:
            continue
        if allocation is None:
            assert result is not None
            assert not result.fits
            assert result.reasons
            continue
        by_uuid = {d.uuid: d for d in before.devices}
        for need, grants in zip(request.needs, allocation.grants, strict=True):
            assert len(grants) == need.count
            assert len({g.uuid for g in grants}) == need.count  # distinct cards per container
            for grant in grants:
                device = by_uuid[grant.uuid]
                assert device.healthy
                assert not device.cordoned
                if opts.mutex:  # the card is the pod's alone: it is charged the whole of it
                    assert (grant.usedmem, grant.usedcores) == (device.total_mem, 100)
                else:
                    assert grant.usedmem == need.memory_on(device.total_mem)
                    assert grant.usedcores == need.cores
                if opts.use_types:
                    assert any(t in device.type.lower() for t in opts.use_types)
                assert not any(t in device.type.lower() for t in opts.nouse_types)
            if opts.numa_bind and need.count > 1:
                assert len({by_uuid[g.uuid].numa for g in grants}) == 1
        # At every moment of the pod's life, what runs at once fits each card beside the other pods.
        for running in running_sets(request):
            for uuid, device in by_uuid.items():
                on_card = [g for position in running for g in allocation.grants[position] if g.uuid == uuid]
                assert device.used + len(on_card) <= device.count
                assert device.used_mem + sum(g.usedmem for g in on_card) <= device.total_mem
                assert device.used_cores + sum(g.usedcores for g in on_card) <= device.total_cores
        after = state.view("n1")
        assert after is not None
        for d in after.devices:
            assert d.used <= d.count
            assert d.used_mem <= d.total_mem
            assert d.used_cores <= d.total_cores
            # A 100-core container is alone on its card.
        for grants in allocation.grants:
            for g in grants:
                if g.usedcores >= 100:
                    assert by_uuid[g.uuid].used == 0
        assert len(allocation.slots) == len(allocation.grants)


@settings(max_examples=200, deadline=None)
@given(devices=gpus, used=st.lists(st.integers(0, 5000), min_size=1, max_size=8), policy=st.sampled_from(list(Policy)))
def test_node_priority_is_within_range_and_monotone(
    devices: list[dict[str, object]], used: list[int], policy: Policy
) -> None:
    infos = [gpu(f"GPU-{i}", index=i, **d) for i, d in enumerate(devices)]  # type: ignore[arg-type]
    state = state_with(node_json("n1", infos))
    previous = None
    for number, mem in enumerate(used):
        view = state.view("n1")
        assert view is not None
        score = node_priority(view, policy)
        assert 0 <= score <= 10
        if previous is not None:
            # More usage never makes binpack like the node less, nor spread like it more.
            assert score >= previous if policy is Policy.BINPACK else score <= previous
        previous = score
        request = PodRequest(
            needs=(resolve_container(GpuRequest(count=1, memory=mem), RequestDefaults()),),
            init_containers=0,
            options=PlacementOptions(),
        )
        state.reserve_fit(uid=f"u{number}", namespace="d", name="p", node="n1", request=request, now=0.0)


@settings(max_examples=200, deadline=None)
@given(devices=gpus, request=container_requests, opts=options)
def test_fit_is_pure(devices: list[dict[str, object]], request: GpuRequest, opts: PlacementOptions) -> None:
    infos = [gpu(f"GPU-{i}", index=i, **d) for i, d in enumerate(devices)]  # type: ignore[arg-type]
    state = state_with(node_json("n1", infos))
    view = state.view("n1")
    assert view is not None
    pod = pod_request([request], 0, opts)
    assert fit_pod(view, pod) == fit_pod(view, pod)
    assert state.view("n1") is view


held = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 30000), st.sampled_from([0, 0, 10, 50, 100])), max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    nodes=st.lists(gpus, min_size=1, max_size=4),
    holds=held,
    request=container_requests,
    init=st.booleans(),
    opts=options,
    cordon=st.booleans(),
    unregistered=st.booleans(),
)
def test_vectorised_screen_equals_fit_pod(
    nodes: list[list[dict[str, object]]],
    holds: list[tuple[int, int, int]],
    request: GpuRequest,
    init: bool,
    opts: PlacementOptions,
    cordon: bool,
    unregistered: bool,
) -> None:
    """The column-store filter answers exactly as fit_pod, reasons and messages included."""
    node_objects = []
    for n, devices in enumerate(nodes):
        infos = [gpu(f"GPU-{n}-{i}", index=i, **d) for i, d in enumerate(devices)]  # type: ignore[arg-type]
        node_objects.append(
            node_json(
                f"n{n}",
                infos,
                cordon=[infos[0].id] if cordon and n == 0 else (),
                allocatable="0" if unregistered and n == len(nodes) - 1 else None,
            )
        )
    state = state_with(*node_objects)
    for number, (device, mem, cores) in enumerate(holds):
        n = number % len(nodes)
        uuid = f"GPU-{n}-{device % len(nodes[n])}"
        state.apply_pod(
            f"h{number}",
            PodAllocation(
                uid=f"h{number}",
                namespace="d",
                name="h",
                node=f"n{n}",
                grants=((DeviceGrant(uuid=uuid, usedmem=mem, usedcores=cores),),),
                exclusive=number % 3 == 0,  # every third a mutex pod's
            ),
        )
    pod = pod_request([GpuRequest(), request] if init else [request], 0, opts)
    names = [f"n{n}" for n in range(len(nodes))] + ["ghost"]
    screened = state.screen(names, pod)
    if not pod.wants_gpu or (opts.numa_bind and max(n.count for n in pod.needs) > 1):
        assert screened is None
        return
    assert screened is not None
    fits, failed, tally = screened
    for name in names[:-1]:
        view = state.view(name)
        assert view is not None
        expected = fit_pod(view, pod)
        assert (name in fits) == expected.fits
        if not expected.fits:
            assert failed[name] == expected.message
    assert failed["ghost"].startswith("node unregistered")
    assert sum(1 for name in names if name not in fits) <= sum(tally.values())
    scores = state.priorities(names, opts.gpu_policy)
    for name, score in zip(names, scores, strict=True):
        view = state.view(name)
        assert score == (node_priority(view, opts.gpu_policy) if view is not None else 0)

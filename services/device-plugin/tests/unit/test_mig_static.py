"""Static MIG (core/mig_static.py, app/mig_static.py): NVIDIA's strategies over instances an operator made by hand,
listed through the in-memory MIG driver double. ``single``: one ``nvidia.com/gpu`` per instance when every card is
partitioned alike, refused with what to change otherwise; ``mixed``: ``nvidia.com/mig-<profile>`` per profile, the
cards not in MIG mode stay shared; Allocate answers the instances kubelet chose, MIG UUIDs only."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hami_device_plugin.app.mig_static import StaticMig, StaticServicer, static_socket_name
from hami_device_plugin.core.allocation import DEVICE_LIST_ENVVAR, DEVICE_LIST_VOLUME_MOUNTS
from hami_device_plugin.core.inventory import Gpu
from hami_device_plugin.core.mig_device import MigInstance
from hami_device_plugin.core.mig_static import StaticCard, resource_name, static_allocation, static_plan
from hami_shared import names
from hypothesis import given
from hypothesis import strategies as st
from mig_double import MigDriverDouble

G0 = "GPU-00000000-0000-4000-8000-000000000000"
G1 = "GPU-11111111-1111-4000-8000-111111111111"
GPUS = (
    Gpu(uuid=G0, index=0, name="NVIDIA A100-SXM4-40GB", memory_mib=40960),
    Gpu(uuid=G1, index=1, name="NVIDIA A100-SXM4-40GB", memory_mib=40960),
)
GPU = "nvidia.com/gpu"


def partitioned(g0: list[tuple[int, int]], g1: list[tuple[int, int]] | None) -> MigDriverDouble:
    """Cards partitioned by hand: (NVML profile ID, start) per instance; None: G1 not in MIG mode."""
    driver = MigDriverDouble({G0: True, G1: True})
    for uuid, instances in ((G0, g0), (G1, g1)):
        if instances is None:
            continue
        driver.set_mig_mode(uuid, True)
        for profile_id, start in instances:
            driver.create_mig_instance(uuid, profile_id, start)
    return driver


def plan_of(driver: MigDriverDouble, strategy: str) -> Any:
    return StaticMig(
        driver=driver,
        gpus=lambda: GPUS,
        strategy=strategy,
        count_resource=GPU,
        device_list_strategies=frozenset({DEVICE_LIST_ENVVAR}),
    ).scan()


def test_single_advertises_every_instance_as_one_gpu() -> None:
    driver = partitioned([(14, 0), (14, 2), (14, 4)], [(14, 0)])
    plan = plan_of(driver, "single")
    assert plan.error is None
    assert [(d.parent_uuid, d.profile) for d in plan.resources[GPU]] == [(G0, "2g.10gb")] * 3 + [(G1, "2g.10gb")]
    assert [d.id for d in plan.resources[GPU]] == [i.mig_uuid for c in (G0, G1) for i in driver.mig_instances(c)]
    assert plan.partitioned == {G0, G1}


@pytest.mark.parametrize(
    ("g0", "g1", "why"),
    [
        ([(14, 0)], None, f"GPUs ['{G1}'] are not in MIG mode"),
        ([(14, 0)], [(19, 0)], "profiles ['1g.5gb', '2g.10gb']"),
    ],
)
def test_single_refuses_a_node_not_partitioned_alike_and_says_use_mixed(
    g0: list[tuple[int, int]], g1: list[tuple[int, int]] | None, why: str
) -> None:
    plan = plan_of(partitioned(g0, g1), "single")
    assert plan.resources == {}
    assert plan.error is not None
    assert why in plan.error
    assert "set migstrategy mixed" in plan.error


def test_mixed_names_a_resource_per_profile_and_leaves_plain_cards_shared() -> None:
    plan = plan_of(partitioned([(14, 0), (19, 4), (19, 5)], None), "mixed")
    assert {r: len(d) for r, d in plan.resources.items()} == {"nvidia.com/mig-1g.5gb": 2, "nvidia.com/mig-2g.10gb": 1}
    assert plan.partitioned == {G0}  # G1 keeps its hamicore shares and its register record
    assert resource_name("1g.5gb+me") == "nvidia.com/mig-1g.5gb.me"
    assert static_socket_name("nvidia.com/mig-1g.5gb") == "hami-nvidia-mig-1g.5gb.sock"


def test_none_and_a_node_without_mig_mode_advertise_nothing_static() -> None:
    assert plan_of(partitioned([(14, 0)], [(14, 0)]), "none").resources == {}
    assert static_plan([StaticCard(uuid=G0, mig_enabled=False)], "single", GPU).resources == {}


def test_allocate_answers_the_chosen_instances_and_refuses_one_gone() -> None:
    plan = plan_of(partitioned([(19, 0), (19, 1)], None), "mixed")
    devices = plan.resources["nvidia.com/mig-1g.5gb"]
    envs, mounts = static_allocation([devices[1].id], devices, frozenset({DEVICE_LIST_ENVVAR}))
    assert envs == {names.ENV_VISIBLE_DEVICES: devices[1].id}
    assert mounts == ()
    envs, mounts = static_allocation([d.id for d in devices], devices, frozenset({DEVICE_LIST_VOLUME_MOUNTS}))
    assert envs == {names.ENV_VISIBLE_DEVICES: "/var/run/nvidia-container-devices"}
    assert [m.container_path.rsplit("/", 1)[1] for m in mounts] == [d.id for d in devices]
    with pytest.raises(ValueError, match="not on this node any more"):
        static_allocation(["MIG-gone"], devices, frozenset({DEVICE_LIST_ENVVAR}))


class _Context:
    async def abort(self, code: object, details: str) -> None:
        raise RuntimeError(details)


class _Request:
    def __init__(self, ids: list[str]) -> None:
        self.container_requests = [type("C", (), {"devices_ids": ids})()]


async def test_the_servicer_lists_a_resource_and_follows_a_repartition() -> None:
    driver = partitioned([(19, 0)], None)
    static = StaticMig(
        driver=driver,
        gpus=lambda: GPUS,
        strategy="mixed",
        count_resource=GPU,
        device_list_strategies=frozenset({DEVICE_LIST_ENVVAR}),
    )
    static.set_plan(static.scan())
    stopping = asyncio.Event()
    servicer = StaticServicer(static, "nvidia.com/mig-1g.5gb", stopping)
    stream = servicer.ListAndWatch(None, _Context()).__aiter__()
    first = await stream.__anext__()
    assert [d.ID for d in first.devices] == [i.mig_uuid for i in driver.mig_instances(G0)]
    driver.create_mig_instance(G0, 19, 1)  # the operator adds an instance
    assert static.set_plan(static.scan())
    second = await asyncio.wait_for(stream.__anext__(), 5)
    assert len(second.devices) == 2
    answer = await servicer.Allocate(_Request([second.devices[1].ID]), _Context())
    assert dict(answer.container_responses[0].envs) == {names.ENV_VISIBLE_DEVICES: second.devices[1].ID}
    with pytest.raises(RuntimeError, match="not on this node"):
        await servicer.Allocate(_Request(["MIG-unknown"]), _Context())
    stopping.set()


@st.composite
def cards(draw: st.DrawFn) -> list[StaticCard]:
    out = []
    for n, uuid in enumerate((G0, G1, "GPU-22222222-2222-4000-8000-222222222222")):
        enabled = draw(st.booleans())
        instances = []
        if enabled:
            for k, profile in enumerate(
                draw(st.lists(st.sampled_from(["1g.5gb", "2g.10gb", "1g.5gb+me"]), max_size=3))
            ):
                instances.append(
                    MigInstance(
                        parent_uuid=uuid,
                        gpu_instance_id=k + 1,
                        compute_instance_id=0,
                        profile_id=0,
                        profile=profile,
                        start=k * 2,
                        size=2,
                        mig_uuid=f"MIG-{n}-{k}",
                        memory_mib=4864,
                    )
                )
        out.append(StaticCard(uuid=uuid, mig_enabled=enabled, instances=tuple(instances)))
    return out


@given(cards(), st.sampled_from(["single", "mixed"]))
def test_every_instance_is_advertised_once_under_its_profile_or_the_node_is_refused(
    node: list[StaticCard], strategy: str
) -> None:
    plan = static_plan(node, strategy, GPU)
    every = {i.mig_uuid: i for c in node for i in c.instances}
    advertised = [d for devices in plan.resources.values() for d in devices]
    if plan.error is not None:
        assert advertised == []
        return
    if any(c.mig_enabled for c in node):
        assert sorted(d.id for d in advertised) == sorted(every)
        assert plan.partitioned == {c.uuid for c in node if c.mig_enabled}
    for resource, devices in plan.resources.items():
        for d in devices:
            assert resource == (GPU if strategy == "single" else resource_name(every[d.id].profile))
    if strategy == "single" and advertised:
        assert all(c.mig_enabled for c in node)
        assert len({d.profile for d in advertised}) == 1

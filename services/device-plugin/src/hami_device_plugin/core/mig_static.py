"""Static MIG (``migstrategy: single | mixed``): MIG instances an operator made by hand, advertised as they are.

NVIDIA device plugin semantics (``--mig-strategy``):

* ``none``: MIG is not looked at; every GPU is shared through hamicore as usual.
* ``single``: every GPU of the node is in MIG mode and all its instances have one profile; each instance is one
  ``nvidia.com/gpu``. A node where some GPUs are not in MIG mode or the profiles differ is refused (the message says
  to use ``mixed``) and no instance is advertised; a node with no GPU in MIG mode behaves as ``none``.
* ``mixed``: each instance is one ``nvidia.com/mig-<profile>`` (``1g.5gb+me`` -> ``mig-1g.5gb.me``, NVIDIA's name);
  the GPUs not in MIG mode stay shared through hamicore under ``nvidia.com/gpu``.

These devices bypass hamicore (the instance is isolated by the hardware) and the scheduler extender: kubelet counts
them like any extended resource, the default scheduler places them, and Allocate answers with the instances kubelet
chose. The cards they live on are left out of ``hami.io/node-nvidia-register`` (HAMi advertises static MIG devices
as-is, outside its own inventory), so the extender never places a share on a partitioned card.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from hami_shared import names

from hami_device_plugin.core.allocation import (
    DEVICE_LIST_MOUNT_ROOT,
    DEVICE_LIST_MOUNT_SOURCE,
    DEVICE_LIST_VOLUME_MOUNTS,
    Mount,
)
from hami_device_plugin.core.config import MIG_STRATEGY_MIXED, MIG_STRATEGY_NONE, MIG_STRATEGY_SINGLE
from hami_device_plugin.core.mig_device import MigInstance

MIG_RESOURCE_PREFIX = "nvidia.com/mig-"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StaticCard:
    """A GPU as the static strategies see it."""

    uuid: str
    mig_enabled: bool
    instances: tuple[MigInstance, ...] = ()
    healthy: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class StaticDevice:
    """One MIG instance as a kubelet device: its ID is the MIG UUID (what NVIDIA_VISIBLE_DEVICES takes)."""

    id: str
    parent_uuid: str
    profile: str
    healthy: bool


@dataclasses.dataclass(frozen=True, slots=True)
class StaticPlan:
    resources: Mapping[str, tuple[StaticDevice, ...]] = dataclasses.field(default_factory=dict)
    """Resource name -> its devices, in card then placement order."""
    partitioned: frozenset[str] = frozenset()
    """Cards whose instances are advertised: not shared through hamicore, not in the register."""
    error: str | None = None


def resource_name(profile: str) -> str:
    """NVIDIA's resource of a profile under ``mixed``: ``nvidia.com/mig-1g.5gb``, ``nvidia.com/mig-1g.5gb.me``."""
    return MIG_RESOURCE_PREFIX + profile.replace("+", ".")


def _devices(cards: Sequence[StaticCard]) -> list[StaticDevice]:
    return [
        StaticDevice(id=i.mig_uuid, parent_uuid=c.uuid, profile=i.profile, healthy=c.healthy)
        for c in cards
        for i in sorted(c.instances, key=lambda i: i.start)
    ]


def static_plan(cards: Sequence[StaticCard], strategy: str, count_resource: str) -> StaticPlan:
    """What the node advertises for ``strategy``; ``count_resource`` is the plugin's own (``nvidia.com/gpu``)."""
    mig = [c for c in cards if c.mig_enabled]
    if strategy == MIG_STRATEGY_NONE or not mig:
        return StaticPlan()
    partitioned = frozenset(c.uuid for c in mig)
    if strategy == MIG_STRATEGY_SINGLE:
        plain = sorted(c.uuid for c in cards if not c.mig_enabled)
        profiles = sorted({i.profile for c in mig for i in c.instances})
        if plain or len(profiles) > 1:
            what = f"GPUs {plain} are not in MIG mode" if plain else f"the instances have profiles {profiles}"
            return StaticPlan(
                partitioned=partitioned,
                error=(
                    f"migstrategy single needs every GPU of the node in MIG mode with one instance profile, but "
                    f"{what}: partition them alike, or set migstrategy mixed"
                ),
            )
        return StaticPlan({count_resource: tuple(_devices(mig))}, partitioned)
    if strategy == MIG_STRATEGY_MIXED:
        resources: dict[str, list[StaticDevice]] = {}
        for device in _devices(mig):
            resources.setdefault(resource_name(device.profile), []).append(device)
        return StaticPlan({r: tuple(d) for r, d in sorted(resources.items())}, partitioned)
    raise ValueError(f"unknown MIG strategy {strategy!r}")


def static_allocation(
    device_ids: Sequence[str], known: Sequence[StaticDevice], strategies: frozenset[str]
) -> tuple[dict[str, str], tuple[Mount, ...]]:
    """Env and mounts for a container kubelet gave ``device_ids`` of a static resource (no hamicore). Raises
    ValueError for an ID that is not one of ``known`` (an instance destroyed since kubelet's last list)."""
    ids = {d.id for d in known}
    unknown = [d for d in device_ids if d not in ids]
    if unknown or not device_ids:
        raise ValueError(f"MIG devices {unknown[:8]} are not on this node any more (was the partition changed?)")
    if DEVICE_LIST_VOLUME_MOUNTS in strategies:
        mounts = tuple(Mount(f"{DEVICE_LIST_MOUNT_ROOT}/{d}", DEVICE_LIST_MOUNT_SOURCE, True) for d in device_ids)
        return {names.ENV_VISIBLE_DEVICES: DEVICE_LIST_MOUNT_ROOT}, mounts
    return {names.ENV_VISIBLE_DEVICES: ",".join(device_ids)}, ()

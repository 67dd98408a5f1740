"""An in-memory test double of the MIG driver port (adapters/nvml_mig.py ``MigDriver``), behaving like NVML on
A100-SXM4-40GB cards: the real GPU-instance profiles (``nvidia-smi mig -lgip``: IDs, memory, slices, SMs, legal
placements) and NVML's constraints, each refused with NVML's error string: MIG mode needed for profiles and
instances, MIG mode changes refused while instances exist, a placement that is not legal or overlaps an instance,
destroying an instance that does not exist, a card that is not MIG-capable."""

from __future__ import annotations

import dataclasses
import itertools

from hami_device_plugin.adapters.nvml import NvmlError
from hami_device_plugin.core.mig_device import GpuInstanceProfile, MigInstance
from hami_shared.node_register import MigPlacement


def _profile(
    pid: int, name: str, mem: int, slices: int, sms: int, count: int, starts: range, size: int
) -> GpuInstanceProfile:
    return GpuInstanceProfile(
        profile_id=pid,
        name=name,
        memory_mib=mem,
        slice_count=slices,
        multiprocessor_count=sms,
        instance_count=count,
        placements=tuple(MigPlacement(s, size) for s in starts),
    )


A100_40GB = (
    _profile(19, "1g.5gb", 4864, 1, 14, 7, range(7), 1),
    _profile(15, "1g.10gb", 9856, 1, 14, 4, range(0, 8, 2), 2),
    _profile(14, "2g.10gb", 9856, 2, 28, 3, range(0, 6, 2), 2),
    _profile(9, "3g.20gb", 19968, 3, 42, 2, range(0, 8, 4), 4),
    _profile(5, "4g.20gb", 19968, 4, 56, 1, range(1), 4),
    _profile(0, "7g.40gb", 40192, 7, 98, 1, range(1), 8),
)


@dataclasses.dataclass
class _Card:
    capable: bool = True
    mig: bool = False
    pending: bool = False
    reset_needed: bool = False
    instances: dict[int, MigInstance] = dataclasses.field(default_factory=dict)


class MigDriverDouble:
    """NVML's MIG calls over in-memory cards (see the module docstring). ``calls`` records the mutating calls;
    ``fail_create_at`` makes the n-th create (0-based) fail with NVML's out-of-resources error."""

    def __init__(self, cards: dict[str, bool], *, reset_needed: bool = False) -> None:
        """``cards``: UUID -> MIG-capable. ``reset_needed``: enabling MIG mode waits for a GPU reset."""
        self.cards = {uuid: _Card(capable=capable, reset_needed=reset_needed) for uuid, capable in cards.items()}
        self.calls: list[tuple[str, ...]] = []
        self.fail_create_at: int | None = None
        self._creates = 0
        self._ids = itertools.count(1)

    def _card(self, uuid: str) -> _Card:
        if uuid not in self.cards:
            raise NvmlError("Not Found")
        return self.cards[uuid]

    def _mig_card(self, uuid: str) -> _Card:
        card = self._card(uuid)
        if not card.capable:
            raise NvmlError("Not Supported")
        if not card.mig:
            raise NvmlError("Not Supported")  # profiles and instances need MIG mode on
        return card

    def mig_capable(self, uuid: str) -> bool:
        return self._card(uuid).capable

    def mig_mode(self, uuid: str) -> tuple[bool, bool]:
        card = self._card(uuid)
        if not card.capable:
            raise NvmlError("Not Supported")
        return card.mig, card.pending

    def set_mig_mode(self, uuid: str, enabled: bool) -> bool:
        card = self._card(uuid)
        if not card.capable:
            raise NvmlError("Not Supported")
        if card.instances:
            raise NvmlError("In use by another client")
        self.calls.append(("set_mig_mode", uuid, str(enabled)))
        card.pending = enabled
        if card.reset_needed:
            return card.mig == enabled
        card.mig = enabled
        return True

    def gpu_instance_profiles(self, uuid: str) -> tuple[GpuInstanceProfile, ...]:
        self._mig_card(uuid)
        return A100_40GB

    def mig_instances(self, uuid: str) -> tuple[MigInstance, ...]:
        card = self._card(uuid)
        if not card.capable or not card.mig:
            return ()
        return tuple(card.instances[k] for k in sorted(card.instances))

    def create_mig_instance(self, uuid: str, profile_id: int, start: int) -> MigInstance:
        card = self._mig_card(uuid)
        profile = next((p for p in A100_40GB if p.profile_id == profile_id), None)
        if profile is None:
            raise NvmlError("Invalid Argument")
        placement = next((p for p in profile.placements if p.start == start), None)
        if placement is None:
            raise NvmlError("Invalid Argument")
        for other in card.instances.values():
            if other.start < start + placement.size and start < other.start + other.size:
                raise NvmlError("Insufficient Resources")
        n, self._creates = self._creates, self._creates + 1
        if self.fail_create_at == n:
            raise NvmlError("Insufficient Resources")
        gi = next(self._ids)
        instance = MigInstance(
            parent_uuid=uuid,
            gpu_instance_id=gi,
            compute_instance_id=0,
            profile_id=profile_id,
            profile=profile.name,
            start=start,
            size=placement.size,
            mig_uuid=f"MIG-{uuid[4:12]}-{gi:04d}-4000-8000-{start:012d}",
            memory_mib=profile.memory_mib,
        )
        card.instances[gi] = instance
        self.calls.append(("create", uuid, profile.name, str(start)))
        return instance

    def destroy_mig_instance(self, uuid: str, gpu_instance_id: int) -> None:
        card = self._mig_card(uuid)
        if gpu_instance_id not in card.instances:
            raise NvmlError("Not Found")
        del card.instances[gpu_instance_id]
        self.calls.append(("destroy", uuid, str(gpu_instance_id)))

    def instances(self) -> list[tuple[str, str, int]]:
        """(card, profile, start) of every instance, sorted: what a test compares."""
        return sorted((i.parent_uuid, i.profile, i.start) for c in self.cards.values() for i in c.instances.values())

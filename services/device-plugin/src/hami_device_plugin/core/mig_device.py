"""What the device plugin knows of a MIG-capable GPU: its GPU-instance profiles and the instances on it.

Values only; NVML fills them (adapters/nvml_mig.py) and the MIG decisions read them (placement checks,
reconciliation of instances against pods' reservations). Sizes follow NVML: a profile's ``memory_mib`` is what
NVML reports for it (``nvmlGpuInstanceProfileInfo_t.memorySizeMB``), ``slice_count`` its compute slices, a
placement's ``start``/``size`` in memory slices (``nvmlGpuInstancePlacement_t``), as HAMi's register writes them.
"""

from __future__ import annotations

import dataclasses

from hami_shared.node_register import MigPlacement


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GpuInstanceProfile:
    """One GPU-instance profile of a card (``nvidia-smi mig -lgip``), e.g. ``2g.10gb``: NVML profile ID 14."""

    profile_id: int
    name: str  # without NVML's "MIG " prefix: "2g.10gb", "1g.5gb+me"
    memory_mib: int
    slice_count: int
    multiprocessor_count: int
    instance_count: int  # how many of it the card holds at most
    placements: tuple[MigPlacement, ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MigInstance:
    """A GPU instance with its compute instance, as NVML lists it (a MIG device)."""

    parent_uuid: str
    gpu_instance_id: int
    compute_instance_id: int
    profile_id: int
    profile: str
    start: int
    size: int
    mig_uuid: str  # "MIG-<uuid>", what NVIDIA_VISIBLE_DEVICES takes
    memory_mib: int

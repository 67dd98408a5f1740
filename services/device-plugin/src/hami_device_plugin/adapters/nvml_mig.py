"""The MIG part of the GPU driver port: MIG mode, GPU-instance profiles, and creating and destroying instances.

:class:`MigDriver` is what the plugin's MIG code needs from NVML; methods may block (call them from a worker
thread) and raise :class:`~hami_device_plugin.adapters.nvml.NvmlError` with NVML's own error string.
"""

from __future__ import annotations

from typing import Protocol

from hami_device_plugin.core.mig_device import GpuInstanceProfile, MigInstance


class MigDriver(Protocol):
    def mig_capable(self, uuid: str) -> bool:
        """True when the GPU supports MIG (NVML answers its MIG mode rather than NOT_SUPPORTED)."""
        ...

    def mig_mode(self, uuid: str) -> tuple[bool, bool]:
        """(current, pending) MIG mode: pending differs from current until the GPU is reset."""
        ...

    def set_mig_mode(self, uuid: str, enabled: bool) -> bool:
        """Ask for MIG mode on or off; True when it is in effect now, False when it waits for a GPU reset."""
        ...

    def gpu_instance_profiles(self, uuid: str) -> tuple[GpuInstanceProfile, ...]:
        """The GPU-instance profiles the card offers, with their legal placements (MIG mode must be on)."""
        ...

    def mig_instances(self, uuid: str) -> tuple[MigInstance, ...]:
        """Every GPU instance on the card with its compute instance (those without one are skipped)."""
        ...

    def create_mig_instance(self, uuid: str, profile_id: int, start: int) -> MigInstance:
        """Create the GPU instance of ``profile_id`` at placement ``start`` and one compute instance spanning it."""
        ...

    def destroy_mig_instance(self, uuid: str, gpu_instance_id: int) -> None:
        """Destroy the GPU instance's compute instances, then the GPU instance."""
        ...

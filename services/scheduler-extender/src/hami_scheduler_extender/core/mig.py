"""Dynamic MIG on one card: which instance a request gets, under HAMi v2.5's geometry semantics.

A MIG-mode card (register ``mode: mig``) offers profiles with legal placements (``migProfiles``); the operator
allows geometries for its model (``knownMigGeometries``, :func:`hami_shared.mig.geometries_for_type`). A
*layout* of a geometry is one legal way to place all its instances at once: each instance at a placement its
profile offers, no two sharing a memory slice. :class:`MigCard` precomputes the layouts of every geometry of
one (model, profiles) pair once, so a fit is a scan over a handful of frozensets.

Rules (:meth:`MigCard.choose`):

* The instances in use (the card's current geometry, implied by the pods that hold them) must be a subset of a
  layout: profile multiset contained in the geometry's, and at exactly those placements. So a busy card never
  switches geometry; an idle card (nothing in use) may take any realizable geometry.
* A free instance of such a layout fits a request of ``m`` MiB when its profile's memory (the geometry entry's)
  is at least ``m``.
* Least waste, in order: the instance's waste (profile memory - ``m``); then the geometry's waste (memory
  the geometry leaves unpartitioned on the card: the largest total of any realizable geometry of the card minus
  this geometry's total); then the geometry's position in the configuration; then the lowest start. The seed's
  example: 8000 MiB on an idle A100-40GB -> ``2g.10gb`` (waste 2240; ``1g.5gb`` is too small, ``3g.20gb``
  wastes 12480) inside ``2g.10gb x3 + 1g.5gb x1``, the only geometry offering it.

Geometries whose instances cannot all be placed legally on the card (a profile the card does not offer, or
too many instances for its placements) are unrealizable and skipped.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Collection, Iterator, Sequence
from typing import Final

from hami_shared.mig import GeometryEntry
from hami_shared.node_register import MigProfile

MAX_LAYOUTS: Final = 4096
"""Layouts kept per geometry; real cards have at most a few dozen (8 memory slices), this bounds odd inputs."""


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class MigInstance:
    """One MIG instance: a profile at a placement (first memory slice, number of slices)."""

    start: int
    size: int
    profile: str


@dataclasses.dataclass(frozen=True, slots=True)
class MigChoice:
    """The instance a request gets: ``memory`` is the profile's MiB; ``geometry`` the index in the config."""

    instance: MigInstance
    memory: int
    geometry: int


@dataclasses.dataclass(frozen=True, slots=True)
class GeometryLayouts:
    """One realizable geometry of a card: its position in the config, entries, and all its layouts."""

    index: int
    entries: tuple[GeometryEntry, ...]
    layouts: tuple[frozenset[MigInstance], ...]

    @property
    def total_memory(self) -> int:
        return sum(e.memory_mib * e.count for e in self.entries)

    def memory_of(self, profile: str) -> int:
        return next((e.memory_mib for e in self.entries if e.name == profile), 0)


def _overlaps(a: MigInstance, b: MigInstance) -> bool:
    return a.start < b.start + b.size and b.start < a.start + a.size


def _layouts(entries: Sequence[GeometryEntry], profiles: dict[str, MigProfile]) -> list[frozenset[MigInstance]]:
    """Every legal non-overlapping placement of all the geometry's instances (at most MAX_LAYOUTS)."""
    slots: list[list[MigInstance]] = []
    for entry in entries:
        profile = profiles.get(entry.name)
        if profile is None:
            return []
        legal = sorted({MigInstance(p.start, p.size, entry.name) for p in profile.placements if p.size > 0})
        if len(legal) < entry.count:
            return []
        slots.append(legal)
    out: list[frozenset[MigInstance]] = []

    def extend(k: int, chosen: list[MigInstance]) -> None:
        if len(out) >= MAX_LAYOUTS:
            return
        if k == len(entries):
            out.append(frozenset(chosen))
            return
        for combo in itertools.combinations(slots[k], entries[k].count):
            if any(_overlaps(a, b) for a, b in itertools.combinations(combo, 2)):
                continue
            if any(_overlaps(a, b) for a in combo for b in chosen):
                continue
            extend(k + 1, [*chosen, *combo])

    extend(0, [])
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class MigCard:
    """The realizable geometries of one (model, migProfiles) pair with their layouts; shared by every card of it."""

    geometries: tuple[GeometryLayouts, ...]
    full_memory: int = 0
    total_slices: int = 0

    @staticmethod
    def build(geometries: Sequence[Sequence[GeometryEntry]], profiles: Sequence[MigProfile]) -> MigCard:
        by_name = {p.name: p for p in profiles}
        realizable: list[GeometryLayouts] = []
        for index, entries in enumerate(geometries):
            layouts = _layouts(entries, by_name)
            if layouts:
                realizable.append(GeometryLayouts(index=index, entries=tuple(entries), layouts=tuple(layouts)))
        full = max((g.total_memory for g in realizable), default=0)
        slices = max((p.start + p.size for profile in profiles for p in profile.placements), default=0)
        return MigCard(geometries=tuple(realizable), full_memory=full, total_slices=slices)

    @property
    def max_instances(self) -> int:
        return max((sum(e.count for e in g.entries) for g in self.geometries), default=0)

    def _free(self, in_use: Collection[MigInstance]) -> Iterator[tuple[GeometryLayouts, MigInstance]]:
        """(geometry, free instance) of every layout compatible with the instances in use."""
        used = frozenset(in_use)
        if len(used) != len(in_use):
            return  # two holds on one placement: the card is inconsistent, it offers nothing
        for geometry in self.geometries:
            for layout in geometry.layouts:
                if used <= layout:
                    for instance in layout - used:
                        yield geometry, instance

    def choose(self, in_use: Collection[MigInstance], memory: int) -> MigChoice | None:
        """The least-waste free instance of at least ``memory`` MiB (module docstring), or None."""
        best: tuple[int, int, int, int] | None = None
        choice: MigChoice | None = None
        for geometry, instance in self._free(in_use):
            size = geometry.memory_of(instance.profile)
            if size < memory:
                continue
            key = (size - memory, self.full_memory - geometry.total_memory, geometry.index, instance.start)
            if best is None or key < best:
                best, choice = key, MigChoice(instance=instance, memory=size, geometry=geometry.index)
        return choice

    def max_free_memory(self, in_use: Collection[MigInstance]) -> int:
        """The largest free instance any compatible layout offers (0: none): a request fits iff it asks at most
        this much, which lets the vectorised filter decide MIG cards with one comparison."""
        return max((g.memory_of(i.profile) for g, i in self._free(in_use)), default=0)

    def geometry_in_use(self, in_use: Collection[MigInstance]) -> tuple[int, ...]:
        """Config positions of the geometries compatible with the instances in use (all when idle)."""
        return tuple(sorted({g.index for g, _ in self._free(in_use)}))

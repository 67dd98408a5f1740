"""ResourceQuota on GPU slices (HAMi v2.7+ semantics): what a namespace's GPU pods may hold, and the check.

A namespace's ResourceQuota bounds its GPU pods with ``limits.<memory resource>`` (MiB, e.g.
``limits.nvidia.com/gpumem``) and ``limits.<cores resource>`` (percent of a card, e.g.
``limits.nvidia.com/gpucores``); the resource names follow the configured ones (``ResourceNames``). A pod
counts what HAMi writes into its device list: per container and GPU, the MiB and cores it was granted, so
``gpumem: 3000`` with ``nvidia.com/gpu: 2`` counts 6000 MiB and ``gpucores: 30`` on two cards 60. A pod's
total is its peak, as HAMi's webhook counts it: the larger of all sidecars and app containers together, and
each plain init container with the sidecars started before it (``model.runs_alone``).

``gpumem-percentage`` resolves to MiB on the card the fit picks (a 50 % request counts 8000 on a 16 GiB
card, 40960 on an 80 GiB one), so its demand is known per node only: :func:`request_demand` returns
``None`` for such pods. :func:`demand_on_card` is exact for a node whose cards are alike and, being monotone
in the card size, bounds a node with mixed cards between its smallest and largest card; between the bounds
the caller checks the grants of the node's fit (:func:`grants_demand`).

Usage is the sum of the holds of the usage cache (bound pods from their annotations, reservations not yet
confirmed): :class:`QuotaLedger` is told of every hold that starts or ends, so it is restored with the
holds when the extender restarts and lists the pods again, a burst of reservations counts at once, and a
deleted or terminated pod stops counting when its hold ends.

Semantics beyond HAMi's, where HAMi has one value per namespace and resource: every ResourceQuota object
of the namespace is checked on its own (as kube-apiserver does for its own resources), so the smallest
limit binds; a limit of 0 admits no GPU memory (or cores) at all (Kubernetes' meaning, not "unset"). A
limit counts in the units pods ask in: ``gpumem`` limits are multiplied by the memory factor, as HAMi does.
A request that adds nothing to a resource is never refused on it (quota admission's rule), so lowering a
limit below the current usage refuses new pods that need that resource and evicts nobody.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from hami_shared.bounds import describe
from hami_shared.errors import MalformedInputError
from hami_shared.names import DEFAULT_RESOURCE_NAMES, ResourceNames
from hami_shared.quantity import MAX_QUANTITY_CHARS, whole_quantity

from hami_scheduler_extender.core.model import PodGrants, runs_alone
from hami_scheduler_extender.core.request import PodRequest

REASON: Final = "ResourceQuotaNotFit"
"""HAMi's failure reason for a pod that would exceed its namespace's quota."""
LIMITS_PREFIX: Final = "limits."
MAX_LIMIT: Final = 2**63 - 1
"""Largest limit kept (Kubernetes' int64 quantities); a larger one cannot bind anything and is clamped."""
MAX_HARD_ENTRIES: Final = 1024
"""Entries of ``spec.hard`` read per object (Kubernetes has no such bound; the real ones have a handful)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Demand:
    """GPU memory (MiB, after the memory factor) and cores (percent of a card) a pod holds or asks for."""

    mem: int = 0
    cores: int = 0

    def __add__(self, other: Demand) -> Demand:
        return Demand(self.mem + other.mem, self.cores + other.cores)

    def __sub__(self, other: Demand) -> Demand:
        return Demand(self.mem - other.mem, self.cores - other.cores)


NOTHING: Final = Demand()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QuotaSpec:
    """The GPU limits of one ResourceQuota object (``None``: the object does not limit that resource)."""

    namespace: str
    name: str
    mem: int | None = None
    cores: int | None = None

    @property
    def limits_gpu(self) -> bool:
        return self.mem is not None or self.cores is not None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QuotaRefusal:
    """Why a pod does not fit its namespace's quota; ``message`` is what filter answers for every node."""

    namespace: str
    quota: str
    resource: str
    used: int
    asked: int
    limit: int

    @property
    def message(self) -> str:
        return (
            f"{REASON}: ResourceQuota {self.namespace}/{self.quota} {self.resource}: used {self.used} + asked "
            f"{self.asked} > limit {self.limit}; delete pods of the namespace, ask for less, or raise the quota"
        )


# --- what pods hold and ask for ----------------------------------------------------------------------
def peak(amounts: Sequence[Demand], *, init_containers: int, sidecars: frozenset[int]) -> Demand:
    """A pod's total from per-container amounts (init containers first): per resource, the larger of all
    sidecars and app containers together and each plain init container with the sidecars before it."""
    running = NOTHING
    top = NOTHING
    for position, amount in enumerate(amounts):
        if runs_alone(position, init_containers=init_containers, sidecars=sidecars):
            alone = running + amount
            top = Demand(max(top.mem, alone.mem), max(top.cores, alone.cores))
        else:
            running = running + amount
    return Demand(max(top.mem, running.mem), max(top.cores, running.cores))


def grants_demand(grants: PodGrants, *, init_containers: int, sidecars: frozenset[int]) -> Demand:
    """What a placement holds against the quota: the MiB and cores written for each GPU of each container."""
    amounts = [Demand(sum(g.usedmem for g in container), sum(g.usedcores for g in container)) for container in grants]
    return peak(amounts, init_containers=init_containers, sidecars=sidecars)


def request_demand(request: PodRequest) -> Demand | None:
    """What ``request`` will hold wherever it lands, or ``None`` when it depends on the card: a container's memory
    is a percentage of it, or the pod is ``mutex`` (charged its cards whole, fit.py; then only a node's fit knows
    it: :func:`grants_demand`)."""
    if request.options.mutex:
        return None
    amounts: list[Demand] = []
    for need in request.needs:
        if need.count <= 0:
            amounts.append(NOTHING)
            continue
        if need.memory is None:
            return None
        amounts.append(Demand(need.memory * need.count, need.cores * need.count))
    return peak(amounts, init_containers=request.init_containers, sidecars=request.sidecars)


def demand_on_card(request: PodRequest, card_mem: int) -> Demand:
    """What ``request`` holds when every card it gets has ``card_mem`` MiB (percentages resolved on it, as the
    fit resolves them); monotone in ``card_mem``, so a node's smallest and largest card bound its demand."""
    mutex = request.options.mutex
    amounts = [
        (
            Demand(card_mem * need.count, 100 * need.count)
            if mutex
            else Demand(need.memory_on(card_mem) * need.count, need.cores * need.count)
        )
        if need.count > 0
        else NOTHING
        for need in request.needs
    ]
    return peak(amounts, init_containers=request.init_containers, sidecars=request.sidecars)


def fixed_demand(request: PodRequest) -> Demand:
    """The card-independent part of ``request``: cores and fixed memory of every container, percentages as 0
    MiB; exact for the cores, a lower bound of the memory any placement holds."""
    whole = request.options.mutex  # a mutex pod is charged 100 cores per card
    amounts = [
        Demand((need.memory or 0) * need.count, (100 if whole else need.cores) * need.count)
        if need.count > 0
        else NOTHING
        for need in request.needs
    ]
    return peak(amounts, init_containers=request.init_containers, sidecars=request.sidecars)


# --- ResourceQuota objects --------------------------------------------------------------------------------
def limit_quantity(value: object, *, key: str) -> int:
    """A ``spec.hard`` value as a whole number (Kubernetes' quantity grammar, ``hami_shared.quantity``), clamped to
    :data:`MAX_LIMIT`; :class:`MalformedInputError` for anything kube-apiserver would not have accepted for an
    extended resource."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MalformedInputError(key, describe(value), "a quota value must be a quantity such as '8000'")
    text = str(value).strip()
    if len(text) > MAX_QUANTITY_CHARS:
        raise MalformedInputError(key, text, f"a quantity is at most {MAX_QUANTITY_CHARS} characters")
    number = whole_quantity(text, where=key)
    if number < 0:
        raise MalformedInputError(key, text, "a quota limit must not be negative")
    return min(number, MAX_LIMIT)


def read_quota(obj: Mapping[str, Any], names: ResourceNames) -> QuotaSpec:
    """The GPU limits of a ResourceQuota object (JSON), from ``spec.hard`` (what HAMi reads: the apiserver's
    ``status.hard`` mirrors it only where its quota controller runs). :class:`MalformedInputError` when the
    object has no namespace or name, or a GPU limit cannot be read; other keys are not looked at."""
    metadata = obj.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(namespace, str) or not namespace or not isinstance(name, str) or not name:
        raise MalformedInputError("ResourceQuota", describe(metadata), "metadata needs a namespace and a name")
    namespace, name = namespace[:63], name[:253]
    spec = obj.get("spec")
    hard = spec.get("hard") if isinstance(spec, Mapping) else None
    if hard is None:
        return QuotaSpec(namespace=namespace, name=name)
    if not isinstance(hard, Mapping):
        raise MalformedInputError(f"ResourceQuota {namespace}/{name}", describe(hard), "spec.hard is not an object")
    if len(hard) > MAX_HARD_ENTRIES:
        raise MalformedInputError(
            f"ResourceQuota {namespace}/{name}", f"{len(hard)} entries", f"spec.hard has over {MAX_HARD_ENTRIES}"
        )
    limits: dict[str, int | None] = {"mem": None, "cores": None}
    for field, resource in (("mem", names.memory), ("cores", names.cores)):
        key = LIMITS_PREFIX + resource
        if key in hard:
            limits[field] = limit_quantity(hard[key], key=f"ResourceQuota {namespace}/{name} spec.hard[{key}]")
    return QuotaSpec(namespace=namespace, name=name, mem=limits["mem"], cores=limits["cores"])


# --- the ledger and the check ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NamespaceQuotaSample:
    """One line of the quota metrics: a namespace's usage of one resource and its binding limit (``None``:
    no quota limits it)."""

    namespace: str
    resource: str
    used: int
    limit: int | None


class QuotaLedger:
    """GPU usage per namespace (told by the usage cache as holds start and end) and the GPU ResourceQuotas.

    Mutable, one event loop only, no I/O; every method is O(quotas of one namespace) at most, except the
    snapshot for metrics."""

    def __init__(self, names: ResourceNames = DEFAULT_RESOURCE_NAMES) -> None:
        self._mem_key = LIMITS_PREFIX + names.memory
        self._cores_key = LIMITS_PREFIX + names.cores
        self._used: dict[str, Demand] = {}
        self._quotas: dict[str, dict[str, QuotaSpec]] = {}

    # usage
    def add(self, namespace: str, demand: Demand) -> None:
        if demand == NOTHING:
            return
        self._used[namespace] = self._used.get(namespace, NOTHING) + demand

    def remove(self, namespace: str, demand: Demand) -> None:
        if demand == NOTHING:
            return
        left = self._used.get(namespace, NOTHING) - demand
        if left == NOTHING:
            self._used.pop(namespace, None)
        else:
            self._used[namespace] = left

    def used(self, namespace: str) -> Demand:
        return self._used.get(namespace, NOTHING)

    # quota objects
    def upsert(self, spec: QuotaSpec) -> None:
        if not spec.limits_gpu:
            self.delete(spec.namespace, spec.name)
            return
        self._quotas.setdefault(spec.namespace, {})[spec.name] = spec

    def delete(self, namespace: str, name: str) -> None:
        quotas = self._quotas.get(namespace)
        if quotas is not None:
            quotas.pop(name, None)
            if not quotas:
                del self._quotas[namespace]

    def replace(self, specs: Iterable[QuotaSpec]) -> None:
        """After a (re-)list: ``specs`` are all the quotas there are."""
        self._quotas = {}
        for spec in specs:
            self.upsert(spec)

    def quotas(self, namespace: str) -> Sequence[QuotaSpec]:
        return tuple(self._quotas.get(namespace, {}).values())

    def limits_memory(self, namespace: str) -> bool:
        """Whether a quota of ``namespace`` limits GPU memory (percentage requests then need a per-node check)."""
        return any(q.mem is not None for q in self._quotas.get(namespace, {}).values())

    def check(
        self, namespace: str, demand: Demand, *, memory_factor: int = 1, held: Demand = NOTHING
    ) -> QuotaRefusal | None:
        """Whether a pod of ``namespace`` asking ``demand`` fits every quota of the namespace, with ``held``
        (the pod's own hold, if the usage already counts it) left out of the usage; the first quota it would
        exceed, memory first, otherwise."""
        quotas = self._quotas.get(namespace)
        if not quotas:
            return None
        used = self._used.get(namespace, NOTHING) - held
        for spec in quotas.values():
            if spec.mem is not None and demand.mem > 0:
                limit = spec.mem * memory_factor
                if used.mem + demand.mem > limit:
                    return QuotaRefusal(
                        namespace=namespace,
                        quota=spec.name,
                        resource=self._mem_key,
                        used=used.mem,
                        asked=demand.mem,
                        limit=limit,
                    )
            if spec.cores is not None and demand.cores > 0 and used.cores + demand.cores > spec.cores:
                return QuotaRefusal(
                    namespace=namespace,
                    quota=spec.name,
                    resource=self._cores_key,
                    used=used.cores,
                    asked=demand.cores,
                    limit=spec.cores,
                )
        return None

    def samples(self) -> Iterator[NamespaceQuotaSample]:
        """Per namespace with usage or a quota, and per resource: usage and the smallest limit (metrics)."""
        for namespace in sorted(set(self._used) | set(self._quotas)):
            used = self._used.get(namespace, NOTHING)
            specs = self._quotas.get(namespace, {}).values()
            mem_limits = [q.mem for q in specs if q.mem is not None]
            core_limits = [q.cores for q in specs if q.cores is not None]
            yield NamespaceQuotaSample(
                namespace=namespace,
                resource=self._mem_key.removeprefix(LIMITS_PREFIX),
                used=used.mem,
                limit=min(mem_limits, default=None),
            )
            yield NamespaceQuotaSample(
                namespace=namespace,
                resource=self._cores_key.removeprefix(LIMITS_PREFIX),
                used=used.cores,
                limit=min(core_limits, default=None),
            )

"""Which pod kubelet is admitting, decided from kubelet's own pod-resources List (no guess about its order).

kubelet (v1.34, ``HandlePodAdditions``) admits the pods it receives one at a time, adding each to its pod manager
just before; admission allocates the devices of the pod's containers one after the other, recording each
container's devices as soon as its plugin Allocate answered, and releases its lock around the calls to the plugin.
Its ``List`` returns the active pods, each regular container and restartable init container with the devices
recorded for it (plain init containers are not listed). So, while kubelet waits for our answer, every pod admitted
before has its devices recorded, pods later in the same batch are not listed yet, and the pod under admission is
listed with a container of ours that has none recorded.

:func:`pod_under_admission` finds that pod, with the pod cache saying which containers request our resource.
Exactly one: that is the pod. A listed pod the cache does not know yet may be the one: the caller waits for the
cache. Several, none, or no answer from kubelet: the caller falls back to the inference of
:mod:`hami_device_plugin.core.pods` and counts the reason.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

from hami_device_plugin.core.pods import Assignment, NoMatch, PodRecord, gpus_of, preferred_for
from hami_device_plugin.core.records import ContainerRecord, container_record

MAX_LISTED_PODS: Final = 5000
"""More pods than this in a List answer: the answer is not used (a node runs at most a few hundred)."""
MAX_LISTED_CONTAINERS: Final = 200
"""More containers than this in one listed pod: that answer is not used."""

# Why the pod under admission was not decided (metric label values; keep them few and fixed).
REASON_SEVERAL: Final = "several-pods-without-devices"
REASON_NONE: Final = "no-pod-without-devices"
REASON_UNKNOWN_POD: Final = "listed-pod-not-in-cache"
REASON_MALFORMED: Final = "malformed-answer"
# kubelet named the pod (metric reason of by=pod-resources): a new admission, or one of a container we served.
REASON_ADMITTING: Final = "admitting"
REASON_SERVED_AGAIN: Final = "served-again"
MATCHED_SERVED_AGAIN: Final = "served-again"
"""``Assignment.matched_by`` of a container answered again with the grant it was served."""


@dataclasses.dataclass(frozen=True, slots=True)
class ListedContainer:
    """One container of kubelet's List answer: its name and the device IDs of OUR resource recorded for it."""

    name: str
    devices: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ListedPod:
    """One pod of kubelet's List answer (v1 names pods by namespace and name; there is no UID)."""

    namespace: str
    name: str
    containers: tuple[ListedContainer, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class Admitting:
    """kubelet is admitting ``pod`` (whether or not it is a candidate: Allocate then says why not)."""

    pod: PodRecord
    unrecorded: tuple[str, ...] = ()
    """The listed containers of ``pod`` that request our resource and have no devices recorded, in List order."""


@dataclasses.dataclass(frozen=True, slots=True)
class Undecided:
    """The List answer does not name the pod; ``reason`` is a metric label, ``detail`` goes to the log."""

    reason: str
    detail: str
    wait: bool = False
    """True: a listed pod is not in the pod cache yet; the answer may decide once the cache has it."""


def _requests_ours(pod: PodRecord, container: str) -> bool:
    return any(c.name == container and (c.gpu_count or 0) > 0 for c in pod.containers)


def _lacks_devices(pod: PodRecord, listed: ListedPod) -> bool | None:
    """True: a listed container of ``pod`` requests our resource and kubelet recorded none of it for it. False:
    every such container has its devices. None: no listed container requests it (only plain init containers
    do, which List leaves out) or the cache could not read the pod: undecided by the listing alone."""
    if pod.problem is not None and not pod.containers:
        return None
    requesting = [c for c in listed.containers if _requests_ours(pod, c.name)]
    if requesting:
        return any(not c.devices for c in requesting)
    init_only = any(c.init and (c.gpu_count or 0) > 0 for c in pod.containers)
    return None if init_only else False


def pod_under_admission(
    listed: Sequence[ListedPod], records: Iterable[PodRecord], claimed: Iterable[tuple[str, int]] = ()
) -> Admitting | Undecided:
    """The pod kubelet is admitting while it waits for GetPreferredAllocation or Allocate, from its List answer
    ``listed`` (devices of our resource only) and the pod cache's ``records`` of this node."""
    if len(listed) > MAX_LISTED_PODS or any(len(p.containers) > MAX_LISTED_CONTAINERS for p in listed):
        return Undecided(REASON_MALFORMED, f"the answer lists {len(listed)} pods or a pod with too many containers")
    by_key: dict[str, list[PodRecord]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(record)
    claimed_set = frozenset(claimed)
    admitting: list[tuple[PodRecord, ListedPod]] = []
    unknown: list[str] = []
    for entry in listed:
        known = by_key.get(entry.key)
        if not known:
            # Not in the cache yet. With devices of ours recorded it was admitted before; else it may be the one.
            if not any(c.devices for c in entry.containers):
                unknown.append(entry.key)
            continue
        # A listed container of ours without devices: kubelet is admitting the pod, whatever the plugin did before
        # (a restarted kubelet that lost a pod's device record allocates again: Allocate must then refuse that
        # pod, never serve it another pod's grant). Unknowable from the listing (plain init containers only):
        # only while the pod has a container left to allocate.
        matches = [
            r
            for r in known
            if (lacks := _lacks_devices(r, entry)) is True or (lacks is None and _has_pending(r, claimed_set))
        ]
        # The API server holds one pod per name; the cache may briefly hold a deleted one beside its successor.
        alive = [r for r in matches if not r.deleting]
        admitting.extend((r, entry) for r in alive or matches)
    if len(admitting) == 1 and not unknown:
        pod, entry = admitting[0]
        return Admitting(pod, tuple(c.name for c in entry.containers if not c.devices and _requests_ours(pod, c.name)))
    if unknown and len(admitting) <= 1:
        return Undecided(
            REASON_UNKNOWN_POD, f"kubelet lists pods the pod cache does not have yet: {', '.join(unknown[:5])}", True
        )
    if admitting:
        keys = ", ".join(p.key for p, _ in admitting[:5])
        return Undecided(REASON_SEVERAL, f"{len(admitting)} listed pods request GPUs and have none recorded: {keys}")
    return Undecided(REASON_NONE, "no listed pod requests GPUs without having them recorded")


def _has_pending(pod: PodRecord, claimed: frozenset[tuple[str, int]]) -> bool:
    """A pod whose every GPU container is known to be allocated is not under admission, whatever kubelet's
    listing shows: a pod that requests our resource but has no placement left (allocated by an earlier run
    of kubelet or the plugin) has nothing left to admit. A pod with no placement at all (not ours, refused) is
    kept: kubelet may be admitting it, and Allocate must then refuse it rather than serve another pod."""
    if not pod.to_allocate:
        return True
    return bool(pod.pending_positions(claimed)) or pod.problem is not None


def container_under_admission(decision: Admitting) -> int | None:
    """The position in ``decision.pod`` of the container kubelet is allocating: the first listed container of
    ours without devices (kubelet allocates a pod's containers in order and records each as soon as it is
    answered). None where the listing cannot tell: no such container, or the pod has init containers of ours,
    which List does not show (plain ones) while kubelet allocates them first."""
    pod = decision.pod
    if not decision.unrecorded or any(c.init and (c.gpu_count or 0) > 0 for c in pod.containers):
        return None
    for position, container in enumerate(pod.containers):
        if container.name == decision.unrecorded[0]:
            return position
    return None


def served_again(
    pod: PodRecord, position: int, device_ids: Sequence[str], recorded: ContainerRecord | None = None
) -> Assignment | NoMatch:
    """The grant of container ``position`` of ``pod``, which the plugin already served and kubelet (named by its
    own List) allocates again: a kubelet restarted before it checkpointed our answer. The same grant, only where
    kubelet asks for the same devices: its slot IDs, or other replicas of the same physical GPUs; else refused,
    never a grant of other GPUs. ``recorded``: the plugin's own record of what it served; a grant that differs
    from it (the pod's annotation edited since) is refused."""
    container = pod.containers[position]
    grant = pod.allocated[position] if position < len(pod.allocated) else ()
    if not grant:
        return NoMatch(
            f"kubelet allocates again container {container.name!r} of pod {pod.key}, which this plugin already "
            "served, and the pod records no grant for it to serve again"
        )
    if recorded is not None and recorded != container_record(pod, container, grant):
        return NoMatch(
            f"kubelet allocates again container {container.name!r} of pod {pod.key}, and the pod's grant differs "
            "from what this plugin served it"
        )
    slots = pod.slots_of(position)
    same_slots = bool(slots) and len(slots) == len(device_ids) and set(slots) == set(device_ids)
    if same_slots or gpus_of(device_ids) == Counter(d.uuid for d in grant):
        return Assignment(pod, position, grant, MATCHED_SERVED_AGAIN)
    return NoMatch(
        f"kubelet allocates again container {container.name!r} of pod {pod.key}, which this plugin already served "
        f"on GPUs {','.join(d.uuid for d in grant)}, with devices {','.join(sorted(device_ids))} of other GPUs"
    )


def served_again_preferred(
    pod: PodRecord, position: int, available: Sequence[str], must_include: Sequence[str], size: int
) -> tuple[str, ...] | None:
    """The devices to prefer for container ``position`` of ``pod`` allocated again: its own slots, else other free
    replicas of its granted GPUs; None: neither fits kubelet's request (the caller answers as for any pod)."""
    grant = pod.allocated[position] if position < len(pod.allocated) else ()
    return preferred_for(pod.slots_of(position), [d.uuid for d in grant], available, must_include, size)

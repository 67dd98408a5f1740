"""Pure decisions about the containers the plugin has claimed: the pod patch that records them, and which
containers an earlier run of the plugin had served (after a restart).

A claim is ``(pod UID, container position)``: the plugin answered kubelet's Allocate for that container. The
pod's to-allocate annotation is then written with every claimed entry emptied; when none is left the pod's
bind-phase becomes ``success`` (and HAMi's node label rides on that patch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping

from hami_shared import names
from hami_shared.bind import BindPhase
from hami_shared.pod_devices import consume_container, encode_pod_devices

from hami_device_plugin.core.allocation import container_dir_name
from hami_device_plugin.core.pods import PodRecord

Claimed = Collection[tuple[str, int]]


@dataclasses.dataclass(frozen=True, slots=True)
class PodKey:
    """Which pod a patch is for: its UID (a re-created pod is another one), shown as ``namespace/name``."""

    uid: str
    pod: str

    def __str__(self) -> str:
        return self.pod


@dataclasses.dataclass(frozen=True, slots=True)
class PodPatch:
    """Metadata to merge-patch onto one pod; later values of a key win."""

    namespace: str
    name: str
    annotations: Mapping[str, str]
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @staticmethod
    def of(pod: PodRecord, annotations: Mapping[str, str], labels: Mapping[str, str] | None = None) -> PodPatch:
        return PodPatch(pod.namespace, pod.name, annotations, labels or {})

    def then(self, newer: PodPatch) -> PodPatch:
        return dataclasses.replace(
            self, annotations={**self.annotations, **newer.annotations}, labels={**self.labels, **newer.labels}
        )


def consumed_patch(pod: PodRecord, claimed: Claimed, node: str) -> tuple[PodPatch, bool]:
    """The pod's to-allocate list with every claimed entry emptied; True when none is left (bind-phase success)."""
    remaining = pod.to_allocate
    for position in range(len(remaining)):
        if (pod.uid, position) in claimed and remaining[position]:
            remaining = consume_container(remaining, position)
    annotations = {names.DEVICES_TO_ALLOCATE: encode_pod_devices(remaining)}
    labels: dict[str, str] = {}
    done = not any(remaining)
    if done:
        annotations[names.BIND_PHASE] = BindPhase.SUCCESS.value
        # HAMi's label, which its vGPU monitor selects a node's pods by; written with the success patch so
        # that the scheduler extender (which adds it where a device plugin does not) has nothing to write.
        if len(node) <= names.LABEL_VALUE_MAX:
            labels[names.VGPU_NODE] = node
    return PodPatch.of(pod, annotations, labels), done


def served_before(pod: PodRecord, claimed: Claimed, container_dirs: Collection[str]) -> tuple[int, ...]:
    """Positions of the pod's pending containers whose directory (``<podUID>_<container>``) an earlier run of the
    plugin created: kubelet will not call Allocate for them again."""
    pending = pod.pending_positions(claimed)
    return tuple(p for p in pending if container_dir_name(pod.uid, pod.containers[p].name) in container_dirs)

"""Pod identification: which pod and container kubelet's GetPreferredAllocation and Allocate are for.

kubelet's pod-resources List names the pod it is admitting (core/admission.py decides from it); without that
answer the pod cache alone decides (core/pods.py infers from the devices asked for). Both wait, up to a
deadline, for the pod watch to catch up with kubelet. Every outcome of the List is counted with its reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from hami_shared.logging import get_logger

from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.adapters.podresources import PodResourcesClient, PodResourcesError
from hami_device_plugin.app.claims import Claims
from hami_device_plugin.app.health import DeviceHealth
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.core.admission import (
    REASON_ADMITTING,
    REASON_SERVED_AGAIN,
    Admitting,
    container_under_admission,
    pod_under_admission,
    served_again,
    served_again_preferred,
)
from hami_device_plugin.core.allocation import container_dir_name
from hami_device_plugin.core.pods import (
    Assignment,
    NoMatch,
    PodRecord,
    Preference,
    candidates,
    identify,
    preferred_devices,
)

log = get_logger(__name__)

PREFERRED_WAIT_S = 1.0


class PodIdentifier:
    """Answers "which pod, which container" for the kubelet requests of one node."""

    def __init__(
        self,
        *,
        node: str,
        pods: PodCache,
        health: DeviceHealth,
        claims: Claims,
        metrics: PluginMetrics,
        clock: Callable[[], float],
        pod_resources: PodResourcesClient | None = None,
    ) -> None:
        """``pod_resources``: kubelet's pod-resources API (None: not asked; the inference decides)."""
        self._node, self._pods, self._health, self._claims = node, pods, health, claims
        self._metrics, self._clock, self._pod_resources = metrics, clock, pod_resources

    async def preferred(
        self, available: list[str], must_include: list[str], size: int, fallback: Preference | None = None
    ) -> tuple[str, ...]:
        """``fallback``: the choice when no scheduled container names the devices (core/pods.py)."""
        deadline = self._clock() + PREFERRED_WAIT_S
        claimed = self._claims.held
        decision = await self._pod_under_admission("preferred", deadline)
        if decision is not None:
            again = self._served_again(decision)
            if again is not None:
                chosen = served_again_preferred(decision.pod, again, available, must_include, size)
                if chosen is not None:
                    return chosen
            pods: Iterable[PodRecord] = [decision.pod]
        else:
            # kubelet may ask before the pod's binding reaches our watch: wait for a candidate, briefly (the
            # answer is advisory; Allocate still matches whatever kubelet then picks).
            while not candidates(self._pods.records(), self._node, claimed, self._health.placement_policy()):
                generation = self._pods.generation
                remaining = deadline - self._clock()
                if remaining <= 0 or not await self._pods.wait_for_change(generation, remaining):
                    break
            pods = self._pods.records()
        policy = self._health.placement_policy()
        return preferred_devices(pods, self._node, available, must_include, size, claimed, policy, fallback)

    async def identify(self, device_ids: list[str], deadline: float) -> Assignment | NoMatch:
        """The container these devices are for, or why none is (logged)."""
        decision = await self._pod_under_admission("allocate", deadline)
        again = None if decision is None else self._served_again(decision)
        if decision is not None and again is not None:
            # kubelet itself names the pod and the container it allocates, which we served already: the same grant
            # or nothing (never a pending container's grant, never a guess).
            pod = self._pods.get(decision.pod.uid) or decision.pod
            recorded = self._claims.recorded(container_dir_name(pod.uid, pod.containers[again].name))
            result = served_again(pod, again, device_ids, recorded)
        else:
            while True:
                generation = self._pods.generation
                # kubelet named the pod: match its containers only, with its latest record (never another pod's).
                admitting = None if decision is None else self._pods.get(decision.pod.uid) or decision.pod
                pods: Iterable[PodRecord] = self._pods.records() if admitting is None else [admitting]
                policy = self._health.placement_policy()
                result = identify(pods, self._node, device_ids, self._claims.held, policy)
                remaining = deadline - self._clock()
                if isinstance(result, Assignment) or remaining <= 0:
                    break
                await self._pods.wait_for_change(generation, remaining)
        if isinstance(result, NoMatch):
            log.warning("allocate_no_match", devices=device_ids, reason=result.reason)
        return result

    def _served_again(self, decision: Admitting) -> int | None:
        """The position of the container kubelet allocates in the pod it named, when the plugin served that
        container already (claimed by this run, or its directory on the host from an earlier one); else None."""
        position = container_under_admission(decision)
        if position is None:
            return None
        pod = decision.pod
        if (pod.uid, position) in self._claims.held:
            return position
        regions = self._health.injection.regions_dir
        return position if Path(regions, container_dir_name(pod.uid, pod.containers[position].name)).is_dir() else None

    async def _pod_under_admission(self, rpc: str, deadline: float) -> Admitting | None:
        """The pod kubelet is admitting, from its pod-resources List (core/admission.py); None: undecided, the
        caller infers it from the pod cache alone. Every outcome is counted with its reason."""
        if self._pod_resources is None:
            return None
        try:
            listed = await self._pod_resources.list()
        except PodResourcesError as exc:
            self._metrics.identifications.labels(rpc, "inference", exc.reason).inc()
            log.warning("pod_resources_unavailable", rpc=rpc, reason=exc.reason, error=str(exc))
            return None
        # kubelet waits for this answer: its pods and their devices stay as listed, only the cache may catch up.
        while True:
            generation = self._pods.generation
            decision = pod_under_admission(listed, self._pods.records(), self._claims.held)
            if isinstance(decision, Admitting):
                again = self._served_again(decision)
                reason = REASON_ADMITTING if again is None else REASON_SERVED_AGAIN
                self._metrics.identifications.labels(rpc, "pod-resources", reason).inc()
                if again is not None:
                    container = decision.pod.containers[again].name
                    log.info("pod_served_again", rpc=rpc, pod=decision.pod.key, container=container)
                return decision
            remaining = deadline - self._clock()
            if not decision.wait or remaining <= 0:
                self._metrics.identifications.labels(rpc, "inference", decision.reason).inc()
                log.warning("pod_under_admission_undecided", rpc=rpc, reason=decision.reason, detail=decision.detail)
                return None
            await self._pods.wait_for_change(generation, remaining)

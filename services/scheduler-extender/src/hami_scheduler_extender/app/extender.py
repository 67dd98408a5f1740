"""The three extender verbs over the usage cache: filter, prioritize and bind (kube-scheduler extender v1).

Filter and prioritize are synchronous passes over immutable node views (no await inside), so each sees one
consistent state. Bind commits a placement: it reserves in the cache (fit and hold in one atomic call), then
creates one Binding carrying the placement annotations, which the API server writes with ``spec.nodeName``;
a refused Binding wrote nothing and releases the hold.

Only kube-scheduler may call the verbs (``cli``: loopback or mutual TLS), but they assume nothing of their
caller: a filter never drops a hold, a bind re-checks the fit of the pod it reads and takes GPUs only for
pods of a scheduler name we serve, one bind per pod at a time, and malformed arguments get HTTP 400.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import heapq
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hami_shared.errors import MalformedInputError
from hami_shared.logging import get_logger
from hami_shared.names import KUBE_DEFAULT_SCHEDULER, SCHEDULER_NAME, ResourceNames
from hami_shared.quantity import pod_gpu_requests
from hami_shared.service.kube import KubeError

from hami_scheduler_extender.app.metrics import ExtenderMetrics
from hami_scheduler_extender.app.ports import KubePort
from hami_scheduler_extender.core import commit, events, fit, objects, quota
from hami_scheduler_extender.core.commit import NO_METADATA, BindingMetadata
from hami_scheduler_extender.core.model import FailureReason, PodAllocation, Policy
from hami_scheduler_extender.core.policy import GpuPolicy
from hami_scheduler_extender.core.request import PodRequest, RequestDefaults, resolve_pod
from hami_scheduler_extender.core.state import ClusterState, PendingHoldsFull

log = get_logger(__name__)

PENDING_CACHE_SIZE = 4096
"""Pods remembered from filter for prioritize and bind (small records, oldest dropped first)."""


class BadRequest(Exception):
    """The extender arguments are malformed (answered with HTTP 400)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ExtenderConfig:
    names: ResourceNames
    defaults: RequestDefaults
    node_policy: Policy
    gpu_policy: Policy
    success_events: bool = True
    gpu_chain: GpuPolicy | None = None  # the default chain when more than gpu_policy (settings.gpu_scheduler_policy)
    event_limits: events.EventLimits = dataclasses.field(default_factory=events.EventLimits)
    node_label: bool = True
    scheduler_names: frozenset[str] = frozenset({SCHEDULER_NAME})
    filter_best_nodes: int = 0
    """0: filter answers every fitting node (kube-scheduler then calls prioritize); N > 0: only the N fitting nodes
    prioritize would score highest, as HAMi's filter does with N = 1 (the service's setting defaults to 1; README,
    "Throughput")."""

    @property
    def trust(self) -> objects.PlacementTrust:
        return objects.PlacementTrust.of(self.scheduler_names, self.names)


@dataclasses.dataclass(frozen=True, slots=True)
class _Filtered:
    """What filter saw of a pod, kept for prioritize and bind (not the pod object: bounded size)."""

    namespace: str
    name: str
    resource_version: str
    node_name: str
    scheduler_name: str
    request: PodRequest


class Extender:
    """Filter/prioritize/bind. ``ready`` says whether caches are synced and we may decide."""

    def __init__(
        self,
        *,
        state: ClusterState,
        kube: KubePort,
        config: ExtenderConfig,
        metrics: ExtenderMetrics,
        ready: Callable[[], str | None],
        leading: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._kube = kube
        self._config = config
        self._metrics = metrics
        self._ready = ready
        self._leading = leading
        self._clock = clock
        # Pods seen by filter with their resolved request, by UID, so prioritize and bind usually
        # resolve nothing and bind needs no GET. Bounded, oldest dropped.
        self._pending: collections.OrderedDict[str, _Filtered] = collections.OrderedDict()
        self._binding: set[str] = set()  # UIDs whose bind is in progress
        self._trust = config.trust
        self._event_gate = events.EventGate(config.event_limits, now=clock())

    @property
    def state(self) -> ClusterState:
        return self._state

    @property
    def config(self) -> ExtenderConfig:
        return self._config

    @property
    def metrics(self) -> ExtenderMetrics:
        return self._metrics

    def readiness(self) -> str | None:
        """``None`` when the caches are synced (and we lead), else why the verbs cannot decide."""
        return self._ready()

    # --- parsing ------------------------------------------------------------------------------
    def _resolve(self, pod: Mapping[str, Any]) -> PodRequest:
        spec = pod.get("spec")
        if not isinstance(spec, Mapping):
            raise MalformedInputError("Pod", repr(spec)[:100], "pod has no 'spec' object")
        return resolve_pod(
            pod_gpu_requests(spec, self._config.names),
            objects.annotations_of(pod),
            defaults=self._config.defaults,
            node_policy=self._config.node_policy,
            gpu_policy=self._config.gpu_policy,
            gpu_chain=self._config.gpu_chain,
        )

    @staticmethod
    def _candidates(args: Mapping[str, Any]) -> tuple[list[str], list[Mapping[str, Any]] | None]:
        """Node names from ``NodeNames`` (nodeCacheCapable) or from ``Nodes.items``."""
        node_names = args.get("NodeNames")
        if node_names is not None:
            # set(map(type)) runs in C: this check is on the hot path of every request.
            if not isinstance(node_names, list) or not set(map(type, node_names)) <= {str}:
                raise BadRequest("'NodeNames' must be a list of node name strings")
            return node_names, None
        nodes = args.get("Nodes")
        if nodes is None:
            return [], None
        items = nodes.get("items") if isinstance(nodes, Mapping) else None
        if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
            raise BadRequest("'Nodes' must be a NodeList object with an 'items' list")
        return [objects.node_name(i) for i in items], items

    @staticmethod
    def _pod(args: Any) -> Mapping[str, Any]:
        if not isinstance(args, Mapping):
            raise BadRequest("the request body must be a JSON object (ExtenderArgs)")
        pod = args.get("Pod")
        if not isinstance(pod, Mapping) or not isinstance(pod.get("metadata"), Mapping):
            raise BadRequest("'Pod' must be a Pod object with 'metadata'")
        return pod

    # --- filter -------------------------------------------------------------------------------
    def filter(self, args: Any) -> dict[str, Any]:
        pod = self._pod(args)
        candidates, node_objects = self._candidates(args)
        not_ready = self._ready()
        if not_ready:
            self._metrics.decisions.labels(verb="filter", result="error").inc()
            return {"NodeNames": None, "FailedNodes": {}, "Error": not_ready}
        identity = objects.pod_identity(pod)
        try:
            request = self._resolve(pod)
        except MalformedInputError as exc:
            message = f"pod cannot be placed: {exc}"
            self._metrics.decisions.labels(verb="filter", result="unresolvable").inc()
            self._event(identity, "Warning", events.FILTERING_FAILED, message)
            return self._filter_result([], node_objects, {}, dict.fromkeys(candidates, message))
        if not request.wants_gpu:
            self._metrics.decisions.labels(verb="filter", result="no-gpu").inc()
            return self._filter_result(candidates, node_objects, {}, {})
        scheduler = _scheduler_name(pod)
        if scheduler not in self._trust.scheduler_names:
            message = (
                f"pod cannot be placed: its spec.schedulerName is {scheduler!r}, not one this extender serves "
                f"({', '.join(sorted(self._trust.scheduler_names))}); set spec.schedulerName to one of them"
            )
            self._metrics.decisions.labels(verb="filter", result="unresolvable").inc()
            self._event(identity, "Warning", events.FILTERING_FAILED, message)
            return self._filter_result([], node_objects, {}, dict.fromkeys(candidates, message))
        # A pod filtered again is not bound: an unconfirmed hold it still has (an earlier bind without
        # an answer) must not count against itself. The hold itself stays: this request may not come
        # from kube-scheduler's retry of this very pod, and dropping it could double-book its GPUs.
        with self._own_hold_aside(identity):
            refused, per_node = self._quota_gate(identity.namespace, request)
            screened = self._state.screen(candidates, request) if refused is None else None
            if refused is not None:
                fits: list[str] = []
                failed = dict.fromkeys(candidates, refused)
                tally = collections.Counter({quota.REASON: len(candidates)})
            elif screened is not None:
                fits, failed, tally = screened
            else:
                fits, failed, tally = self._fit_each(candidates, request)
            if per_node:
                fits = self._quota_per_node(identity.namespace, request, fits, failed, tally)
        for reason, count in tally.items():
            self._metrics.filter_failures.labels(reason=reason).inc(count)
        self._metrics.decisions.labels(verb="filter", result="fit" if fits else "no-fit").inc()
        if identity.uid:
            self._remember(identity, pod, request)
        if not fits and candidates:
            if refused is not None:
                # The quota refusal names the quota, the resource and the numbers: say that, not the tally.
                self._event(identity, "Warning", events.FILTERING_FAILED, refused)
            else:
                self._event(
                    identity,
                    "Warning",
                    events.FILTERING_FAILED,
                    lambda: events.filtering_failed(len(candidates), tally),
                )
        elif fits and self._config.success_events:
            self._event(
                identity, "Normal", events.FILTERING_SUCCEED, lambda: self._filtering_succeed(candidates, fits, request)
            )
        return self._filter_result(self._best(fits, request), node_objects, failed, {})

    def _best(self, fits: list[str], request: PodRequest) -> list[str]:
        """With ``filter_best_nodes`` N: the N of ``fits`` with the highest prioritize scores (ties: candidate order),
        in that order; else ``fits``. The others are not failures: they fit, they are only not the best."""
        keep = self._config.filter_best_nodes
        if keep <= 0 or len(fits) <= keep:
            return fits
        scores = self._node_scores(fits, request, request.options.node_policy)
        return [fits[i] for i in heapq.nlargest(keep, range(len(fits)), key=scores.__getitem__)]

    def _node_scores(self, names: Sequence[str], request: PodRequest | None, policy: Policy) -> list[int]:
        """The score of each node as prioritize answers it (``request``: the pod's, when readable, for scores that
        depend on what it asks); filter's best nodes are ranked by the same call. A topology-aware multi-GPU pod:
        the interconnect of the set each node would give decides (core.topology)."""
        topology = self._state.topology_priorities(names, request) if request is not None else None
        return topology if topology is not None else self._state.priorities(names, policy)

    def _fit_each(
        self, candidates: Sequence[str], request: PodRequest
    ) -> tuple[list[str], dict[str, str], collections.Counter[str]]:
        """The general path: fit_pod on every candidate (multi-container pods, UUID lists, NUMA)."""
        fits: list[str] = []
        failed: dict[str, str] = {}
        tally: collections.Counter[str] = collections.Counter()
        unregistered = FailureReason.NODE_UNREGISTERED.value
        view_of = self._state.view
        for name in candidates:
            view = view_of(name)
            if view is None:
                failed[name] = unregistered + ": the node is unknown to the extender"
                tally[unregistered] += 1
                continue
            result = fit.fit_pod(view, request)
            if result.grants is not None:
                fits.append(name)
            else:
                failed[name] = result.message
                tally.update(failure.value for failure in result.reasons)
        return fits, failed, tally

    @staticmethod
    def _filter_result(
        fits: Sequence[str],
        node_objects: list[Mapping[str, Any]] | None,
        failed: Mapping[str, str],
        unresolvable: Mapping[str, str],
    ) -> dict[str, Any]:
        result: dict[str, Any] = {"FailedNodes": failed, "FailedAndUnresolvableNodes": unresolvable, "Error": ""}
        if node_objects is None:
            result["NodeNames"] = list(fits)
            result["Nodes"] = None
        else:
            keep = set(fits)
            result["Nodes"] = {"items": [n for n in node_objects if objects.node_name(n) in keep]}
            result["NodeNames"] = None
        return result

    def _own_hold_aside(self, identity: objects.PodIdentity) -> contextlib.AbstractContextManager[None]:
        held = self._state.allocation(identity.uid) if identity.uid else None
        if held is None or not held.assumed or (held.namespace, held.name) != (identity.namespace, identity.name):
            return contextlib.nullcontext()
        return self._state.without_hold(identity.uid)

    def _remember(self, identity: objects.PodIdentity, pod: Mapping[str, Any], request: PodRequest) -> None:
        version = pod["metadata"].get("resourceVersion")  # metadata checked by _pod
        self._pending[identity.uid] = _Filtered(
            namespace=identity.namespace,
            name=identity.name,
            resource_version=version if isinstance(version, str) else "",
            node_name=_node_name(pod),
            scheduler_name=_scheduler_name(pod),
            request=request,
        )
        self._pending.move_to_end(identity.uid)
        while len(self._pending) > PENDING_CACHE_SIZE:
            self._pending.popitem(last=False)

    # --- prioritize ---------------------------------------------------------------------------
    def prioritize(self, args: Any) -> list[dict[str, Any]]:
        pod = self._pod(args)
        candidates, _ = self._candidates(args)
        seen = self._pending.get(objects.pod_identity(pod).uid)
        request: PodRequest | None = None
        try:
            # The same pod version as filter's (kube-scheduler sends both in one cycle): its request.
            request = seen.request if seen is not None and _same_version(seen, pod) else self._resolve(pod)
            policy = request.options.node_policy
        except MalformedInputError:
            policy = self._config.node_policy
        scores = self._node_scores(candidates, request, policy)
        out = [{"Host": name, "Score": score} for name, score in zip(candidates, scores, strict=True)]
        self._metrics.decisions.labels(verb="prioritize", result="scored").inc()
        return out

    # --- bind -----------------------------------------------------------------------------------
    async def bind(self, args: Any) -> dict[str, str]:
        if not isinstance(args, Mapping):
            raise BadRequest("the request body must be a JSON object (ExtenderBindingArgs)")
        fields = {}
        for key in ("PodName", "PodNamespace", "PodUID", "Node"):
            value = args.get(key)
            if not isinstance(value, str) or not value:
                raise BadRequest(f"'{key}' must be a non-empty string")
            fields[key] = value
        name, namespace, uid, node = fields["PodName"], fields["PodNamespace"], fields["PodUID"], fields["Node"]
        not_ready = self._ready()
        if not_ready:
            return self._bind_error(uid, not_ready)
        if uid in self._binding:
            # Another bind of the same pod is waiting for its Binding: answering this one must not touch its hold.
            return self._bind_error(uid, f"pod {namespace}/{name} is already being bound")
        self._binding.add(uid)
        try:
            return await self._bind(name, namespace, uid, node)
        finally:
            self._binding.discard(uid)

    async def _bind(self, name: str, namespace: str, uid: str, node: str) -> dict[str, str]:
        request: PodRequest | None = None
        filtered = self._pending.pop(uid, None)
        if filtered is not None:
            if (filtered.namespace, filtered.name) != (namespace, name):
                return self._bind_error(
                    uid, f"UID {uid} was filtered as pod {filtered.namespace}/{filtered.name}, not {namespace}/{name}"
                )
            identity = objects.PodIdentity(uid=uid, namespace=namespace, name=name)
            bound_to, scheduler, request = filtered.node_name, filtered.scheduler_name, filtered.request
        else:
            # Not filtered by this process (or forgotten): read the pod and check everything again.
            try:
                pod = await self._kube.get_pod(namespace, name)
            except KubeError as exc:
                return self._bind_error(uid, f"cannot read pod {namespace}/{name}: {exc}")
            identity = objects.pod_identity(pod)
            if identity.uid != uid:
                return self._bind_error(
                    uid, f"pod {namespace}/{name} has UID {identity.uid}, not {uid}: it was re-created"
                )
            bound_to, scheduler = _node_name(pod), _scheduler_name(pod)
            if not bound_to:
                try:
                    request = self._resolve(pod)
                except MalformedInputError as exc:
                    return self._bind_error(uid, f"pod cannot be placed: {exc}")
        if bound_to:
            if bound_to == node:
                return {"Error": ""}
            return self._bind_error(uid, f"pod {namespace}/{name} is already bound to {bound_to}")
        metadata = NO_METADATA
        if request is not None and request.wants_gpu:
            if scheduler not in self._trust.scheduler_names:
                return self._bind_error(
                    uid,
                    f"pod {namespace}/{name} has spec.schedulerName {scheduler!r}, not one this extender serves: "
                    "its GPUs are not placed",
                )
            try:
                allocation, result = self._state.reserve_fit(
                    uid=uid, namespace=namespace, name=name, node=node, request=request, now=self._clock()
                )
            except PendingHoldsFull as exc:
                self._event(identity, "Warning", events.BINDING_FAILED, f"not bound to {node}: {exc}")
                return self._bind_error(uid, f"cannot reserve GPUs for {namespace}/{name}: {exc}")
            if allocation is None:
                why = result.message if result is not None else "node unknown to the extender"
                self._event(identity, "Warning", events.BINDING_FAILED, f"node {node} no longer fits: {why}")
                return self._bind_error(uid, f"node {node} no longer fits the pod: {why}")
            over = self._quota_of_hold(allocation)
            if over is not None:
                self._event(identity, "Warning", "BindingFailed", f"not bound to {node}: {over}")
                return self._bind_error(uid, f"pod {namespace}/{name} not bound: {over}", unreserve=True)
            metadata = BindingMetadata(
                annotations=commit.placement_annotations(
                    allocation, now=dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)
                ),
                labels=commit.placement_labels(node),
            )
        try:
            # One write: the API server sets spec.nodeName and our annotations in the same update.
            await self._kube.create_binding(namespace, name, uid, node, metadata)
        except KubeError as exc:
            # A refused Binding wrote nothing (it is all or nothing): release the hold. Without an answer
            # (transport error, timeout, 5xx) it may have been written: keep the hold (assumed) until the
            # pod watch shows the pod bound, the pod is bound again (the new reservation replaces it), or
            # it expires.
            self._event(identity, "Warning", events.BINDING_FAILED, f"binding to {node} failed: {exc}")
            return self._bind_error(
                uid,
                f"cannot bind pod {namespace}/{name} to {node}: {exc}",
                unreserve=exc.status != 0 and exc.status < 500,
            )
        self._metrics.decisions.labels(verb="bind", result="bound").inc()
        if not self._config.success_events:
            return {"Error": ""}

        def succeed() -> str:
            held = self._state.allocation(uid)
            gpus = sorted({g.uuid for c in held.grants for g in c}) if held is not None else []
            return events.binding_succeed(node, namespace, name, gpus)

        self._event(identity, "Normal", events.BINDING_SUCCEED, succeed)
        return {"Error": ""}

    # --- ResourceQuota (core/quota.py) -----------------------------------------------------------
    def quota_refusal(self, namespace: str, request: PodRequest) -> str | None:
        """Why the namespace's GPU quota refuses ``request`` on every node (``None``: it may fit somewhere). For the
        preempt verb: evicting other pods never makes room in a quota."""
        return self._quota_gate(namespace, request)[0]

    def _quota_gate(self, namespace: str, request: PodRequest) -> tuple[str | None, bool]:
        """Before the fit: a refusal for every node when the pod's demand is known and exceeds a quota of its
        namespace; else whether the fitting nodes need a check each (memory a percentage of the card, a quota
        limiting memory, and the cluster's largest card over it). O(1) for a namespace without GPU quota."""
        ledger = self._state.quotas
        if not ledger.quotas(namespace):
            return None, False
        factor = self._config.defaults.memory_factor
        demand = quota.request_demand(request)
        if demand is None:
            if ledger.limits_memory(namespace):
                # Percentages hold the most on the largest card: if that fits, every node does.
                anywhere = quota.demand_on_card(request, self._state.largest_card_mem())
                return None, ledger.check(namespace, anywhere, memory_factor=factor) is not None
            demand = quota.fixed_demand(request)  # memory is not limited: the cores are card-independent
        refusal = ledger.check(namespace, demand, memory_factor=factor)
        return (refusal.message if refusal is not None else None), False

    def _quota_per_node(
        self,
        namespace: str,
        request: PodRequest,
        fits: list[str],
        failed: dict[str, str],
        tally: collections.Counter[str],
    ) -> list[str]:
        """The fitting nodes where a percentage pod keeps the quota; the others move to ``failed`` with the reason.
        Exact from the card size when a node's cards are alike (what the grants would say), else bounded by its
        smallest and largest card and, between the two, decided by the grants of the fit (fit_pod, mixed nodes
        only). One verdict per card size (a cluster has few)."""
        ledger, factor = self._state.quotas, self._config.defaults.memory_factor
        by_size: dict[int, quota.QuotaRefusal | None] = {}

        def on_cards(size: int) -> quota.QuotaRefusal | None:
            if size not in by_size:
                by_size[size] = ledger.check(namespace, quota.demand_on_card(request, size), memory_factor=factor)
            return by_size[size]

        kept: list[str] = []
        for name, low, high in zip(*self._state.card_mem_range(fits), strict=True):
            refusal = on_cards(high)
            if refusal is not None and low != high:
                # Between the bounds: refused on the smallest card too, or the card the fit picks decides.
                refusal = on_cards(low) or self._quota_of_fit(namespace, request, name)
            if refusal is None:
                kept.append(name)
            else:
                failed[name] = refusal.message
                tally[quota.REASON] += 1
        return kept

    def _quota_of_fit(self, namespace: str, request: PodRequest, node: str) -> quota.QuotaRefusal | None:
        """The quota verdict on the grants the fit picks on ``node`` (a node whose card sizes differ)."""
        view = self._state.view(node)
        grants = fit.fit_pod(view, request).grants if view is not None else None
        if grants is None:
            return None
        asked = quota.grants_demand(grants, init_containers=request.init_containers, sidecars=request.sidecars)
        return self._state.quotas.check(namespace, asked, memory_factor=self._config.defaults.memory_factor)

    def _quota_of_hold(self, allocation: PodAllocation) -> str | None:
        """At bind, after the reservation (which the usage already counts): its placement over a quota, or None."""
        held = quota.grants_demand(
            allocation.grants, init_containers=allocation.init_containers, sidecars=allocation.sidecars
        )
        refusal = self._state.quotas.check(
            allocation.namespace, held, memory_factor=self._config.defaults.memory_factor, held=held
        )
        return refusal.message if refusal is not None else None

    # --- the pod label -------------------------------------------------------------------------
    def pod_seen(self, pod: Mapping[str, Any]) -> None:
        """A pod from the pod watch. The ``hami.io/vgpu-node`` label rides on the Binding, but kube-apiserver
        copies Binding labels only with PodTopologyLabelsAdmission on; otherwise the leader queues one patch
        per pod once it is due (:func:`objects.node_label_due`), never on the scheduling path."""
        if not self._config.node_label or not self._leading() or objects.placement_status(pod, self._trust) is not None:
            return
        node = objects.node_label_due(pod)
        if node is not None:
            identity = objects.pod_identity(pod)
            self._kube.label_pod(
                pod={"name": identity.name, "namespace": identity.namespace, "uid": identity.uid},
                labels=commit.placement_labels(node),
            )

    def _bind_error(self, uid: str, message: str, *, unreserve: bool = False) -> dict[str, str]:
        if unreserve:
            self._state.unreserve(uid)
        self._metrics.decisions.labels(verb="bind", result="error").inc()
        log.warning("bind_failed", uid=uid, error=message)
        return {"Error": message}

    def _event(
        self, identity: objects.PodIdentity, event_type: str, reason: str, message: str | Callable[[], str]
    ) -> None:
        """Queue an Event unless the gate holds it back (``message``: built only when it is written)."""
        if not identity.name or not identity.namespace:
            return
        if not self._event_gate.admit(f"{identity.namespace}/{identity.name}", reason, self._clock()):
            self._metrics.events_suppressed.labels(reason=reason).inc()
            return
        self._kube.emit_event(
            pod={"name": identity.name, "namespace": identity.namespace, "uid": identity.uid},
            event_type=event_type,
            reason=reason,
            message=message if isinstance(message, str) else message(),
        )

    @property
    def events_suppressed(self) -> Mapping[str, int]:
        """Events the gate held back, by reason."""
        return self._event_gate.suppressed

    def _filtering_succeed(self, candidates: Sequence[str], fits: Sequence[str], request: PodRequest) -> str:
        shown = list(fits[: events.MAX_NODES_NAMED * 10])  # scored: a bounded prefix, the message names 10
        scores = self._state.priorities(shown, request.options.node_policy)
        return events.filtering_succeed(len(candidates), fits, [float(s) for s in scores])


def _same_version(seen: _Filtered, pod: Mapping[str, Any]) -> bool:
    """``pod`` (its metadata checked by ``_pod``) is the version filter saw: a resourceVersion, equal."""
    return bool(seen.resource_version) and seen.resource_version == pod["metadata"].get("resourceVersion")


def _node_name(pod: Mapping[str, Any]) -> str:
    spec = pod.get("spec")
    value = spec.get("nodeName") if isinstance(spec, Mapping) else None
    return value if isinstance(value, str) else ""


def _scheduler_name(pod: Mapping[str, Any]) -> str:
    """``spec.schedulerName`` as the API server defaults it."""
    spec = pod.get("spec")
    value = spec.get("schedulerName") if isinstance(spec, Mapping) else None
    return value if isinstance(value, str) and value else KUBE_DEFAULT_SCHEDULER

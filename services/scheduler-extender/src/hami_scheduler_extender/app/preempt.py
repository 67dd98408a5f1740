"""The ``preempt`` verb (kube-scheduler's ``ProcessPreemption``, extender v1): which of a node's pods to evict
so that a GPU pod fits, decided per candidate node by :func:`core.preempt.select_victims` on the usage cache.

kube-scheduler sends ``ExtenderPreemptionArgs``: the preemptor ``Pod`` and, per candidate node, its own victims,
as UIDs (``NodeNameToMetaVictims``, with ``nodeCacheCapable``) or as pods (``NodeNameToVictims``). We answer
``ExtenderPreemptionResult``: ``NodeNameToMetaVictims`` for the nodes where preemption frees a fit, each with the
victims' UIDs (highest priority first) and kube-scheduler's ``NumPDBViolations`` (we read no
PodDisruptionBudget; the count is capped at the number of victims). A node left out is not preempted on; a node
with an empty list would fail kube-scheduler's whole preemption, so none is ever sent. Everything in the request
is untrusted: malformed arguments get HTTP 400, unknown nodes are dropped, a victim we choose for the GPUs is
only ever a pod we hold on that node with a priority lower than the preemptor's, and kube-scheduler's own victims
(where the GPUs fit already) pass less any pod we know to be as important as the preemptor. Not ready, or a
preemptor that may not preempt (``preemptionPolicy: Never``, no GPU, a scheduler name we do not serve): no node.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Mapping
from typing import Any

from hami_shared.errors import MalformedInputError
from hami_shared.logging import get_logger
from hami_shared.names import KUBE_DEFAULT_SCHEDULER
from hami_shared.quantity import pod_gpu_requests

from hami_scheduler_extender.app.extender import BadRequest, Extender
from hami_scheduler_extender.core import objects
from hami_scheduler_extender.core.preempt import DEFAULT_BUDGET, Candidate, select_victims
from hami_scheduler_extender.core.request import resolve_pod

log = get_logger(__name__)

REQUEST_BUDGET = 4_000
"""Fit checks one preempt request may spend (about 0.2 s on this 2-core machine): kube-scheduler waits for the
answer inside its scheduling cycle. Candidates not reached by then are left out of the answer; kube-scheduler
samples its candidates from a random offset each cycle, as it bounds its own dry run (``numCandidates``)."""
MAX_VICTIMS_PER_NODE = 10_000
"""More victims than any node runs pods: a longer list is refused (HTTP 400)."""


def no_preemption() -> dict[str, Any]:
    """The answer that preempts on no node."""
    return {"NodeNameToMetaVictims": {}}


def _proposed(args: Mapping[str, Any]) -> dict[str, tuple[list[str], int]]:
    """Per node, kube-scheduler's victim UIDs and PDB violation count, from either form of the arguments."""
    meta = args.get("NodeNameToMetaVictims")
    full = args.get("NodeNameToVictims")
    source, field = (meta, "meta") if meta is not None else (full, "full")
    if source is None:
        return {}
    if not isinstance(source, Mapping):
        raise BadRequest("'NodeNameToMetaVictims' / 'NodeNameToVictims' must be an object keyed by node name")
    out: dict[str, tuple[list[str], int]] = {}
    for node, victims in source.items():
        if victims is None:
            continue
        if not isinstance(victims, Mapping):
            raise BadRequest(f"victims of node {node[:253]!r} must be an object with 'Pods' and 'NumPDBViolations'")
        pods = victims.get("Pods")
        pods = [] if pods is None else pods
        violations = victims.get("NumPDBViolations", 0)
        if not isinstance(pods, list) or len(pods) > MAX_VICTIMS_PER_NODE:
            raise BadRequest(f"'Pods' of node {node[:253]!r} must be a list of at most {MAX_VICTIMS_PER_NODE} pods")
        if isinstance(violations, bool) or not isinstance(violations, int) or violations < 0:
            raise BadRequest(f"'NumPDBViolations' of node {node[:253]!r} must be a non-negative integer")
        uids: list[str] = []
        for pod in pods:
            uid = pod.get("UID") if field == "meta" and isinstance(pod, Mapping) else None
            if field == "full" and isinstance(pod, Mapping):
                uid = objects.pod_identity(pod).uid
            if not isinstance(uid, str) or not uid:
                raise BadRequest(f"each victim of node {node[:253]!r} must carry its pod UID")
            uids.append(uid)
        out[node] = (uids, violations)
    return out


def preempt(extender: Extender, args: Any) -> dict[str, Any]:
    """Answer one ExtenderPreemptionArgs (module docstring)."""
    if not isinstance(args, Mapping):
        raise BadRequest("the request body must be a JSON object (ExtenderPreemptionArgs)")
    pod = args.get("Pod")
    if not isinstance(pod, Mapping) or not isinstance(pod.get("metadata"), Mapping):
        raise BadRequest("'Pod' must be a Pod object with 'metadata'")
    proposed = _proposed(args)
    metrics, config = extender.metrics, extender.config
    not_ready = extender.readiness()
    if not_ready:
        log.warning("preempt_not_ready", reason=not_ready)
        metrics.decisions.labels(verb="preempt", result="error").inc()
        return no_preemption()
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        raise BadRequest("'Pod' has no 'spec' object")
    scheduler = spec.get("schedulerName")
    scheduler = scheduler if isinstance(scheduler, str) and scheduler else KUBE_DEFAULT_SCHEDULER
    if spec.get("preemptionPolicy") == "Never" or scheduler not in config.scheduler_names:
        metrics.decisions.labels(verb="preempt", result="not-eligible").inc()
        return no_preemption()
    try:
        request = resolve_pod(
            pod_gpu_requests(spec, config.names),
            objects.annotations_of(pod),
            defaults=config.defaults,
            node_policy=config.node_policy,
            gpu_policy=config.gpu_policy,
            gpu_chain=config.gpu_chain,
        )
    except MalformedInputError:
        metrics.decisions.labels(verb="preempt", result="unresolvable").inc()
        return no_preemption()
    if not request.wants_gpu:
        metrics.decisions.labels(verb="preempt", result="no-gpu").inc()
        return no_preemption()
    priority = objects.pod_priority(spec) or 0
    identity = objects.pod_identity(pod)
    state = extender.state
    answer: dict[str, Any] = {}
    outcomes: collections.Counter[str] = collections.Counter()
    left = REQUEST_BUDGET
    held_own = state.allocation(identity.uid) if identity.uid else None
    # A preemptor with an unconfirmed hold of its own (a bind without an answer) must not count against itself.
    aside = (
        state.without_hold(identity.uid)
        if held_own is not None
        and held_own.assumed
        and (held_own.namespace, held_own.name) == (identity.namespace, identity.name)
        else contextlib.nullcontext()
    )
    with aside:
        if extender.quota_refusal(identity.namespace, request) is not None:
            # Over its namespace's GPU quota, the pod fits nowhere whoever is evicted (ResourceQuota is never a
            # reason to preempt, in kube-scheduler either): propose no victim, not other namespaces' pods.
            metrics.decisions.labels(verb="preempt", result="over-quota").inc()
            return no_preemption()
        for node, (uids, violations) in proposed.items():
            if left <= 0:
                outcomes["over-budget"] += 1
                continue
            view = state.view(node)
            if view is None:
                outcomes["unknown-node"] += 1
                continue
            held = [
                Candidate(uid=allocation.uid, priority=allocation.priority, usage=usage, mig=allocation.mig_instances())
                for allocation, usage in state.holds_on(node)
            ]
            decision = select_victims(
                view=view,
                request=request,
                preemptor_priority=priority,
                proposed=uids,
                held=held,
                budget=min(DEFAULT_BUDGET, left),
            )
            left -= decision.checks
            outcomes[decision.outcome.value] += 1
            if decision.victims:
                answer[node] = {
                    "Pods": [{"UID": uid} for uid in decision.victims],
                    "NumPDBViolations": min(violations, len(decision.victims)),
                }
                metrics.preemption_victims.inc(len(decision.victims))
    for outcome, count in outcomes.items():
        metrics.decisions.labels(verb="preempt", result=outcome).inc(count)
    log.info(
        "preempt_decided",
        pod=f"{identity.namespace}/{identity.name}",
        candidates=len(proposed),
        nodes=len(answer),
        outcomes=dict(outcomes),
    )
    return {"NodeNameToMetaVictims": answer}

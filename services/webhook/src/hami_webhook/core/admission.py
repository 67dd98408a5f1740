"""Which reviews each endpoint's rules apply to; everything else passes.

``admit`` (POST /mutate): the mutation rules, on pods being created. ``validate`` (POST /validate): the tenant
guard, on pods being created and ephemeral containers being added. Answering any other review (an operator
widening the webhook configurations) with "allowed, no patch" keeps such a mistake harmless.
"""

from __future__ import annotations

from hami_webhook.core.decision import Allowed, Decision
from hami_webhook.core.guard import guard_ephemeral_containers, guard_pod
from hami_webhook.core.policy import MutationPolicy
from hami_webhook.core.review import AdmissionRequest
from hami_webhook.core.rules import mutate_pod

EPHEMERAL_CONTAINERS = "ephemeralcontainers"


def admit(request: AdmissionRequest, *, policy: MutationPolicy) -> Decision:
    """The mutating decision for one review."""
    if not request.is_pod:
        return Allowed(reason="not-a-pod")
    if request.operation != "CREATE":
        return Allowed(reason="not-create")
    return mutate_pod(request.object, policy=policy)


def validate(request: AdmissionRequest, *, policy: MutationPolicy) -> Decision:
    """The validating decision for one review (never a patch)."""
    if not request.is_pod_resource:
        return Allowed(reason="not-a-pod")
    if request.sub_resource == "" and request.operation == "CREATE":
        return guard_pod(request.object, namespace=request.namespace, policy=policy)
    if request.sub_resource == EPHEMERAL_CONTAINERS and request.operation == "UPDATE":
        return guard_ephemeral_containers(request.object, namespace=request.namespace, policy=policy)
    return Allowed(reason="not-guarded")

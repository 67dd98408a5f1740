"""Which reviews the pod rules apply to: pods being created; everything else passes.

The webhook configuration only sends CREATE on pods, but an operator may widen the rules or
register the webhook by hand; answering other reviews with "allowed, no patch" keeps such a
mistake harmless.
"""

from __future__ import annotations

from hami_webhook.core.decision import Allowed, Decision
from hami_webhook.core.policy import MutationPolicy
from hami_webhook.core.review import AdmissionRequest
from hami_webhook.core.rules import mutate_pod


def admit(request: AdmissionRequest, *, policy: MutationPolicy) -> Decision:
    """The decision for one review."""
    if not request.is_pod:
        return Allowed(reason="not-a-pod")
    if request.operation != "CREATE":
        return Allowed(reason="not-create")
    return mutate_pod(request.object, policy=policy)

"""kubelet's pod-resources API v1 (``List``) as the device plugin reads it: which pods kubelet holds and the
device IDs of our resource it recorded for each container (core/admission.py decides from that).

It is called from inside GetPreferredAllocation and Allocate, while kubelet waits for the answer, so every call
is bounded: a deadline (``timeout``), a largest accepted answer (``max_bytes``, enforced by gRPC before
decoding) and caps on what is decoded. The kubelet is trusted, but a wrong answer must not cost more than a
fallback. A fresh channel per call: after a kubelet restart an old channel would sit in gRPC's reconnect
backoff, and a connect over a unix socket costs a few milliseconds. No socket file at all (kubelet without the
API, the e2e kubelet stand-in): answered at once, without waiting.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Final

import grpc

from hami_device_plugin.adapters.protos import POD_RESOURCES, load
from hami_device_plugin.core.admission import MAX_LISTED_CONTAINERS, MAX_LISTED_PODS, ListedContainer, ListedPod

pb, pb_grpc = load(POD_RESOURCES)

DEFAULT_MAX_BYTES: Final = 4 << 20
"""A node's 110 pods with 20 containers of 16 devices each answer in well under 1 MiB."""
MAX_NAME: Final = 253
MAX_DEVICES_PER_CONTAINER: Final = 1024

# Why kubelet could not be asked (metric label values, next to core/admission.py's).
REASON_NO_SOCKET: Final = "no-socket"
REASON_UNAVAILABLE: Final = "unavailable"
REASON_TIMEOUT: Final = "timeout"
REASON_TOO_LARGE: Final = "answer-too-large"
REASON_ERROR: Final = "error"


class PodResourcesError(Exception):
    """kubelet's List could not be used; ``reason`` is a metric label, the message goes to the log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class PodResourcesClient:
    """Asks the kubelet listening on ``socket`` which pods it holds."""

    socket: Path
    resource: str
    """Our extended resource (``nvidia.com/gpu``): only its device IDs are kept."""
    timeout: float = 1.0
    max_bytes: int = DEFAULT_MAX_BYTES

    async def list(self) -> tuple[ListedPod, ...]:
        """kubelet's active pods with our devices; :class:`PodResourcesError` when that cannot be had in time."""
        if not self.socket.exists():
            raise PodResourcesError(REASON_NO_SOCKET, f"no kubelet pod-resources socket at {self.socket}")
        started = time.monotonic()
        options = [
            ("grpc.max_receive_message_length", self.max_bytes),
            ("grpc.max_send_message_length", 1 << 10),
            ("grpc.enable_http_proxy", 0),
            ("grpc.initial_reconnect_backoff_ms", 50),
            ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 250),
        ]
        try:
            async with grpc.aio.insecure_channel(f"unix://{self.socket}", options=options) as channel:
                stub: Any = pb_grpc.PodResourcesListerStub(channel)
                # wait_for_ready: a kubelet that has just started (socket not yet listening) still answers in time.
                answer = await stub.List(pb.ListPodResourcesRequest(), timeout=self.timeout, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            detail = f"kubelet pod-resources List at {self.socket}: {code.name}: {(exc.details() or '')[:300]}"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                waited = time.monotonic() - started
                raise PodResourcesError(REASON_TIMEOUT, f"{detail} (after {waited:.2f} s)") from exc
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (exc.details() or ""):
                raise PodResourcesError(REASON_TOO_LARGE, detail) from exc
            if code == grpc.StatusCode.UNAVAILABLE:
                raise PodResourcesError(REASON_UNAVAILABLE, detail) from exc
            raise PodResourcesError(REASON_ERROR, detail) from exc
        return decode_list(answer, self.resource)


def decode_list(answer: Any, resource: str) -> tuple[ListedPod, ...]:
    """:class:`ListedPod` values from a ``ListPodResourcesResponse``, keeping the device IDs of ``resource``."""
    if len(answer.pod_resources) > MAX_LISTED_PODS:
        raise PodResourcesError(REASON_TOO_LARGE, f"kubelet lists {len(answer.pod_resources)} pods")
    pods = []
    for pod in answer.pod_resources:
        if len(pod.containers) > MAX_LISTED_CONTAINERS or len(pod.name) > MAX_NAME or len(pod.namespace) > MAX_NAME:
            raise PodResourcesError(REASON_TOO_LARGE, f"kubelet lists pod {pod.namespace[:63]}/{pod.name[:63]} oddly")
        containers = []
        for container in pod.containers:
            ids: list[str] = []
            for devices in container.devices:
                if devices.resource_name == resource:
                    ids.extend(devices.device_ids)
            if len(ids) > MAX_DEVICES_PER_CONTAINER:
                raise PodResourcesError(REASON_TOO_LARGE, f"kubelet lists {len(ids)} devices for one container")
            containers.append(ListedContainer(container.name, tuple(ids)))
        pods.append(ListedPod(pod.namespace, pod.name, tuple(containers)))
    return tuple(pods)

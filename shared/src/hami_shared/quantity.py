"""Extended-resource quantities of GPU requests, read from pod specs.

Kubernetes writes quantities in its own grammar (``1``, ``8000``, ``8k``, ``1Gi``, ``1e3``). Extended resources
must be whole numbers, and HAMi drops values that do not fit an int32: we resolve a quantity exactly (no float
rounding) and refuse anything else, with a message naming the container and the resource. Per resource, limits
are read first and requests are the fallback (HAMi's order).

The readers are total: for any JSON they return a value or raise :class:`MalformedInputError` (a container name
or a value in a message is clipped, never printed whole). Sizes are checked before any parsing: a quantity of at
most ``MAX_QUANTITY_CHARS`` ASCII characters, an exponent up to 40, an integer of at most 64 bits, at most
``MAX_POD_CONTAINERS`` init plus regular containers (the entries a pod's device lists can hold).
"""

from __future__ import annotations

import dataclasses
import decimal
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from hami_shared.bounds import INT32_MAX, MAX_POD_CONTAINERS, describe
from hami_shared.errors import MalformedInputError
from hami_shared.names import DEFAULT_RESOURCE_NAMES, ResourceNames

MAX_QUANTITY_CHARS: Final = 64
RESTART_ALWAYS: Final = "Always"
"""An init container's ``restartPolicy`` that makes it a sidecar (kept running for the pod's life)."""
_MAX_EXPONENT: Final = 40
_MAX_CONTAINER_NAME_CHARS: Final = 63  # a DNS label, as Kubernetes requires of container names

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$",
    re.ASCII,
)
_BINARY: Final = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL_EXP: Final = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def whole_quantity(text: str, *, where: str) -> int:
    """``text`` (at most :data:`MAX_QUANTITY_CHARS` characters, the caller checks) in Kubernetes' quantity grammar,
    resolved exactly to an integer, sign kept; :class:`MalformedInputError` for anything else, fractions included.
    The one reader of the grammar: pod requests (:func:`parse_quantity`) and the extender's ResourceQuota limits
    apply their own range to what it returns."""
    match = _QUANTITY.match(text)
    if not match:
        raise MalformedInputError(where, text, "not a Kubernetes quantity; write a whole number such as '8000'")
    suffix = match.group("suffix") or ""
    with decimal.localcontext() as ctx:
        # 64 digits scaled by up to 10**40 stay exact: the integrality check below never sees a rounded value.
        ctx.prec = 120
        number = decimal.Decimal(match.group("number"))
        if suffix in _BINARY:
            number *= _BINARY[suffix]
        elif suffix in _DECIMAL_EXP:
            number = number.scaleb(_DECIMAL_EXP[suffix])
        else:
            exponent = int(suffix[1:])
            if abs(exponent) > _MAX_EXPONENT:
                raise MalformedInputError(where, text, "exponent is out of range")
            number = number.scaleb(exponent)
        if number != number.to_integral_value():
            raise MalformedInputError(where, text, "must be a whole number (extended resources cannot be fractional)")
    return int(number)


def parse_quantity(value: object, *, resource: str, container: str) -> int:
    """Resolve a quantity to a non-negative int32, or raise :class:`MalformedInputError`."""
    where = f"container {container[:_MAX_CONTAINER_NAME_CHARS]!r} resource {resource[:_MAX_CONTAINER_NAME_CHARS]!r}"
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MalformedInputError(where, describe(value), "quantity must be a string like '8000' or an integer")
    if isinstance(value, int) and value.bit_length() > 64:
        raise MalformedInputError(where, describe(value), f"is larger than {INT32_MAX}, the largest value HAMi accepts")
    if isinstance(value, str) and len(value) > MAX_QUANTITY_CHARS:
        raise MalformedInputError(where, value, f"a quantity is at most {MAX_QUANTITY_CHARS} characters")
    text = str(value).strip()
    resolved = whole_quantity(text, where=where)
    if resolved < 0:
        raise MalformedInputError(where, text, "must not be negative")
    if resolved > INT32_MAX:
        raise MalformedInputError(where, text, f"is larger than {INT32_MAX}, the largest value HAMi accepts")
    return resolved


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GpuRequest:
    """What one container asks of the GPU resources; ``None`` = not asked.

    ``memory`` is MiB per GPU, ``memory_percentage`` percent of each card, ``cores`` percent of SMs.
    """

    count: int | None = None
    memory: int | None = None
    memory_percentage: int | None = None
    cores: int | None = None
    priority: int | None = None

    @property
    def any(self) -> bool:
        """True when the container asks for any of our resources."""
        return any(v is not None for v in (self.count, self.memory, self.memory_percentage, self.cores, self.priority))


@dataclasses.dataclass(frozen=True, slots=True)
class PodGpuRequests:
    """Requests of every container, init containers first (the order of pod device lists).

    ``sidecars`` are the positions, among the init containers, of the restartable ones
    (``restartPolicy: Always``): they keep running beside every later container.
    """

    init_containers: tuple[GpuRequest, ...]
    containers: tuple[GpuRequest, ...]
    sidecars: frozenset[int] = frozenset()

    @property
    def all(self) -> tuple[GpuRequest, ...]:
        return self.init_containers + self.containers


def container_gpu_request(container: Mapping[str, Any], names: ResourceNames = DEFAULT_RESOURCE_NAMES) -> GpuRequest:
    """Read one container (Kubernetes JSON) into a :class:`GpuRequest`."""
    if not isinstance(container, Mapping):
        raise MalformedInputError("pod spec", describe(container), "each container must be an object")
    raw_name = container.get("name", "?")
    name = raw_name[:_MAX_CONTAINER_NAME_CHARS] if isinstance(raw_name, str) else "?"
    resources = container.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise MalformedInputError(f"container {name!r}", describe(resources), "'resources' must be an object")
    limits = _quantity_map(resources, "limits", name)
    requests = _quantity_map(resources, "requests", name)

    def read(resource: str) -> int | None:
        raw = limits.get(resource, requests.get(resource))
        if raw is None:
            return None
        return parse_quantity(raw, resource=resource, container=name)

    return GpuRequest(
        count=read(names.count),
        memory=read(names.memory),
        memory_percentage=read(names.memory_percentage),
        cores=read(names.cores),
        priority=read(names.priority),
    )


def _quantity_map(resources: Mapping[str, Any], key: str, container: str) -> Mapping[str, Any]:
    value = resources.get(key) or {}
    if not isinstance(value, Mapping):
        raise MalformedInputError(f"container {container!r}", describe(value), f"'resources.{key}' must be an object")
    return value


def pod_gpu_requests(pod_spec: Mapping[str, Any], names: ResourceNames = DEFAULT_RESOURCE_NAMES) -> PodGpuRequests:
    """Requests of every container of a pod spec (Kubernetes JSON), init containers first."""
    if not isinstance(pod_spec, Mapping):
        raise MalformedInputError("pod spec", describe(pod_spec), "the pod spec must be an object")
    init_containers = _containers(pod_spec, "initContainers")
    containers = _containers(pod_spec, "containers")
    if len(init_containers) + len(containers) > MAX_POD_CONTAINERS:
        raise MalformedInputError(
            "pod spec",
            f"{len(init_containers)} init containers, {len(containers)} containers",
            f"a pod with GPUs may have at most {MAX_POD_CONTAINERS} containers, init containers included",
        )
    return PodGpuRequests(
        init_containers=tuple(container_gpu_request(c, names) for c in init_containers),
        containers=tuple(container_gpu_request(c, names) for c in containers),
        sidecars=sidecar_positions(init_containers),
    )


def sidecar_positions(init_containers: object) -> frozenset[int]:
    """Positions of the restartable init containers (sidecars): ``restartPolicy: Always``, the only value
    Kubernetes accepts on an init container. Total: anything that is not a list of objects has none."""
    if not isinstance(init_containers, list):
        return _NO_SIDECARS
    positions = frozenset(
        position
        for position, container in enumerate(init_containers)
        if isinstance(container, Mapping) and container.get("restartPolicy") == RESTART_ALWAYS
    )
    # One shared empty set: a cache of 40,000 pods would otherwise hold 40,000 empty frozensets (~9 MiB).
    return positions or _NO_SIDECARS


_NO_SIDECARS: Final[frozenset[int]] = frozenset()


def _containers(pod_spec: Mapping[str, Any], key: str) -> Sequence[Mapping[str, Any]]:
    value = pod_spec.get(key) or []
    if not isinstance(value, list) or not all(isinstance(c, Mapping) for c in value):
        raise MalformedInputError("pod spec", describe(value), f"'{key}' must be a list of container objects")
    return value

"""The scheduler's MIG instance metric, HAMi's ``hami_node_gpu_mig_instance_info`` (kept apart from
``metrics.py`` so the allocation gauges there can change without touching it).

One series, value 1, per MIG instance whose runtime identity the device plugin has recorded in the pod's
``hami.io/vgpu-mig-allocations`` (HAMi emits only realized instances too), with HAMi's labels: ``node``,
``device_uuid`` (the parent GPU), ``device_index``, ``mig_uuid``, ``profile``, ``gpu_instance_id``,
``compute_instance_id``, ``placement_start``, ``placement_size``.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily

from hami_scheduler_extender.core.model import NodeView, PodAllocation

MIG_INSTANCE_LABELS = (
    "node",
    "device_uuid",
    "device_index",
    "mig_uuid",
    "profile",
    "gpu_instance_id",
    "compute_instance_id",
    "placement_start",
    "placement_size",
)


def mig_instance_family(views: Iterable[NodeView], allocations: Iterable[PodAllocation]) -> GaugeMetricFamily:
    """``hami_node_gpu_mig_instance_info`` from immutable views and holds (safe off the event loop)."""
    family = GaugeMetricFamily(
        "hami_node_gpu_mig_instance_info",
        "Realized MIG instance identity and scheduler placement",
        labels=list(MIG_INSTANCE_LABELS),
    )
    index = {(view.name, d.uuid): d.index for view in views for d in view.devices}
    for allocation in allocations:
        for a in allocation.mig_realized:
            device_index = index.get((allocation.node, a.gpu_uuid))
            if device_index is None:
                continue  # a GPU the node does not register counts nothing there (as in the other gauges)
            family.add_metric(
                [
                    allocation.node,
                    a.gpu_uuid,
                    str(device_index),
                    a.mig_uuid or "",
                    a.profile,
                    str(a.gpu_instance_id),
                    str(a.compute_instance_id),
                    str(a.start),
                    str(a.size),
                ],
                1,
            )
    return family

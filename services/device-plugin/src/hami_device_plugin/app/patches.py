"""The pod patch queue: the metadata the plugin writes onto pods after Allocate, behind the answers.

One :class:`hami_shared.service.writer.ApiWriter`: one patch per pod, merged while it waits (the newer value of a
key wins), written oldest first; a pod gone (404) is dropped, any other API error retried with backoff until
written. Each pod written comes back into the pod cache at once, so the next decision sees it.
"""

from __future__ import annotations

from hami_shared.service.kube import KubeError
from hami_shared.service.writer import ApiWriter, Verdict, verdict

from hami_device_plugin.adapters.kube import KubeClient
from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.core.claims import PodKey, PodPatch
from hami_device_plugin.core.pods import PodRecord


def patch_verdict(exc: Exception) -> Verdict | None:
    """Only a pod gone is given up; what is not an API error stops the writer (and the plugin: the DaemonSet
    restarts it, and it finishes the patches of the containers it served, app/recovery.py)."""
    if not isinstance(exc, KubeError):
        raise exc
    return verdict(exc, errors=(KubeError,), drop={404}, conflict=Verdict.RETRY)


class PodPatches(ApiWriter[PodKey, PodPatch]):
    """Queued pod metadata patches; written once :meth:`connect` gave the API client."""

    def __init__(self, *, pods: PodCache | None, metrics: PluginMetrics) -> None:
        super().__init__(
            self._write,
            what="pod-patch",
            classify=patch_verdict,
            merge=PodPatch.then,
        )
        self._pods, self._metrics = pods, metrics
        self._kube: KubeClient | None = None

    def connect(self, kube: KubeClient) -> None:
        self._kube = kube

    def patch(self, pod: PodRecord, patch: PodPatch) -> None:
        self.submit(PodKey(pod.uid, pod.key), patch)

    async def _write(self, _: PodKey, patch: PodPatch) -> None:
        assert self._kube is not None
        assert self._pods is not None
        updated = await self._kube.patch_pod_metadata(
            patch.namespace, patch.name, annotations=patch.annotations, labels=patch.labels
        )
        self._pods.apply_own_update(updated)
        self._metrics.pod_patches.inc()

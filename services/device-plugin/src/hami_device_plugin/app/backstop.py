"""The node backstop (core/backstop.py decides): after each monitor scan, NVML's per-process used memory of every
allocated container's processes against its accounting and its limit; the gap as a metric; a container over its
limit beyond the tolerance is counted and logged at once, and gets a Warning Event ``GPUMemoryOverLimit`` on its
pod (once per episode); under the node's ``enforce`` policy its processes on that GPU are killed, and the Event,
which says what the policy did, waits up to ``EVENT_WAIT_SCANS`` scans for a kill to succeed.

A kill never hits a process that is not the container's: the victim's pid is opened as a pidfd first (it then
names that process, whatever happens to the pid), and only if ``/proc/<pid>`` still shows the start time seen at
the scan and a cgroup that names the container (its runtime ID) or its pod is SIGKILL sent through that pidfd.
The DaemonSet runs the plugin in the host PID namespace (``hostPID: true``) and with ``CAP_KILL`` (a container's
processes may run as any user).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from hami_shared.logging import get_logger
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hami_device_plugin.app.metrics import CONTAINER_LABELS, PluginMetrics
from hami_device_plugin.core import backstop as core
from hami_device_plugin.core.hostpid import ProcIdentity, ProcSource

log = get_logger(__name__)

REASON: Final = "GPUMemoryOverLimit"
EVENT_WAIT_SCANS: Final = 4
"""Under enforce, scans an episode's Event waits for a kill to succeed (a process whose cgroup does not show its
container yet, e.g. before the pod's status carries the container's ID, is not killed)."""
KILLED: Final = "killed"


class _GapCollector(Collector):
    """Real use and its gap to the accounting per container GPU, from the latest scan."""

    def __init__(self) -> None:
        self.samples: Sequence[tuple[list[str], core.Verdict]] = ()

    def collect(self) -> list[GaugeMetricFamily]:
        real = GaugeMetricFamily(
            "hami_vgpu_memory_real_bytes",
            "GPU memory NVML counts for the container's processes on the device (the node's own measurement)",
            labels=CONTAINER_LABELS,
        )
        gap = GaugeMetricFamily(
            "hami_vgpu_memory_unaccounted_bytes",
            "Real use (NVML) minus the container's accounted use (hamicore's region) on the device",
            labels=CONTAINER_LABELS,
        )
        for labels, v in self.samples:
            real.add_metric(labels, v.use.real_bytes)
            gap.add_metric(labels, v.gap_bytes)
        return [real, gap]


def kill_process(victim: core.ProcessUse, gpu: core.ContainerGpu, procs: ProcSource) -> str:
    """SIGKILL ``victim`` if it is still the process seen at the scan and its cgroup is the container's (its
    runtime ID) or its pod's; the outcome."""
    try:
        pidfd = os.pidfd_open(victim.host_pid)
    except ProcessLookupError:
        return "gone"
    except OSError as exc:
        return f"error-{exc.errno}"
    try:
        ident = procs.identity(victim.host_pid)  # read after the pidfd: it describes the pidfd's process or none
        if ident is None or ident.start_time != victim.start_time:
            return "reused"
        if not gpu.owns(procs.cgroup(victim.host_pid)):
            return "not-in-pod"
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return KILLED
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "denied"
    finally:
        os.close(pidfd)


class Backstop:
    def __init__(
        self,
        *,
        procs: ProcSource,
        metrics: PluginMetrics,
        policy: Callable[[], str],
        tolerance: core.Tolerance,
        kill: Callable[[core.ProcessUse, core.ContainerGpu, ProcSource], str] = kill_process,
    ) -> None:
        self._procs = procs
        self._policy = policy
        self._tolerance = tolerance
        self._kill = kill
        self._episodes = core.Episodes()
        self._reported: set[tuple[str, str, int, str]] = set()  # kill outcomes logged at warning in this episode
        self._pending: dict[tuple[str, str], tuple[core.Verdict, int]] = {}  # episodes whose Event is not sent yet
        self._collector = _GapCollector()
        metrics.registry.register(self._collector)
        self.episodes = Counter(
            "hami_device_plugin_gpu_memory_over_limit",
            "Episodes of a container's real GPU memory (NVML) above its limit beyond the tolerance, by policy",
            ["policy"],
            registry=metrics.registry,
        )
        self.kills = Counter(
            "hami_device_plugin_gpu_memory_kills",
            "Processes the backstop tried to kill under policy enforce, by outcome (killed; gone, reused, "
            "not-in-pod, denied: not killed)",
            ["result"],
            registry=metrics.registry,
        )

    def check(
        self,
        gpus: Sequence[core.ContainerGpu],
        labels: Mapping[tuple[str, str], list[str]],
        nvml: Mapping[str, Mapping[int, int]],
        unresolved: Mapping[str, frozenset[tuple[int, int]]],
    ) -> list[tuple[core.Verdict, str]]:
        """One scan's reconciliation (blocking: /proc reads and kills; call from a worker thread). ``labels``: the
        metric labels per (container, uuid); ``unresolved``: per container, slots whose host pid is unknown as
        (pid in the container's PID namespace, start time): they claim the GPU process whose innermost pid and start
        time are those (a weaker claim than the cgroup's, which overrides it: a slot is the container's to write).
        Returns the verdicts that start an episode, each with its Event message."""
        idents: dict[int, ProcIdentity] = {}
        for per_pid in nvml.values():
            for pid in per_pid:
                if pid not in idents and (ident := self._procs.identity(pid)) is not None:
                    idents[pid] = ident
        by_ns: dict[tuple[int, int], list[int]] = {}
        for ident in idents.values():
            by_ns.setdefault((ident.ns_pid, ident.start_time), []).append(ident.host_pid)
        gpus = [
            g
            if not unresolved.get(g.container)
            else core.ContainerGpu(
                g.container,
                g.pod_uid,
                g.uuid,
                g.vdevice_index,
                g.limit_bytes,
                g.accounted_bytes,
                g.slot_pids
                | {(host, start) for pid, start in unresolved[g.container] for host in by_ns.get((pid, start), ())},
                g.container_id,
            )
            for g in gpus
        ]
        on_gpu: dict[str, list[core.ContainerGpu]] = {}
        for g in gpus:
            on_gpu.setdefault(g.uuid, []).append(g)
        owner_of: dict[int, str] = {}
        for uuid, per_pid in nvml.items():
            for pid in per_pid:
                if pid in idents and uuid in on_gpu:
                    owner = core.cgroup_owner(self._procs.cgroup(pid), on_gpu[uuid])
                    if owner is not None:
                        owner_of[pid] = owner
        uses = core.attribute(gpus, nvml, {pid: i.start_time for pid, i in idents.items()}, owner_of)
        policy = self._policy()
        verdicts = [core.reconcile(use, self._tolerance, policy) for use in uses]
        self._collector.samples = [
            (labels[(v.use.gpu.container, v.use.gpu.uuid)], v)
            for v in verdicts
            if (v.use.gpu.container, v.use.gpu.uuid) in labels
        ]
        killed: dict[tuple[str, str], list[int]] = {}
        reported = set()
        for v in verdicts:
            for victim in v.victims:
                result = self._kill(victim, v.use.gpu, self._procs)
                self.kills.labels(result).inc()
                key = (v.use.gpu.container, v.use.gpu.uuid, victim.host_pid, result)
                reported.add(key)
                report = log.debug if key in self._reported else log.warning  # a refusal repeats every scan
                report(
                    "gpu_memory_kill",
                    container=v.use.gpu.container,
                    device_uuid=v.use.gpu.uuid,
                    host_pid=victim.host_pid,
                    used_mib=victim.used_bytes // core.MIB,
                    result=result,
                )
                if result == KILLED:
                    killed.setdefault((v.use.gpu.container, v.use.gpu.uuid), []).append(victim.host_pid)
        self._reported = reported
        over = {(v.use.gpu.container, v.use.gpu.uuid): v for v in verdicts if v.over_limit}
        for v in self._episodes.update(verdicts):
            self.episodes.labels(policy).inc()
            log.warning(
                "gpu_memory_over_limit",
                container=v.use.gpu.container,
                device_uuid=v.use.gpu.uuid,
                real_bytes=v.use.real_bytes,
                accounted_bytes=v.use.gpu.accounted_bytes,
                limit_bytes=v.use.gpu.limit_bytes,
                policy=policy,
            )
            self._pending[(v.use.gpu.container, v.use.gpu.uuid)] = (v, 0)
        out = []
        for episode, (first, waited) in list(self._pending.items()):
            latest = over.get(episode, first)
            if policy == core.ENFORCE and episode in over and episode not in killed and waited < EVENT_WAIT_SCANS:
                self._pending[episode] = (first, waited + 1)  # the Event says what the policy did: give it a few scans
                continue
            del self._pending[episode]
            not_killed = sorted({result for c, u, _, result in reported if (c, u) == episode and result != KILLED})
            out.append((latest, core.event_message(latest, policy, killed.get(episode, []), not_killed)))
        return out

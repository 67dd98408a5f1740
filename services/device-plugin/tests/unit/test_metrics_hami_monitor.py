"""Metric parity with HAMi's vGPU monitor (cmd/vGPUmonitor/metrics.go): after one monitor scan of two containers'
accounting regions, the plugin's exposition carries every HAMi name with HAMi's type, label names (plus
``zone="vGPU"``) and scales (utilisation 0..100, bytes, seconds); HAMi's pre-v2.9 names only with legacy-metrics; our
own metrics under their own names. HAMi-WebUI's PromQL for NVIDIA cards selects series that exist.

The expected catalogue is written from HAMi's source, not from our module. Regions are real files built by the
plugin's region writer; the NVML driver is a double (named so) that reports fixed samples; pods come from the
plugin's pod cache. The exposition is parsed with prometheus_client's own text parser.
"""

from __future__ import annotations

import re
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hami_device_plugin.adapters.nvml import DeviceTelemetry
from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.app.metrics import MigDeviceSample, PluginMetrics
from hami_device_plugin.app.monitor import Monitor
from hami_device_plugin.app.settings import PROGRAM
from hami_device_plugin.core import region
from hami_device_plugin.core.inventory import Gpu
from hami_device_plugin.core.records import ContainerRecord, RecordDevice
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_monitor_trust import LAST_KERNEL_FIELD, NoProcs, poke

MIB = 1 << 20
G0 = "GPU-fa4e0000-0000-4000-8000-000000000000"
G1 = "GPU-fa4e0000-0000-4000-8000-000000000001"
NODE = "gpu-node-1"
CONTAINER = ("namespace", "pod", "container", "vdevice_index", "device_uuid")
HOST = ("node", "device_index", "device_uuid", "device_type")
LEGACY_CONTAINER = ("podnamespace", "podname", "ctrname", "vdeviceid", "deviceuuid")
LEGACY_HOST = ("nodeid", "deviceidx", "deviceuuid", "devicetype")

# HAMi v2.9+ vGPU monitor metrics: name -> labels (all gauges, under zone="vGPU").
HAMI = {
    "hami_host_gpu_memory_used_bytes": HOST,
    "hami_host_gpu_utilization_ratio": HOST,
    "hami_host_gpu_memory_controller_utilization_ratio": ("device_index", "device_uuid", "device_type"),
    "hami_host_gpu_temperature_celsius": HOST,
    "hami_host_gpu_power_usage_watts": HOST,
    "hami_host_gpu_ecc_errors_total": (*HOST, "error_type"),
    "hami_vgpu_memory_used_bytes": CONTAINER,
    "hami_vgpu_memory_limit_bytes": CONTAINER,
    "hami_container_device_memory_bytes": CONTAINER,
    "hami_container_device_utilization_ratio": CONTAINER,
    "hami_container_last_kernel_elapsed_seconds": CONTAINER,
    "hami_mig_device_info": (*CONTAINER, "mig_uuid", "profile", "gpu_instance_id", "compute_instance_id"),
    # HAMi-core's split of a container's memory (context_size, module_size, data_size of its slots)
    "hami_vgpu_memory_context_bytes": CONTAINER,
    "hami_vgpu_memory_module_bytes": CONTAINER,
    "hami_vgpu_memory_buffer_bytes": CONTAINER,
}
LEGACY = {
    "HostGPUMemoryUsage": LEGACY_HOST,
    "HostCoreUtilization": LEGACY_HOST,
    "vGPU_device_memory_usage_in_bytes": LEGACY_CONTAINER,
    "vGPU_device_memory_limit_in_bytes": LEGACY_CONTAINER,
    "Device_memory_desc_of_container": (*LEGACY_CONTAINER, "context", "module", "data", "offset"),
    "Device_utilization_desc_of_container": LEGACY_CONTAINER,
    "Device_last_kernel_of_container": LEGACY_CONTAINER,
    "MigInfo": (*LEGACY_CONTAINER, "instanceid"),
}
OURS_CONTAINER = (
    "hami_vgpu_memory_peak_bytes",
    "hami_vgpu_memory_refusals",
    "hami_container_device_utilization_fraction",
    "hami_container_device_contended",
    "hami_container_device_priority_hold",
)
OURS_HOST = ("hami_host_gpu_memory_total_bytes", "hami_host_gpu_utilization_fraction")

# HAMi-WebUI (server/internal/exporter/exporter.go, NVIDIA provider): the queries it sends for a container on a
# card; the rest of its NVIDIA queries are DCGM's. {uuid}, {ns}, {pod}, {ctr} are filled per container.
WEBUI_QUERIES = (
    'avg(avg_over_time(hami_container_device_utilization_ratio{{device_uuid="{uuid}", namespace="{ns}", '
    'pod="{pod}", container="{ctr}"}}[1m]))',
    'avg(hami_vgpu_memory_used_bytes{{device_uuid="{uuid}", namespace="{ns}", pod="{pod}", container="{ctr}"}})',
    # its earlier form of the utilisation query
    'sum_over_time(hami_container_device_utilization_ratio{{device_uuid="{uuid}", namespace="{ns}", pod="{pod}", '
    'container="{ctr}"}}[1m]) == 0',
)


class FakeNvml:
    """NVML double: fixed per-process SM samples, utilisation, memory and telemetry per GPU."""

    def __init__(self) -> None:
        self.per_pid = {G0: {100: 40}, G1: {200: 15}}
        self.device_pct = {G0: 55, G1: 20}
        self.rates_memory = {G0: 31, G1: 4}

    def process_utilization(self, uuid: str, since_us: int) -> tuple[dict[int, int], int]:
        return dict(self.per_pid[uuid]), since_us + 1

    def utilization(self, uuid: str) -> int | None:
        return self.device_pct[uuid]

    def memory(self, uuid: str) -> tuple[int, int] | None:
        return (3000 * MIB, 16384 * MIB)

    def process_memory(self, uuid: str) -> dict[int, int] | None:
        return {}

    def telemetry(self, uuid: str) -> DeviceTelemetry:
        if uuid == G1:  # a card that reports no temperature, power or ECC (NVML_ERROR_NOT_SUPPORTED)
            return DeviceTelemetry(memory_utilization_pct=self.rates_memory[uuid])
        return DeviceTelemetry(
            memory_utilization_pct=self.rates_memory[uuid], temperature_c=63, power_w=71.5, ecc_corrected=2,
            ecc_uncorrected=0,
        )  # fmt: skip


LIB_1_2, LIB_1_3 = (1 << 16) | 2, (1 << 16) | 3
CONTEXT, MODULE = 0, 1


def kind_entry(kind: int, device: int, nbytes: int) -> int:
    """One kind_bytes entry of a process slot as region_layout.h (1.3) defines it."""
    return (1 << 63) | (kind << 60) | (device << 56) | nbytes


def write_region(
    root: Path,
    name: str,
    *,
    pid: int,
    uuid: str,
    used_mib: int,
    kernel_age_s: float,
    lib_version: int = LIB_1_3,
    kinds: tuple[int, ...] = (),
) -> Path:
    """A region with one live process slot holding all of device 0's use; ``kinds``: its kind_bytes entries."""
    spec = region.RegionSpec(devices=(region.RegionDevice(uuid, 1000 * MIB, 50),))
    image = bytearray(region.build_region(spec, 1))
    entries = (*kinds, *(0,) * (4 - len(kinds)))
    struct.pack_into(
        "<IiQiI4QQQ",
        image,
        region.SLOTS_OFFSET,
        region.SLOT_LIVE,
        pid,
        500,
        0,
        lib_version,
        *entries,
        0,
        used_mib * MIB,
    )  # state, pid, start time, host pid, library, kinds, reserved, used[0]
    directory = root / name
    directory.mkdir(parents=True)
    path = directory / f"{name}.cache"
    path.write_bytes(bytes(image))
    poke(path, region.DEVICES_OFFSET, "<Q", used_mib * MIB)  # device 0's used_bytes
    poke(path, region.DEVICES_OFFSET + LAST_KERNEL_FIELD, "<Q", time.monotonic_ns() - int(kernel_age_s * 1e9))
    return path


def pod(uid: str, namespace: str, name: str, container: str) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "namespace": namespace, "name": name},
        "spec": {"nodeName": NODE, "containers": [{"name": container}]},
        "status": {"phase": "Running"},
    }


async def scanned(tmp_path: Path, *, legacy: bool) -> dict[str, Any]:
    """One scan of two containers (ml/train on G0, web/serve on G1) and a MIG allocation; the exposition, parsed."""
    # train's process is of a 1.3 library: 300 MiB of contexts and 4 MiB of modules in its 700 MiB
    write_region(
        tmp_path,
        "uid-a_train",
        pid=100,
        uuid=G0,
        used_mib=700,
        kernel_age_s=3,
        kinds=(kind_entry(CONTEXT, 0, 300 * MIB), kind_entry(MODULE, 0, 4 * MIB)),
    )
    # serve's is of a 1.2 library (no split) in a slot whose previous 1.3 owner left entries: they do not count
    write_region(
        tmp_path,
        "uid-b_serve",
        pid=200,
        uuid=G1,
        used_mib=250,
        kernel_age_s=40,
        lib_version=LIB_1_2,
        kinds=(kind_entry(CONTEXT, 0, 200 * MIB),),
    )
    records = {
        "uid-a_train": ContainerRecord("uid-a", "train", 1, (RecordDevice(G0, 1000 * MIB, 50),)),
        "uid-b_serve": ContainerRecord("uid-b", "serve", 1, (RecordDevice(G1, 800 * MIB, 30),)),
    }
    pods = PodCache()
    pods.replace([pod("uid-a", "ml", "train", "train"), pod("uid-b", "web", "serve", "serve")])
    metrics = PluginMetrics.create("9.8.7", node=NODE, legacy=legacy)
    gpus = (Gpu(uuid=G0, index=0, name="NVIDIA A100", memory_mib=16384), Gpu(uuid=G1, index=1, name="Tesla T4",
                                                                               memory_mib=16384))  # fmt: skip
    monitor = Monitor(
        regions_dir=tmp_path,
        driver=FakeNvml(),  # type: ignore[arg-type]  # the double implements what the monitor calls
        gpus=lambda: gpus,
        pods=pods,
        metrics=metrics,
        cleanup_grace=300,
        procs=NoProcs(),
        records=records.get,
        verify_pod_cgroup=False,
    )
    await monitor.scan_once()
    metrics.monitor.migs = (MigDeviceSample("ml", "mig-job", "main", 0, G0, "MIG-1234", "2g.10gb", 3, 0),)
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def check(families: dict[str, Any], name: str, labels: tuple[str, ...], *, zone: bool = True) -> Any:
    assert name in families, f"{name} is not exported"
    family = families[name]
    assert family.type == "gauge", (name, family.type)
    assert family.samples, f"{name} has no series"
    for sample in family.samples:
        assert sample.name == name
        assert set(sample.labels) == ({*labels, "zone"} if zone else set(labels)), (name, sorted(sample.labels))
        assert not zone or sample.labels["zone"] == "vGPU"
    return family


def values(family: Any, *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels[k] for k in keys): s.value for s in family.samples}


async def test_every_hami_monitor_metric_is_exported_with_hamis_type_labels_and_scale(tmp_path: Path) -> None:
    families = await scanned(tmp_path, legacy=False)
    for name, labels in HAMI.items():
        check(families, name, labels)
    train, serve = ("ml", "train", "train", "0", G0), ("web", "serve", "serve", "0", G1)
    used = values(families["hami_vgpu_memory_used_bytes"], *CONTAINER)
    assert used == {train: 700 * MIB, serve: 250 * MIB}
    # the split of a 1.3 library's slots; a 1.2 library's (no split) is all buffer
    assert values(families["hami_vgpu_memory_context_bytes"], *CONTAINER) == {train: 300 * MIB, serve: 0}
    assert values(families["hami_vgpu_memory_module_bytes"], *CONTAINER) == {train: 4 * MIB, serve: 0}
    assert values(families["hami_vgpu_memory_buffer_bytes"], *CONTAINER) == {train: 396 * MIB, serve: 250 * MIB}
    assert values(families["hami_container_device_memory_bytes"], *CONTAINER) == used
    # the limit is the plugin's record of the container, in bytes
    assert values(families["hami_vgpu_memory_limit_bytes"], *CONTAINER) == {train: 1000 * MIB, serve: 800 * MIB}
    # utilisation in percent (0..100) as HAMi's smUtil: the NVML samples of the container's processes
    assert values(families["hami_container_device_utilization_ratio"], *CONTAINER) == {train: 40, serve: 15}
    elapsed = values(families["hami_container_last_kernel_elapsed_seconds"], *CONTAINER)
    assert elapsed[train] == pytest.approx(3, abs=1)
    assert elapsed[serve] == pytest.approx(40, abs=1)

    host = ("device_uuid", "device_index", "node", "device_type")
    # device_type as in the node's register (and so in the scheduler's metrics): NVML's name, NVIDIA- prefixed once
    a100, t4 = (G0, "0", NODE, "NVIDIA A100"), (G1, "1", NODE, "NVIDIA-Tesla T4")
    assert values(families["hami_host_gpu_utilization_ratio"], *host) == {a100: 55, t4: 20}
    assert values(families["hami_host_gpu_memory_used_bytes"], *host) == {a100: 3000 * MIB, t4: 3000 * MIB}
    mem_util = values(families["hami_host_gpu_memory_controller_utilization_ratio"], "device_uuid", "device_type")
    assert mem_util == {(G0, "NVIDIA A100"): 31, (G1, "NVIDIA-Tesla T4"): 4}
    # a card that does not report temperature, power or ECC has no such series (HAMi skips NOT_SUPPORTED)
    assert values(families["hami_host_gpu_temperature_celsius"], *host) == {a100: 63}
    assert values(families["hami_host_gpu_power_usage_watts"], *host) == {a100: 71.5}
    ecc = values(families["hami_host_gpu_ecc_errors_total"], "device_uuid", "error_type")
    assert ecc == {(G0, "corrected"): 2, (G0, "uncorrected"): 0}

    mig = families["hami_mig_device_info"].samples
    assert [(s.labels["mig_uuid"], s.labels["profile"], s.labels["gpu_instance_id"], s.value) for s in mig] == [
        ("MIG-1234", "2g.10gb", "3", 1)
    ]
    build = families["hami_build_info"].samples
    assert len(build) == 1
    assert build[0].value == 1
    assert build[0].labels["version"] == "9.8.7"
    assert set(build[0].labels) == {"version", "revision", "build_date", "go_version", "compiler", "platform"}


async def test_legacy_names_only_with_the_flag_with_hamis_old_labels(tmp_path: Path) -> None:
    assert not set(LEGACY) & set(await scanned(tmp_path / "off", legacy=False))
    families = await scanned(tmp_path / "on", legacy=True)
    for name, labels in {**HAMI, **LEGACY}.items():
        check(families, name, labels)
    assert values(families["HostCoreUtilization"], "deviceuuid", "nodeid") == {(G0, NODE): 55, (G1, NODE): 20}
    old = values(families["vGPU_device_memory_usage_in_bytes"], "podname", "ctrname", "deviceuuid")
    assert old == {("train", "train", G0): 700 * MIB, ("serve", "serve", G1): 250 * MIB}
    util = values(families["Device_utilization_desc_of_container"], "podname", "deviceuuid")
    assert util == {("train", G0): 40, ("serve", G1): 15}
    # the split as label values in decimal bytes (HAMi's form; no offset in hamicore), the value the whole use
    split = values(families["Device_memory_desc_of_container"], "podname", "context", "module", "data", "offset")
    assert split == {
        ("train", str(300 * MIB), str(4 * MIB), str(396 * MIB), "0"): 700 * MIB,
        ("serve", "0", "0", str(250 * MIB), "0"): 250 * MIB,
    }
    assert values(families["MigInfo"], "deviceuuid", "instanceid") == {(G0, "3"): 1}


async def test_our_own_metrics_keep_their_names_and_the_fraction_moves_aside(tmp_path: Path) -> None:
    families = await scanned(tmp_path, legacy=False)
    for name in OURS_CONTAINER:
        check(families, name, CONTAINER, zone=False)
    for name in OURS_HOST:
        check(families, name, HOST, zone=False)
    fraction = values(families["hami_container_device_utilization_fraction"], "pod")
    assert fraction == {("train",): 0.4, ("serve",): 0.15}
    assert values(families["hami_host_gpu_utilization_fraction"], "device_uuid") == {(G0,): 0.55, (G1,): 0.2}
    assert values(families["hami_host_gpu_memory_total_bytes"], "device_uuid") == {(G0,): 16384 * MIB,
                                                                                   (G1,): 16384 * MIB}  # fmt: skip


def selectors(query: str) -> list[tuple[str, dict[str, str]]]:
    """(metric, equality matchers) of every selector in a PromQL expression."""
    out = []
    for name, body in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", query):
        matchers = dict(re.findall(r'([a-zA-Z_]\w*)\s*=\s*"([^"]*)"', body))
        assert len(matchers) == body.count("="), f"only equality matchers expected in {body}"
        out.append((name, matchers))
    return out


async def test_hami_webui_queries_select_series_of_every_container(tmp_path: Path) -> None:
    families = await scanned(tmp_path, legacy=False)
    containers = [("ml", "train", "train", G0), ("web", "serve", "serve", G1)]
    for template in WEBUI_QUERIES:
        for ns, pod_name, ctr, uuid in containers:
            query = template.format(uuid=uuid, ns=ns, pod=pod_name, ctr=ctr)
            found = selectors(query)
            assert found, query
            for metric, matchers in found:
                assert metric in families, (metric, query)
                hits = [s for s in families[metric].samples if all(s.labels.get(k) == v for k, v in matchers.items())]
                assert len(hits) == 1, (query, hits)
                if "utilization" in metric:
                    assert 0 <= hits[0].value <= 100  # WebUI reads it as percent


def test_the_legacy_flag_is_hamis_name_and_off_by_default() -> None:
    base = {"HAMI_DEVICE_PLUGIN_NODE_NAME": NODE}
    assert PROGRAM.load_settings([], base).legacy_metrics is False
    assert PROGRAM.load_settings(["--legacy-metrics"], base).legacy_metrics is True


class CountingNvml(FakeNvml):
    def __init__(self) -> None:
        super().__init__()
        self.telemetry_reads: list[str] = []

    def telemetry(self, uuid: str) -> DeviceTelemetry:
        self.telemetry_reads.append(uuid)
        return super().telemetry(uuid)


async def test_telemetry_is_read_at_most_every_five_seconds_per_gpu(tmp_path: Path) -> None:
    """Temperature, power, ECC and memory-controller utilisation are for the metrics only: the 250 ms scan does not
    pay four more NVML calls per GPU every time."""
    driver = CountingNvml()
    gpu = Gpu(uuid=G0, index=0, name="NVIDIA A100", memory_mib=16384)
    metrics = PluginMetrics.create("t", node=NODE)
    monitor = Monitor(
        regions_dir=tmp_path,
        driver=driver,  # type: ignore[arg-type]  # the double implements what the monitor calls
        gpus=lambda: (gpu,),
        pods=None,
        metrics=metrics,
        cleanup_grace=300,
        procs=NoProcs(),
    )
    for _ in range(3):
        await monitor.scan_once()
    assert driver.telemetry_reads == [G0]
    assert [h.temperature_c for h in metrics.monitor.hosts] == [63]  # the last read stays published

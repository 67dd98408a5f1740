"""Device config (defaults + per-node file) and what is advertised and registered."""

from __future__ import annotations

import json

import pytest
from hami_device_plugin.core.config import DeviceConfig, NodeConfigError, apply_node_config, node_config_warnings
from hami_device_plugin.core.inventory import Gpu, register_devices, virtual_devices
from hami_shared.node_register import decode_node_devices, encode_node_devices

GPU0 = Gpu(uuid="GPU-00000000-0000-4000-8000-000000000000", index=0, name="Tesla V100-PCIE-32GB", memory_mib=32768)
GPU1 = Gpu(
    uuid="GPU-00000000-0000-4000-8000-000000000001", index=1, name="NVIDIA A100-SXM4-80GB", memory_mib=81920, numa=1
)


def test_split_count_replicas_per_gpu_in_index_order() -> None:
    devices = virtual_devices([GPU1, GPU0], DeviceConfig(split_count=3))
    assert [d.id for d in devices] == [f"{GPU0.uuid}-{n}" for n in range(3)] + [f"{GPU1.uuid}-{n}" for n in range(3)]
    assert all(d.healthy and d.numa is None for d in devices)


def test_numa_attached_only_when_asked() -> None:
    devices = virtual_devices([GPU1], DeviceConfig(split_count=1, numa_topology=True))
    assert devices[0].numa == 1


def test_unhealthy_gpu_makes_all_its_replicas_unhealthy() -> None:
    sick = Gpu(uuid=GPU0.uuid, index=0, name="x", memory_mib=1, healthy=False)
    devices = virtual_devices([sick, GPU1], DeviceConfig(split_count=2))
    assert [d.healthy for d in devices] == [False, False, True, True]


def test_register_devices_scales_and_matches_hami_json() -> None:
    config = DeviceConfig(split_count=10, memory_scaling=1.5, cores_scaling=2.0)
    value = encode_node_devices(register_devices([GPU0, GPU1], config))
    assert json.loads(value) == [
        {
            "id": GPU0.uuid,
            "count": 10,
            "devmem": 49152,
            "devcore": 200,
            "type": "NVIDIA-Tesla V100-PCIE-32GB",
            "mode": "hami-core",
            "health": True,
        },
        {
            "id": GPU1.uuid,
            "index": 1,
            "count": 10,
            "devmem": 122880,
            "devcore": 200,
            "type": "NVIDIA A100-SXM4-80GB",
            "numa": 1,
            "mode": "hami-core",
            "health": True,
        },
    ]
    assert decode_node_devices(value)[1].devmem == 122880


def test_filtered_devices_by_uuid_and_index() -> None:
    config = DeviceConfig(split_count=1, filter_uuids=frozenset({GPU0.uuid}))
    assert [d.uuid for d in virtual_devices([GPU0, GPU1], config)] == [GPU1.uuid]
    config = DeviceConfig(split_count=1, filter_indices=frozenset({1}))
    assert [d.id for d in register_devices([GPU0, GPU1], config)] == [GPU0.uuid]


def test_gpu_without_memory_size_uses_preconfigured_or_is_skipped() -> None:
    unified = Gpu(uuid=GPU0.uuid, index=0, name="NVIDIA GB10", memory_mib=None)
    assert register_devices([unified], DeviceConfig()) == ()
    assert register_devices([unified], DeviceConfig(preconfigured_memory_mib=1000))[0].devmem == 1000


NODE = "gpu-node-1"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"devicesplitcount": 4}, {"split_count": 4}),
        ({"devicememoryscaling": 2, "devicecorescaling": 1.5}, {"memory_scaling": 2.0, "cores_scaling": 1.5}),
        ({"operatingmode": "mps", "libcudaloglevel": 3}, {"mode": "mps", "libcuda_log_level": 3}),
        (
            {"filterdevices": {"uuid": ["GPU-a"], "index": [2]}},
            {"filter_uuids": frozenset({"GPU-a"}), "filter_indices": frozenset({2})},
        ),
        (
            {"enablegetpreferredallocation": False, "enablenumatopology": True},
            {"preferred_allocation": False, "numa_topology": True},
        ),
    ],
    ids=["split", "scaling", "mode-loglevel", "filter", "flags"],
)
def test_node_entry_overrides_defaults(entry: dict[str, object], expected: dict[str, object]) -> None:
    base = DeviceConfig()
    document = {"nodeconfig": [{"name": "other", "devicesplitcount": 99}, {"name": NODE, **entry}]}
    config = apply_node_config(base, document, NODE, source="config.json")
    for field, value in expected.items():
        assert getattr(config, field) == value


def test_other_nodes_entries_leave_defaults() -> None:
    base = DeviceConfig(split_count=7)
    assert apply_node_config(base, {"nodeconfig": [{"name": "x", "devicesplitcount": 2}]}, NODE, source="f") == base


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"nodeconfig": [{"name": NODE, "devicesplitcount": "ten"}]}, "expected an integer"),
        ({"nodeconfig": [{"name": NODE, "devicesplitcount": 0}]}, "split count 0"),
        ({"nodeconfig": [{"name": NODE, "operatingmode": "vgpu"}]}, "operating mode 'vgpu'"),
        ({"nodeconfig": [{"name": NODE, "filterdevices": {"uuids": []}}]}, "filterdevices"),
        ({"nodeconfig": [{"name": NODE}, {"name": NODE}]}, "has 2 entries"),
        ([1, 2], "expected an object"),
    ],
    ids=["type", "range", "mode", "filter-shape", "duplicate", "not-object"],
)
def test_bad_node_config_is_refused_with_the_key(document: object, message: str) -> None:
    with pytest.raises(NodeConfigError) as excinfo:
        apply_node_config(DeviceConfig(), document, NODE, source="/etc/hami/config.json")
    assert message in str(excinfo.value)
    assert "/etc/hami/config.json" in str(excinfo.value)


@pytest.mark.parametrize(
    ("entry", "path"),
    [
        ({"devicesplitcount": "ten"}, "nodeconfig[name=gpu-node-1].devicesplitcount: expected an integer, got 'ten'"),
        ({"devicesplitcount": 0}, "nodeconfig[name=gpu-node-1].devicesplitcount: split count 0 must be between"),
        ({"devicememoryscaling": -1}, "nodeconfig[name=gpu-node-1].devicememoryscaling: memory scaling -1.0"),
        ({"libcudaloglevel": 9}, "nodeconfig[name=gpu-node-1].libcudaloglevel: libcuda log level 9"),
        ({"filterdevices": {"index": ["0"]}}, "nodeconfig[name=gpu-node-1].filterdevices: 'index' must be"),
    ],
)
def test_a_wrong_value_is_refused_with_its_key_path(entry: dict[str, object], path: str) -> None:
    with pytest.raises(NodeConfigError) as excinfo:
        apply_node_config(DeviceConfig(), {"nodeconfig": [{"name": NODE, **entry}]}, NODE, source="config.json")
    assert str(excinfo.value).startswith(f"config.json: {path}")


def test_unknown_keys_are_ignored_like_hami_and_reported_with_their_path() -> None:
    document = {
        "nodeconfig": [{"name": NODE, "splitcount": 2, "devicesplitcount": 3}, {"name": "other", "typo": 1}],
        "nodes": [],
    }
    assert apply_node_config(DeviceConfig(), document, NODE, source="config.json").split_count == 3
    warnings = node_config_warnings(document, NODE, source="config.json")
    assert warnings[0].startswith("config.json: nodes: unknown key, ignored")
    assert warnings[1].startswith(f"config.json: nodeconfig[name={NODE}].splitcount: unknown key, ignored")
    assert len(warnings) == 2  # another node's entry is that node's business


def test_libcudaloglevel_as_hami_writes_it_a_string() -> None:
    # HAMi's NodeDefaultConfig.LogLevel is a Go string type: its config.json carries "libcudaloglevel": "3".
    document = {"nodeconfig": [{"name": NODE, "libcudaloglevel": "3"}]}
    assert apply_node_config(DeviceConfig(), document, NODE, source="config.json").libcuda_log_level == 3


@pytest.mark.parametrize("value", ["²", "٣", "1²", "123", "-1"])
def test_a_libcudaloglevel_that_is_not_one_or_two_ascii_digits_is_refused_with_its_path(value: str) -> None:
    # str.isdigit() accepts "²" and int() then raised a plain ValueError that stopped the node-config task.
    document = {"nodeconfig": [{"name": NODE, "libcudaloglevel": value}]}
    with pytest.raises(NodeConfigError, match="libcudaloglevel"):
        apply_node_config(DeviceConfig(), document, NODE, source="config.json")

"""HAMi's device-config.yaml and config.json read by the device plugin: from HAMi's published defaults it reaches
the device settings HAMi's device plugin reaches on each node; an operator's values apply; ours override."""

from __future__ import annotations

import pathlib

import pytest
from hami_device_plugin.app.settings import PROGRAM, device_config_for_node, node_config_warnings_of
from hami_device_plugin.core.config import DeviceConfig
from hami_shared.config import ConfigError

FIXTURES = pathlib.Path(__file__).parents[4] / "shared" / "tests" / "fixtures" / "hami"
HAMI_DEFAULT = FIXTURES / "device-config.yaml"
HAMI_NODE_CONFIG = FIXTURES / "config.json"
NAMED_NODE = "m5-cloudinfra-online02"  # the one entry of HAMi's default config.json


def load(node: str, *argv: str) -> DeviceConfig:
    settings = PROGRAM.load_settings(
        ["--node-name", node, "--hami-device-config", str(HAMI_DEFAULT), "--node-config", str(HAMI_NODE_CONFIG), *argv],
        environ={},
    )
    return device_config_for_node(settings)


def test_hamis_published_defaults_give_hamis_device_settings_on_each_node() -> None:
    # device-config.yaml: deviceSplitCount 10, scalings 1, preConfiguredDeviceMemory 0, enableNumaTopology false,
    # libCudaLogLevel 1; config.json's entry: devicememoryscaling 1.8, devicesplitcount 10, operatingmode hami-core,
    # empty filterdevices (migstrategy none is the MIG plugin's).
    hami_everywhere = DeviceConfig(
        split_count=10,
        memory_scaling=1.0,
        cores_scaling=1.0,
        preconfigured_memory_mib=0,
        numa_topology=False,
        libcuda_log_level=1,
        mode="hami-core",
    )
    assert load("other-node") == hami_everywhere
    named = load(NAMED_NODE)
    assert named == DeviceConfig(
        split_count=10,
        memory_scaling=1.8,
        cores_scaling=1.0,
        preconfigured_memory_mib=0,
        numa_topology=False,
        libcuda_log_level=1,
        mode="hami-core",
    )
    settings = PROGRAM.load_settings(
        ["--node-name", NAMED_NODE, "--hami-device-config", str(HAMI_DEFAULT), "--node-config", str(HAMI_NODE_CONFIG)],
        environ={},
    )
    injection = settings.injection(named)
    # What HAMi's device plugin injects into a container from these files.
    assert (injection.libcuda_log_level, injection.core_policy, injection.oversubscribe) == (1, "default", True)
    assert settings.resource_names.count == "nvidia.com/gpu"
    assert settings.resource_names.priority == "nvidia.com/priority"
    assert node_config_warnings_of(settings) == ()  # every key of HAMi's entry is known


def test_our_settings_override_hamis_file_and_the_node_entry_overrides_both() -> None:
    assert load("other-node", "--split-count", "4").split_count == 4
    assert load("other-node", "--libcuda-log-level", "0").libcuda_log_level == 0
    assert load(NAMED_NODE, "--memory-scaling", "1.2").memory_scaling == 1.8  # the node's entry is per node


def test_an_operators_file_applies(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "device-config.yaml"
    path.write_text(
        "nvidia:\n  deviceSplitCount: 4\n  deviceMemoryScaling: 2\n  deviceCoreScaling: 1.5\n"
        "  preConfiguredDeviceMemory: 98304\n  enableNumaTopology: true\n  disableCoreLimit: true\n"
        "  resourceCountName: example.com/vgpu\n"
    )
    settings = PROGRAM.load_settings(["--node-name", "n", "--hami-device-config", str(path)], environ={})
    config = device_config_for_node(settings)
    assert (config.split_count, config.memory_scaling, config.cores_scaling) == (4, 2.0, 1.5)
    assert (config.preconfigured_memory_mib, config.numa_topology) == (98304, True)
    assert settings.injection(config).disable_core_limit
    assert settings.resource_name == "example.com/vgpu"


def test_a_wrong_value_stops_the_plugin_with_its_key_path(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "device-config.yaml"
    path.write_text("nvidia:\n  deviceSplitCount: ten\n")
    with pytest.raises(ConfigError, match=r'nvidia\.deviceSplitCount: expected an integer from 1 to 1024, got "ten"'):
        PROGRAM.load_settings(["--node-name", "n", "--hami-device-config", str(path)], environ={})
    node = tmp_path / "config.json"
    node.write_text('{"nodeconfig": [{"name": "n", "devicesplitcount": "ten"}]}')
    with pytest.raises(ConfigError, match=r"nodeconfig\[name=n\]\.devicesplitcount: expected an integer"):
        PROGRAM.load_settings(["--node-name", "n", "--node-config", str(node)], environ={})

"""HAMi's device-config.yaml read by the extender: from HAMi's published default it reaches HAMi's scheduler
settings (resource names, request defaults, memory factor); an operator's values apply; our settings override."""

from __future__ import annotations

import pathlib

import pytest
from hami_scheduler_extender.app.settings import PROGRAM
from hami_scheduler_extender.core.request import RequestDefaults
from hami_shared.config import ConfigError
from hami_shared.names import ResourceNames

HAMI_DEFAULT = pathlib.Path(__file__).parents[3] / "shared" / "tests" / "fixtures" / "hami" / "device-config.yaml"

# An operator's file in HAMi's format (the resource names of HAMi's own config test, pkg/scheduler/config).
OPERATOR = """\
nvidia:
  resourceCountName: volcano.sh/vgpu-number
  resourceMemoryName: volcano.sh/vgpu-memory
  resourceMemoryPercentageName: volcano.sh/vgpu-memory-percentage
  resourceCoreName: volcano.sh/vgpu-cores
  resourcePriorityName: volcano.sh/vgpu-priority
  defaultMemory: 4096
  defaultCores: 20
  defaultGPUNum: 2
  memoryFactor: 2
  deviceSplitCount: 4
"""


def test_hamis_published_default_gives_hamis_scheduler_settings() -> None:
    settings = PROGRAM.load_settings(["--hami-device-config", str(HAMI_DEFAULT)], environ={})
    # What HAMi's scheduler takes from this file (pkg/device/nvidia NvidiaConfig, InitDefaultDevices).
    assert settings.resource_names() == ResourceNames(
        count="nvidia.com/gpu",
        memory="nvidia.com/gpumem",
        memory_percentage="nvidia.com/gpumem-percentage",
        cores="nvidia.com/gpucores",
        priority="nvidia.com/priority",
    )
    assert settings.request_defaults() == RequestDefaults(
        default_memory=0, default_cores=0, default_gpu_num=1, memory_factor=1
    )
    assert PROGRAM.warnings is not None
    assert [w.split(": ", 1)[1] for w in PROGRAM.warnings(settings)] == [
        "section 'cambricon' is not read (only the nvidia section is)",
        "section 'hygon' is not read (only the nvidia section is)",
    ]


def test_an_operators_values_apply_and_ours_override(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "device-config.yaml"
    path.write_text(OPERATOR)
    settings = PROGRAM.load_settings(["--hami-device-config", str(path)], environ={})
    assert settings.resource_names().count == "volcano.sh/vgpu-number"
    assert settings.resource_names().priority == "volcano.sh/vgpu-priority"
    assert settings.request_defaults() == RequestDefaults(
        default_memory=4096, default_cores=20, default_gpu_num=2, memory_factor=2
    )
    ours = PROGRAM.load_settings(
        ["--hami-device-config", str(path), "--default-cores", "50"],
        environ={"HAMI_EXTENDER_RESOURCE_COUNT": "example.com/gpu"},
    )
    assert (ours.default_cores, ours.resource_count, ours.default_memory) == (50, "example.com/gpu", 4096)


def test_a_wrong_value_stops_the_extender_with_its_key_path(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "device-config.yaml"
    path.write_text("nvidia:\n  defaultGPUNum: two\n")
    with pytest.raises(ConfigError, match=r'nvidia\.defaultGPUNum: expected an integer from 1 to 128, got "two"'):
        PROGRAM.load_settings(["--hami-device-config", str(path)], environ={})


def test_known_mig_geometries_come_from_hamis_file(tmp_path: pathlib.Path) -> None:
    settings = PROGRAM.load_settings(["--hami-device-config", str(HAMI_DEFAULT)], environ={})
    geometries = settings.known_mig_geometries()
    assert [g.models[0] for g in geometries] == ["A30", "A100-SXM4-40GB", "A100-SXM4-80GB"]
    assert [[(e.name, e.count) for e in g] for g in geometries[0].geometries] == [
        [("1g.6gb", 4)],
        [("2g.12gb", 2)],
        [("4g.24gb", 1)],
    ]
    assert PROGRAM.load_settings([], environ={}).known_mig_geometries() == ()

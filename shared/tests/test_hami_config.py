"""HAMi's device-config.yaml: HAMi's published default read as HAMi reads it, every key checked with its path,
unknown keys and other vendors' sections reported, reading bounded, and the values layered under our settings."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
from hami_shared import hami_config
from hami_shared.config import MAX_CONFIG_FILE_BYTES, ConfigError, load_settings, setting
from hami_shared.hami_config import HamiConfigError, parse_device_config, read_device_config
from hami_shared.mig import GeometryEntry

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "hami"
DEFAULT = FIXTURES / "device-config.yaml"


def test_hamis_published_default_reads_to_hamis_values() -> None:
    config = read_device_config(DEFAULT)
    assert dict(config.nvidia) == {
        "resourceCountName": "nvidia.com/gpu",
        "resourceMemoryName": "nvidia.com/gpumem",
        "resourceMemoryPercentageName": "nvidia.com/gpumem-percentage",
        "resourceCoreName": "nvidia.com/gpucores",
        "resourcePriorityName": "nvidia.com/priority",
        "overwriteEnv": False,
        "defaultMemory": 0,
        "defaultCores": 0,
        "defaultGPUNum": 1,
        "preConfiguredDeviceMemory": 0,
        "memoryFactor": 1,
        "deviceSplitCount": 10,
        "deviceMemoryScaling": 1.0,
        "deviceCoreScaling": 1.0,
        "enableNumaTopology": False,
        "gpuCorePolicy": "default",
        "libCudaLogLevel": 1,
        "runtimeClassName": "",
        "knownMigGeometries": config.known_mig_geometries,
    }
    a30, a100_40, a100_80 = config.known_mig_geometries
    assert a30.models == ("A30",)
    assert a100_40.geometries[1] == (GeometryEntry("2g.10gb", 10240, 3), GeometryEntry("1g.5gb", 5120, 1))
    assert a100_80.geometries[3] == (GeometryEntry("7g.79gb", 80896, 1),)
    # The other vendors' sections are left alone, each named in a warning.
    assert config.warnings == (
        f"{DEFAULT}: section 'cambricon' is not read (only the nvidia section is)",
        f"{DEFAULT}: section 'hygon' is not read (only the nvidia section is)",
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("deviceSplitCount: ten", 'nvidia.deviceSplitCount: expected an integer from 1 to 1024, got "ten"'),
        ("deviceSplitCount: 0", "nvidia.deviceSplitCount: expected an integer from 1 to 1024, got 0"),
        ("deviceMemoryScaling: -1", "nvidia.deviceMemoryScaling: expected a number greater than 0 and at most 100"),
        ("deviceCoreScaling: .nan", "nvidia.deviceCoreScaling: expected a number greater than 0"),
        ("defaultCores: 101", "nvidia.defaultCores: expected an integer from 0 to 100, got 101"),
        ("defaultMemory: 1.5", "nvidia.defaultMemory: expected an integer >= 0, got 1.5"),
        ("defaultGPUNum: true", "nvidia.defaultGPUNum: expected an integer from 1 to 128, got true"),
        ("memoryFactor: 0", "nvidia.memoryFactor: expected an integer >= 1, got 0"),
        ("libCudaLogLevel: 7", "nvidia.libCudaLogLevel: expected an integer from 0 to 5, got 7"),
        ("enableNumaTopology: maybe", 'nvidia.enableNumaTopology: expected true or false, got "maybe"'),
        ("gpuCorePolicy: always", 'nvidia.gpuCorePolicy: expected one of default, force, disable, got "always"'),
        ("resourceCountName: gpu", "nvidia.resourceCountName: expected an extended resource name"),
        (
            "knownMigGeometries: [{models: [A30], allowedGeometries: [[{name: 1g.6gb, memory: 6G, count: 4}]]}]",
            "nvidia.knownMigGeometries[0].allowedGeometries[0][0].memory: expected an integer from 1",
        ),
        ("knownMigGeometries: {}", "nvidia.knownMigGeometries: expected a list"),
    ],
)
def test_a_wrong_value_is_refused_with_its_key_path(line: str, message: str) -> None:
    with pytest.raises(HamiConfigError) as info:
        parse_device_config(f"nvidia:\n  {line}\n")
    assert str(info.value).startswith(f"device-config.yaml: {message}")


def test_unknown_keys_are_warned_with_their_path_and_not_applied() -> None:
    config = parse_device_config("nvidia:\n  deviceSplitCont: 4\n  deviceSplitCount: 5\n  migProfileAllowlist: []\n")
    assert dict(config.nvidia) == {"deviceSplitCount": 5, "migProfileAllowlist": []}
    assert config.warnings == (
        "device-config.yaml: nvidia.deviceSplitCont: unknown key, ignored",
        "device-config.yaml: nvidia.migProfileAllowlist: a HAMi key this product does not apply, ignored",
    )


def test_lib_cuda_log_level_as_hamis_string_type() -> None:
    assert parse_device_config("nvidia:\n  libCudaLogLevel: '3'\n").nvidia["libCudaLogLevel"] == 3


def test_overwrite_env_is_read_as_hamis_boolean_without_a_warning() -> None:
    # The webhook applies it (services/webhook tests); HAMi's chart renders it as the string "false" or "true".
    config = parse_device_config("nvidia:\n  overwriteEnv: 'true'\n")
    assert config.nvidia["overwriteEnv"] is True
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- nvidia", "expected a mapping of vendor sections"),
        ("nvidia: 3", "nvidia: expected a mapping of settings"),
        ("nvidia: [" * 40, "nested deeper than"),
        ("nvidia: {a: 1", "not valid YAML"),
    ],
)
def test_a_wrong_document_is_refused(text: str, message: str) -> None:
    with pytest.raises(HamiConfigError, match=r"device-config\.yaml: ") as info:
        parse_device_config(text)
    assert message in str(info.value)


def test_reading_is_bounded(tmp_path: pathlib.Path) -> None:
    big = tmp_path / "device-config.yaml"
    big.write_text("nvidia:\n" + "#" * MAX_CONFIG_FILE_BYTES)
    with pytest.raises(HamiConfigError, match="larger than"):
        read_device_config(big)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"nvidia: \xff\n")
    with pytest.raises(HamiConfigError, match="not UTF-8"):
        read_device_config(binary)
    with pytest.raises(HamiConfigError, match="cannot read it"):
        read_device_config(tmp_path / "missing.yaml")


def test_an_empty_file_or_section_sets_nothing() -> None:
    assert parse_device_config("").nvidia == {}
    assert parse_device_config("nvidia:\n").nvidia == {}
    assert parse_device_config("nvidia:\n  defaultMemory:\n").nvidia == {}


# --- under our settings -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Settings:
    hami_device_config: pathlib.Path | None = setting(None, help="HAMi's file")
    split_count: int = setting(2, help="split")
    runtime_class: str | None = setting(None, help="runtime class")


_UNDERLAY = hami_config.underlay(
    "hami_device_config", {"deviceSplitCount": "split_count", "runtimeClassName": "runtime_class"}
)


def _load(tmp_path: pathlib.Path, text: str, argv: list[str], environ: dict[str, str]) -> _Settings:
    path = tmp_path / "device-config.yaml"
    path.write_text(text)
    return load_settings(
        _Settings,
        prog="t",
        description="t",
        env_prefix="T",
        argv=["--hami-device-config", str(path), *argv],
        environ=environ,
        underlay=_UNDERLAY,
    )


def test_hamis_file_lies_under_our_config_file_environment_and_flags(tmp_path: pathlib.Path) -> None:
    text = "nvidia:\n  deviceSplitCount: 7\n  runtimeClassName: nvidia\n"
    assert _load(tmp_path, text, [], {}) == _Settings(
        hami_device_config=tmp_path / "device-config.yaml", split_count=7, runtime_class="nvidia"
    )
    assert _load(tmp_path, text, [], {"T_SPLIT_COUNT": "3"}).split_count == 3
    assert _load(tmp_path, text, ["--split-count", "4"], {"T_SPLIT_COUNT": "3"}).split_count == 4
    ours = tmp_path / "ours.yaml"
    ours.write_text("split-count: 5\n")
    assert _load(tmp_path, text, ["--config", str(ours)], {}).split_count == 5


def test_an_empty_string_is_hamis_unset(tmp_path: pathlib.Path) -> None:
    assert _load(tmp_path, 'nvidia:\n  runtimeClassName: ""\n', [], {}).runtime_class is None


def test_without_the_setting_nothing_is_read(tmp_path: pathlib.Path) -> None:
    assert load_settings(
        _Settings, prog="t", description="t", env_prefix="T", argv=[], environ={}, underlay=_UNDERLAY
    ) == (_Settings())


def test_a_wrong_file_stops_the_settings_with_the_key_path(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"device-config.yaml: nvidia.deviceSplitCount: expected an integer"):
        _load(tmp_path, "nvidia:\n  deviceSplitCount: ten\n", [], {})


def test_warnings_of_reads_the_file_the_settings_name(tmp_path: pathlib.Path) -> None:
    settings = _load(tmp_path, "nvidia:\n  typo: 1\n", [], {})
    assert hami_config.warnings_of("hami_device_config")(settings) == (
        f"{tmp_path / 'device-config.yaml'}: nvidia.typo: unknown key, ignored",
    )
    assert hami_config.warnings_of("hami_device_config")(_Settings()) == ()


def test_underlay_names_only_hamis_keys() -> None:
    with pytest.raises(ValueError, match="deviceSplitCnt"):
        hami_config.underlay("f", {"deviceSplitCnt": "split_count"})


def test_a_missing_file_applies_nothing_and_is_warned(tmp_path: pathlib.Path) -> None:
    # An optional ConfigMap volume whose ConfigMap does not exist: an empty directory.
    missing = tmp_path / "device-config.yaml"
    settings = load_settings(
        _Settings,
        prog="t",
        description="t",
        env_prefix="T",
        argv=["--hami-device-config", str(missing)],
        environ={},
        underlay=_UNDERLAY,
    )
    assert settings == _Settings(hami_device_config=missing)
    (warning,) = hami_config.warnings_of("hami_device_config")(settings)
    assert warning.startswith(f"{missing}: not found, HAMi's device configuration is not applied")


def test_a_mapping_json_cannot_show_is_refused_with_the_key_path_not_a_type_error() -> None:
    # YAML reads `2020-01-01` as a date: a key json.dumps refuses with TypeError, which _show now catches.
    with pytest.raises(HamiConfigError, match=r"nvidia\.defaultMemory"):
        parse_device_config("nvidia:\n  defaultMemory: {2020-01-01: 1}\n")

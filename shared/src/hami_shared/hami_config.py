"""HAMi's device configuration file, read as HAMi writes it: ``device-config.yaml`` of the ``hami-scheduler-device``
ConfigMap (HAMi's chart ``templates/scheduler/device-configmap.yaml``; the scheduler reads it with
``--device-config-file``, the device plugin with ``--config-file``).

Only the ``nvidia:`` section concerns this product; other vendors' sections (``cambricon``, ``hygon``, ``vnpus``,
...) are left alone with a warning. Every key of ``nvidia:`` that HAMi knows is accepted (:data:`NVIDIA_KEYS`) and
its value checked: a wrong value refuses the file with the key's path (``device-config.yaml:
nvidia.deviceSplitCount: expected an integer >= 1, got "ten"``); a key HAMi does not know is a warning (a later
HAMi may add keys; a typo shows up in the log). ``knownMigGeometries`` is parsed by :mod:`hami_shared.mig`.

Which of our settings each key sets is the service's business (each ``app/settings.py`` maps the keys it uses);
:func:`underlay` turns the file into settings values that lie under our own config file, environment and flags.
Reading is bounded like :mod:`hami_shared.config`'s (size, nesting depth; YAML aliases do not expand values that
are checked as scalars).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable, Mapping
from typing import Any, Final

import yaml

from hami_shared import mig
from hami_shared.config import ConfigError, load_yaml_bounded, read_text_bounded
from hami_shared.names import CORE_POLICIES

NVIDIA: Final = "nvidia"
FILE_NAME: Final = "device-config.yaml"
"""The key of the ConfigMap, and the file name HAMi's chart mounts it under (``/device-config.yaml``)."""


class HamiConfigError(ConfigError):
    """HAMi's device configuration cannot be used; the message names the file, the key path and what to write."""


def _show(value: object) -> str:
    """A value as the message quotes it: JSON-like, clipped."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=lambda v: type(v).__name__)
    except (ValueError, TypeError):  # TypeError: a mapping with keys JSON cannot name (YAML dates, numbers)
        text = type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _int(low: int, high: int = 2**31 - 1) -> Callable[[object], int]:
    expected = f"an integer >= {low}" if high == 2**31 - 1 else f"an integer from {low} to {high}"

    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected {expected}, got {_show(value)}")
        return value

    return check


def _number(value: object) -> float:
    # HAMi's scalings are float64; 0 or less would register no memory or cores, above 100 is surely a typo.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100 or math.isnan(value):
        raise ValueError(f"expected a number greater than 0 and at most 100, got {_show(value)}")
    return float(value)


def _bool(value: object) -> bool:
    # HAMi's chart renders some booleans from string values ({{ .Values.x | default "false" }}), so YAML may
    # hold them quoted; Go's yaml would read "false" into a bool field too.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"expected true or false, got {_show(value)}")


def _text(value: object) -> str:
    if not isinstance(value, str) or len(value) > 253:
        raise ValueError(f"expected a string of at most 253 characters, got {_show(value)}")
    return value


def _resource_name(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 253 or "/" not in value:
        raise ValueError(f"expected an extended resource name such as nvidia.com/gpu, got {_show(value)}")
    return value


def _core_policy(value: object) -> str:
    if value not in CORE_POLICIES:
        raise ValueError(f"expected one of {', '.join(CORE_POLICIES)}, got {_show(value)}")
    return str(value)


def _geometries(value: object) -> tuple[mig.ModelGeometries, ...]:
    try:
        return mig.parse_known_geometries(value, "")
    except mig.MigConfigError as exc:
        raise _Nested(str(exc)) from None


def _any(value: object) -> object:
    return value


def _log_level(value: object) -> int:
    # HAMi's LibCudaLogLevel is a Go string ("0", "1", "3", "4"); YAML gives an integer or a quoted one.
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 2:
        value = int(value.strip())
    return _int(0, 5)(value)


class _Nested(ValueError):
    """A nested value is wrong; the message starts with the path below the key (``[0].models: ...``)."""


NOT_APPLIED: Final = (
    "migProfileAllowlist",  # HAMi HEAD's dynamic MIG (models -> profiles); ours reads knownMigGeometries
    "deviceClassName",  # HAMi's DRA driver
    "draDriverName",
    "dynamicConfigFile",
    "mockModeSkipHealthCheck",
)
"""Keys of HAMi's ``nvidia:`` section for features this product does not have: accepted, warned, not applied."""

NVIDIA_KEYS: Final[Mapping[str, Callable[[object], object]]] = {
    "resourceCountName": _resource_name,
    "resourceMemoryName": _resource_name,
    "resourceMemoryPercentageName": _resource_name,
    "resourceCoreName": _resource_name,
    "resourcePriorityName": _resource_name,
    "overwriteEnv": _bool,
    "defaultMemory": _int(0),
    "defaultCores": _int(0, 100),
    "defaultGPUNum": _int(1, 128),
    "memoryFactor": _int(1),
    "deviceSplitCount": _int(1, 1024),
    "deviceMemoryScaling": _number,
    "deviceCoreScaling": _number,
    "preConfiguredDeviceMemory": _int(0),
    "enableNumaTopology": _bool,
    "libCudaLogLevel": _log_level,
    "disableCoreLimit": _bool,
    "gpuCorePolicy": _core_policy,
    "runtimeClassName": _text,
    "knownMigGeometries": _geometries,
    # HAMi keys of features this product does not have: accepted (their shape is HAMi's business), not applied.
    **dict.fromkeys(NOT_APPLIED, _any),
}
"""Every key of HAMi's ``nvidia:`` section (``pkg/device/nvidia`` NvidiaConfig, chart v2.5 to HEAD), each with
the check of its value."""


@dataclasses.dataclass(frozen=True, slots=True)
class HamiDeviceConfig:
    """The checked ``nvidia:`` section: values by HAMi key (only the keys the file sets), and what was ignored."""

    nvidia: Mapping[str, object]
    warnings: tuple[str, ...] = ()

    @property
    def known_mig_geometries(self) -> tuple[mig.ModelGeometries, ...]:
        value = self.nvidia.get("knownMigGeometries", ())
        assert isinstance(value, tuple)
        return value


def parse_device_config(text: str, source: str = FILE_NAME) -> HamiDeviceConfig:
    """``device-config.yaml`` from its text; :class:`HamiConfigError` names ``source`` and the key path."""
    try:
        raw = load_yaml_bounded(text)
    except yaml.YAMLError as exc:
        raise HamiConfigError(f"{source}: not valid YAML: {exc}") from exc
    return check_device_config(raw, source)


def check_device_config(raw: object, source: str = FILE_NAME) -> HamiDeviceConfig:
    """The parsed document (a mapping of vendor sections) checked."""
    if raw is None:
        return HamiDeviceConfig({})
    if not isinstance(raw, Mapping):
        raise HamiConfigError(f"{source}: expected a mapping of vendor sections (nvidia: ...), got {_show(raw)}")
    warnings = [
        f"{source}: section {str(key)[:64]!r} is not read (only the nvidia section is)" for key in raw if key != NVIDIA
    ]
    section = raw.get(NVIDIA)
    if section is None:
        return HamiDeviceConfig({}, tuple(warnings))
    if not isinstance(section, Mapping):
        raise HamiConfigError(f"{source}: nvidia: expected a mapping of settings, got {_show(section)}")
    values: dict[str, object] = {}
    for key, value in section.items():
        check = NVIDIA_KEYS.get(key) if isinstance(key, str) else None
        if check is None:
            warnings.append(f"{source}: nvidia.{str(key)[:64]}: unknown key, ignored")
            continue
        if value is None:
            continue  # an empty value in YAML: HAMi's Go zero value, i.e. its default
        try:
            values[key] = check(value)
        except _Nested as exc:
            raise HamiConfigError(f"{source}: nvidia.{key}{exc}") from None
        except ValueError as exc:
            raise HamiConfigError(f"{source}: nvidia.{key}: {exc}") from None
    warnings += [
        f"{source}: nvidia.{key}: a HAMi key this product does not apply, ignored"
        for key in NOT_APPLIED
        if key in values
    ]
    return HamiDeviceConfig(values, tuple(warnings))


def read_device_config(path: pathlib.Path) -> HamiDeviceConfig:
    """The file at ``path`` (at most :data:`MAX_CONFIG_FILE_BYTES`, UTF-8) checked."""
    try:
        text = read_text_bounded(path, str(path))
    except ConfigError as exc:
        raise HamiConfigError(str(exc)) from exc
    return parse_device_config(text, str(path))


def underlay(path_field: str, mapping: Mapping[str, str]) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
    """For :func:`hami_shared.config.load_settings`: the settings values HAMi's file gives, for a settings class
    whose field ``path_field`` names the file and whose fields ``mapping`` maps HAMi keys to."""
    unknown = set(mapping) - set(NVIDIA_KEYS)
    if unknown:
        raise ValueError(f"not keys of HAMi's nvidia section: {sorted(unknown)}")

    def values(given: Mapping[str, Any]) -> Mapping[str, Any]:
        path = given.get(path_field)
        if path is None or not pathlib.Path(path).exists():
            return {}  # absent: an optional ConfigMap volume without its ConfigMap (warnings_of says so)
        config = read_device_config(pathlib.Path(path))
        # An empty string is Go's zero value, HAMi's "not set" (the chart renders runtimeClassName: "").
        return {
            field: config.nvidia[key]
            for key, field in mapping.items()
            if key in config.nvidia and config.nvidia[key] != ""
        }

    return values


def warnings_of(path_field: str) -> Callable[[object], tuple[str, ...]]:
    """For :class:`hami_shared.service.program.Program`: what the file named by the settings field ``path_field``
    leaves unread (logged once at start, one ``config_warning`` line per key path)."""

    def warnings(settings: object) -> tuple[str, ...]:
        path = getattr(settings, path_field)
        if path is None:
            return ()
        if not pathlib.Path(path).exists():
            return (
                f"{path}: not found, HAMi's device configuration is not applied (is the hami-scheduler-device "
                "ConfigMap missing? its volume is optional)",
            )
        return read_device_config(pathlib.Path(path)).warnings

    return warnings

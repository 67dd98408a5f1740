"""``--device-list-strategy``: flag, env (ours and HAMi's/NVIDIA's ``DEVICE_LIST_STRATEGY``) and config-file
forms reach the injection config; a strategy this plugin cannot do is refused with what to write."""

from __future__ import annotations

from pathlib import Path

import pytest
from hami_device_plugin.app.settings import PROGRAM
from hami_shared.config import ConfigError

BASE = ["--node-name=n"]
VOLUME_MOUNTS = frozenset({"volume-mounts"})


def strategies(argv: list[str], environ: dict[str, str]) -> frozenset[str]:
    return PROGRAM.load_settings([*BASE, *argv], environ=environ).injection().device_list_strategies


def test_envvar_is_the_default() -> None:
    assert strategies([], {}) == frozenset({"envvar"})


def test_flag_env_and_nvidias_env_name_set_it_and_ours_win(tmp_path: Path) -> None:
    assert strategies(["--device-list-strategy=volume-mounts"], {}) == VOLUME_MOUNTS
    assert strategies([], {"HAMI_DEVICE_PLUGIN_DEVICE_LIST_STRATEGY": "volume-mounts"}) == VOLUME_MOUNTS
    assert strategies([], {"DEVICE_LIST_STRATEGY": "volume-mounts"}) == VOLUME_MOUNTS
    ours_and_hamis = {"HAMI_DEVICE_PLUGIN_DEVICE_LIST_STRATEGY": "envvar", "DEVICE_LIST_STRATEGY": "volume-mounts"}
    assert strategies([], ours_and_hamis) == frozenset({"envvar"})
    assert strategies(["--device-list-strategy=volume-mounts"], ours_and_hamis) == VOLUME_MOUNTS


@pytest.mark.parametrize(
    "document",
    [
        "device-list-strategy: volume-mounts\n",
        "device_list_strategy: volume-mounts\n",
        "device-list-strategy: [volume-mounts]\n",
        "device-list-strategy: envvar,volume-mounts\n",
        "device-list-strategy: [envvar, volume-mounts]\n",
    ],
)
def test_config_file_key_as_text_or_list(tmp_path: Path, document: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("version: v1\n" + document)
    got = strategies([f"--config={config}"], {})
    assert "volume-mounts" in got
    assert got <= {"envvar", "volume-mounts"}


def test_a_list_of_both_is_accepted_like_nvidias() -> None:
    assert strategies(["--device-list-strategy=envvar,volume-mounts"], {}) == {"envvar", "volume-mounts"}
    assert strategies(["--device-list-strategy=volume-mounts,volume-mounts"], {}) == VOLUME_MOUNTS


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("volume_mounts", "'volume_mounts' is not one of envvar, volume-mounts"),
        ("envvar,bogus", "'bogus' is not one of envvar, volume-mounts"),
        ("cdi-annotations", "'cdi-annotations' .*is not supported: this plugin writes no CDI specs"),
        ("cdi-cri", "'cdi-cri' .*is not supported"),
        (",", "is empty; write envvar or volume-mounts"),
    ],
)
def test_a_bad_strategy_is_refused_from_every_source(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"--device-list-strategy.*{message}"):
        strategies([f"--device-list-strategy={value}"], {})
    with pytest.raises(ConfigError, match=message):
        strategies([], {"HAMI_DEVICE_PLUGIN_DEVICE_LIST_STRATEGY": value})
    with pytest.raises(ConfigError, match=message):
        strategies([], {"DEVICE_LIST_STRATEGY": value})
    config = tmp_path / "config.yaml"
    config.write_text(f"version: v1\ndevice-list-strategy: '{value}'\n")
    with pytest.raises(ConfigError, match=message):
        strategies([f"--config={config}"], {})


def test_an_empty_list_in_the_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("version: v1\ndevice-list-strategy: []\n")
    with pytest.raises(ConfigError, match="is empty"):
        strategies([f"--config={config}"], {})

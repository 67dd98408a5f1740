"""Where the per-container directories and regions go: ``--regions-path``, its env form, and its default."""

from __future__ import annotations

from pathlib import Path

import pytest
from hami_device_plugin.app.settings import load_device_plugin_settings
from hami_shared.config import ConfigError


def test_default_is_under_the_hook_path_and_the_flag_or_env_moves_it() -> None:
    base = ["--node-name=n", "--hook-path=/host/vgpu"]
    default = load_device_plugin_settings(base, environ={})
    assert default.regions_dir == Path("/host/vgpu/containers")
    assert default.injection().regions_dir == "/host/vgpu/containers"
    moved = load_device_plugin_settings([*base, "--regions-path=/run/hami/containers"], environ={})
    assert moved.regions_dir == Path("/run/hami/containers")
    assert moved.injection().regions_dir == "/run/hami/containers"
    from_env = load_device_plugin_settings(base, environ={"HAMI_DEVICE_PLUGIN_REGIONS_PATH": "/dev/shm/hami"})
    assert from_env.regions_dir == Path("/dev/shm/hami")


def test_a_relative_regions_path_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="'run/hami' must be an absolute path"):
        load_device_plugin_settings(["--node-name=n", "--regions-path=run/hami"], environ={})

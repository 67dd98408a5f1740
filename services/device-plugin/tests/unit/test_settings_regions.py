"""Where the per-container directories and regions go: ``--regions-path``, its env form, and its default; the
check that it is a dedicated tmpfs (``--require-regions-tmpfs``); the scheduler names Allocate serves."""

from __future__ import annotations

from pathlib import Path

import pytest
from hami_device_plugin.app.service import check_paths
from hami_device_plugin.app.settings import PROGRAM
from hami_device_plugin.core.config import regions_mount_problem
from hami_shared.config import ConfigError


def test_default_is_under_the_hook_path_and_the_flag_or_env_moves_it() -> None:
    base = ["--node-name=n", "--hook-path=/host/vgpu"]
    default = PROGRAM.load_settings(base, environ={})
    assert default.regions_dir == Path("/host/vgpu/containers")
    assert default.injection().regions_dir == "/host/vgpu/containers"
    moved = PROGRAM.load_settings([*base, "--regions-path=/run/hami/containers"], environ={})
    assert moved.regions_dir == Path("/run/hami/containers")
    assert moved.injection().regions_dir == "/run/hami/containers"
    from_env = PROGRAM.load_settings(base, environ={"HAMI_DEVICE_PLUGIN_REGIONS_PATH": "/dev/shm/hami"})
    assert from_env.regions_dir == Path("/dev/shm/hami")


def test_a_relative_regions_path_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="'run/hami' must be an absolute path"):
        PROGRAM.load_settings(["--node-name=n", "--regions-path=run/hami"], environ={})


MOUNTINFO = """\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:23 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=1611904k,mode=755
90 25 0:50 / /run/hami/containers rw,nosuid,nodev,noexec shared:40 - tmpfs hami-regions rw,size=65536k,mode=711
91 22 0:51 / /srv/with\\040space rw shared:41 - tmpfs t rw,size=1024k
92 22 253:0 /data /srv/bound rw shared:42 - ext4 /dev/vda rw
"""


def test_only_a_dedicated_tmpfs_no_larger_than_the_setting_passes_the_regions_check() -> None:
    assert regions_mount_problem(MOUNTINFO, "/run/hami/containers", 64 << 20, 1024 << 20) is None
    assert regions_mount_problem(MOUNTINFO, "/srv/with space", 1 << 20, 1024 << 20) is None
    not_a_mount = regions_mount_problem(MOUNTINFO, "/run/hami/other", 1 << 30, 1024 << 20)
    assert not_a_mount is not None
    assert "not a mount point of its own" in not_a_mount
    assert "mount -t tmpfs -o size=64m,mode=0711" in not_a_mount  # says how to make one
    assert "is a ext4 mount, not a tmpfs" in (regions_mount_problem(MOUNTINFO, "/srv/bound", 1, 1 << 30) or "")
    too_big = regions_mount_problem(MOUNTINFO, "/run/hami/containers", 2 << 30, 1024 << 20)
    assert too_big is not None
    assert "holds 2048 MiB, more than --regions-tmpfs-max-mib 1024" in too_big


def test_scheduler_names_and_the_tmpfs_settings_from_flags_env_and_file(tmp_path: Path) -> None:
    base = ["--node-name=n"]
    default = PROGRAM.load_settings(base, environ={})
    assert default.scheduler_names == ("hami-scheduler",)
    assert not default.require_regions_tmpfs
    flags = PROGRAM.load_settings(
        [*base, "--scheduler-names=hami-scheduler, team-b", "--require-regions-tmpfs", "--regions-tmpfs-max-mib=64"],
        environ={},
    )
    assert flags.scheduler_names == ("hami-scheduler", "team-b")
    assert flags.require_regions_tmpfs
    assert flags.regions_tmpfs_max_mib == 64
    env = PROGRAM.load_settings(
        base,
        environ={"HAMI_DEVICE_PLUGIN_SCHEDULER_NAMES": "a,b", "HAMI_DEVICE_PLUGIN_REQUIRE_REGIONS_TMPFS": "true"},
    )
    assert env.scheduler_names == ("a", "b")
    assert env.require_regions_tmpfs
    config = tmp_path / "config.yaml"
    config.write_text("scheduler-names: [x, y]\nregions-tmpfs-max-mib: 32\n")
    from_file = PROGRAM.load_settings([*base, f"--config={config}"], environ={})
    assert from_file.scheduler_names == ("x", "y")
    assert from_file.regions_tmpfs_max_mib == 32
    with pytest.raises(ConfigError, match="--scheduler-names needs at least one non-empty name"):
        PROGRAM.load_settings([*base, "--scheduler-names=,"], environ={})


def test_a_plain_directory_is_refused_when_the_tmpfs_is_required(tmp_path: Path) -> None:
    settings = PROGRAM.load_settings(
        ["--node-name=n", f"--regions-path={tmp_path}", "--require-regions-tmpfs"], environ={}
    )
    with pytest.raises(ConfigError, match=r"--require-regions-tmpfs: .* is not a mount point of its own"):
        check_paths(settings)

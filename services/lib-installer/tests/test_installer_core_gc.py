"""GC decisions (pure) and the /proc parsers."""

from __future__ import annotations

import pytest
from hami_lib_installer.core.gc import (
    GcPlan,
    InstalledFile,
    InstalledVersion,
    Usage,
    group_versions,
    parse_maps_inodes,
    parse_mountinfo_file_roots,
    plan_gc,
)


def versions(*specs: tuple[str, int, float]) -> tuple[InstalledVersion, ...]:
    files = []
    for version, inode, mtime in specs:
        files.append(InstalledFile(f"libvgpu.so.{version}", inode, mtime))
        files.append(InstalledFile(f"libvgpu_vk.so.{version}", inode + 1, mtime))
    files.append(InstalledFile("libvgpu.so.bak~", 999, 0.0))
    return group_versions(files)


INSTALLED = versions(("1.0", 10, 100.0), ("2.0", 20, 200.0), ("3.0", 30, 300.0), ("4.0", 40, 400.0))
CURRENT = frozenset({"4.0"})


def gc(usage: Usage | None, keep_last: int = 0, age: float = 1000.0, grace: float = 0.0) -> GcPlan:
    return plan_gc(INSTALLED, protected=CURRENT, usage=usage, keep_last=keep_last, switched_age=age, grace=grace)


def test_foreign_names_are_not_grouped() -> None:
    assert [iv.version for iv in INSTALLED] == ["1.0", "2.0", "3.0", "4.0"]


def test_unmapped_old_versions_are_removed_mapped_and_mounted_kept() -> None:
    usage = Usage(mapped={21: (77,)}, mounted=frozenset({"libvgpu.so.1.0"}), complete=True)
    plan = gc(usage, keep_last=5)  # keep-last does not apply when the scan is complete
    assert plan.removed_versions == ("3.0",)
    assert plan.remove == ("libvgpu.so.3.0", "libvgpu_vk.so.3.0")
    reasons = {k.version: k.reason for k in plan.kept}
    assert reasons == {
        "1.0": "libvgpu.so.1.0 bind-mounted in a mount namespace",
        "2.0": "libvgpu_vk.so.2.0 mapped by pid 77",
        "4.0": "current",
    }


def test_without_process_visibility_the_newest_n_old_versions_stay() -> None:
    plan = gc(None, keep_last=2)
    assert plan.removed_versions == ("1.0",)
    assert {k.version for k in plan.kept} == {"2.0", "3.0", "4.0"}
    assert gc(None, keep_last=0).removed_versions == ("1.0", "2.0", "3.0")


def test_incomplete_scan_keeps_mapped_and_the_newest_n() -> None:
    usage = Usage(mapped={10: (5,)}, mounted=frozenset(), complete=False)
    plan = gc(usage, keep_last=1)
    assert plan.removed_versions == ("2.0",)
    assert {k.version: k.reason for k in plan.kept}["3.0"].startswith("keep-last 1")


def test_nothing_is_collected_within_the_grace_period() -> None:
    plan = gc(Usage({}, frozenset(), True), age=5, grace=300)
    assert plan.remove == ()
    assert "grace period" in {k.version: k.reason for k in plan.kept}["1.0"]


def test_negative_keep_last_is_a_bug() -> None:
    with pytest.raises(ValueError, match="keep_last"):
        gc(None, keep_last=-1)


def test_maps_parser_takes_inodes_of_file_mappings() -> None:
    text = (
        "7f00-7f01 r--p 00000000 fd:01 1234 /usr/local/vgpu/libvgpu.so.2.0\n"
        "7f01-7f02 r-xp 00001000 fd:01 1234 /usr/local/vgpu/libvgpu.so.2.0 (deleted)\n"
        "7f02-7f03 rw-p 00000000 00:00 0 \n"
        "7ffd-7ffe rw-p 00000000 00:00 0                          [stack]\n"
        "garbage line\n"
    )
    assert parse_maps_inodes(text) == {1234}


def test_mountinfo_parser_finds_bind_mounted_files() -> None:
    text = (
        "36 35 98:0 /usr/local/vgpu/libvgpu.so.2.0 /usr/local/vgpu/libvgpu.so rw,relatime - ext4 /dev/vda rw\n"
        "37 35 98:0 /usr/local/vgpu/libvgpu_vk.so.1.0//deleted /x rw - ext4 /dev/vda rw\n"
        "38 35 98:0 /with\\040space/libvgpu.so.3.0 /y rw - ext4 /dev/vda rw\n"
        "39 35 0:5 / /proc rw - proc proc rw\n"
    )
    assert parse_mountinfo_file_roots(text) == {"libvgpu.so.2.0", "libvgpu_vk.so.1.0", "libvgpu.so.3.0"}

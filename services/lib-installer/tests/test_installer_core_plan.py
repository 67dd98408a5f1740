"""Install plans, manifest and preload rendering (pure)."""

from __future__ import annotations

import json

import pytest
from hami_lib_installer.core.errors import DestinationError, InstallError, InvalidSourceError
from hami_lib_installer.core.layout import render_preload, render_vulkan_manifest
from hami_lib_installer.core.plan import (
    DesiredFile,
    DesiredLink,
    Digest,
    EntryKind,
    ExistingEntry,
    desired_layout,
    digest_of,
    plan_install,
)

CORE = Digest("c" * 64, 100)
VK = Digest("d" * 64, 200)
MANIFEST = digest_of(b"{}")
PRELOAD = digest_of(b"/usr/local/vgpu/libvgpu.so\n")


def layout(version: str = "2.0") -> tuple[DesiredFile | DesiredLink, ...]:
    return desired_layout(version, {"libvgpu.so": CORE, "libvgpu_vk.so": VK}, MANIFEST, PRELOAD)


def installed(version: str, core: Digest = CORE) -> dict[str, ExistingEntry]:
    return {
        f"libvgpu.so.{version}": ExistingEntry(f"libvgpu.so.{version}", EntryKind.FILE, core, 0o644),
        f"libvgpu_vk.so.{version}": ExistingEntry(f"libvgpu_vk.so.{version}", EntryKind.FILE, VK, 0o644),
        "libvgpu.so": ExistingEntry("libvgpu.so", EntryKind.SYMLINK, link_target=f"libvgpu.so.{version}"),
        "libvgpu_vk.so": ExistingEntry("libvgpu_vk.so", EntryKind.SYMLINK, link_target=f"libvgpu_vk.so.{version}"),
        "vulkan/implicit_layer.d/hami.json": ExistingEntry(
            "vulkan/implicit_layer.d/hami.json", EntryKind.FILE, MANIFEST, 0o644
        ),
        "ld.so.preload": ExistingEntry("ld.so.preload", EntryKind.FILE, PRELOAD, 0o644),
    }


def test_layout_order_is_versioned_files_then_stable_names_then_references() -> None:
    assert [d.path for d in layout()] == [
        "libvgpu.so.2.0",
        "libvgpu_vk.so.2.0",
        "libvgpu.so",
        "libvgpu_vk.so",
        "vulkan/implicit_layer.d/hami.json",
        "ld.so.preload",
    ]


def test_fresh_destination_gets_everything() -> None:
    plan = plan_install(layout(), {})
    assert [a.reason for a in plan.actions] == ["missing"] * 6
    assert plan.bytes_to_write == 100 + 200 + MANIFEST.size + PRELOAD.size


def test_identical_installation_is_left_alone() -> None:
    plan = plan_install(layout(), installed("2.0"))
    assert plan.actions == ()
    assert len(plan.unchanged) == 6


def test_upgrade_writes_new_files_and_switches_links_only() -> None:
    plan = plan_install(layout("2.0"), installed("1.0"))
    assert [(a.path, a.reason) for a in plan.actions] == [
        ("libvgpu.so.2.0", "missing"),
        ("libvgpu_vk.so.2.0", "missing"),
        ("libvgpu.so", "points at libvgpu.so.1.0"),
        ("libvgpu_vk.so", "points at libvgpu_vk.so.1.0"),
    ]


def test_tampered_content_and_mode_are_replaced() -> None:
    have = installed("2.0", core=Digest("e" * 64, 100))
    have["ld.so.preload"] = ExistingEntry("ld.so.preload", EntryKind.FILE, PRELOAD, 0o600)
    plan = plan_install(layout(), have)
    assert [(a.path, a.reason) for a in plan.actions] == [
        ("libvgpu.so.2.0", "content differs"),
        ("ld.so.preload", "mode 0600, want 0644"),
    ]


def test_hami_style_regular_stable_file_becomes_a_symlink() -> None:
    have = installed("2.0")
    have["libvgpu.so"] = ExistingEntry("libvgpu.so", EntryKind.FILE, CORE, 0o644)
    (action,) = plan_install(layout(), have).actions
    assert action.path == "libvgpu.so"
    assert "becomes a symlink" in action.reason


def test_a_directory_in_the_way_is_refused() -> None:
    with pytest.raises(DestinationError, match="is a directory"):
        plan_install(layout(), {"ld.so.preload": ExistingEntry("ld.so.preload", EntryKind.DIRECTORY)})


def test_preload_names_the_stable_library_under_the_runtime_dir() -> None:
    assert render_preload("/usr/local/vgpu") == b"/usr/local/vgpu/libvgpu.so\n"
    for bad in ("relative/dir", "/with space", "/with:colon", "/new\nline"):
        with pytest.raises(InstallError):
            render_preload(bad)


def test_manifest_gets_an_absolute_stable_library_path_and_keeps_other_fields() -> None:
    template = {"file_format_version": "1.0.0", "layer": {"name": "X", "library_path": "./libvgpu_vk.so", "k": 1}}
    rendered = json.loads(render_vulkan_manifest(template, "/opt/vgpu"))
    assert rendered == {
        "file_format_version": "1.0.0",
        "layer": {"name": "X", "library_path": "/opt/vgpu/libvgpu_vk.so", "k": 1},
    }
    default = json.loads(render_vulkan_manifest(None, "/usr/local/vgpu"))
    assert default["layer"]["library_path"] == "/usr/local/vgpu/libvgpu_vk.so"
    assert default["layer"]["name"] == "VK_LAYER_HAMI_vgpu"
    assert default["layer"]["disable_environment"] == {"HAMI_VULKAN_DISABLE": "1"}


def test_manifest_without_a_layer_is_refused() -> None:
    with pytest.raises(InvalidSourceError, match="no 'layer'"):
        render_vulkan_manifest({"file_format_version": "1.0.0"}, "/usr/local/vgpu")

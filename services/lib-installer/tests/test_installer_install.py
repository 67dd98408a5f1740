"""Installing into a real directory: fresh, idempotent, upgrade, refusals, repair of leftovers."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import pytest
from hami_lib_installer.app.installer import install
from hami_lib_installer.core.errors import DestinationError, InvalidSourceError, InvalidVersionError
from hami_lib_installer.core.version import validate_version
from installer_testkit import (
    CC,
    LibraryBuilder,
    log_events,
    run_installer,
    run_reader_once,
    settings,
    small_filesystem,
)

NAMES = (
    "libvgpu.so.{v}",
    "libvgpu_vk.so.{v}",
    "libvgpu.so",
    "libvgpu_vk.so",
    "vulkan/implicit_layer.d/hami.json",
    "ld.so.preload",
)


def snapshot(dest: pathlib.Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime_ns, ctime_ns) of every entry, not following symlinks."""
    out = {}
    for path in sorted(dest.rglob("*")):
        st = os.lstat(path)
        out[str(path.relative_to(dest))] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    return out


def assert_installed(dest: pathlib.Path, source: pathlib.Path, version: str, runtime_dir: str | None = None) -> None:
    runtime = runtime_dir or str(dest)
    for lib in ("libvgpu.so", "libvgpu_vk.so"):
        versioned = dest / f"{lib}.{version}"
        assert versioned.read_bytes() == (source / lib).read_bytes()
        assert not versioned.is_symlink()
        assert (versioned.stat().st_mode & 0o777) == 0o644
        assert os.readlink(dest / lib) == f"{lib}.{version}"
    assert (dest / "ld.so.preload").read_text() == f"{runtime}/libvgpu.so\n"
    manifest = json.loads((dest / "vulkan/implicit_layer.d/hami.json").read_text())
    assert manifest["layer"]["library_path"] == f"{runtime}/libvgpu_vk.so"
    assert not list(dest.rglob(".hami-tmp.*"))


def test_fresh_install_lays_out_versioned_files_stable_links_manifest_and_preload(
    libs: LibraryBuilder, reader: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    source = libs.source(tmp_path / "src", 1, version="2.5.0")
    dest = tmp_path / "host" / "usr" / "local" / "vgpu"
    report = install(settings(source, dest))
    assert report.version == "2.5.0"
    assert [c.path for c in report.changed] == [n.format(v="2.5.0") for n in NAMES]
    assert_installed(dest, source, "2.5.0")
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [
            ".hami-lib-installer.lock",
            "ld.so.preload",
            "libvgpu.so",
            "libvgpu.so.2.5.0",
            "libvgpu_vk.so",
            "libvgpu_vk.so.2.5.0",
            "vulkan",
        ]
    )
    # The installed stable name loads in a fresh process and is the version just installed.
    assert run_reader_once(reader, dest / "libvgpu.so", "hami_test_version", [source / "libvgpu.so"]) == 1
    assert run_reader_once(reader, dest / "libvgpu_vk.so", "hami_test_vk_version", [source / "libvgpu_vk.so"]) == 1


def test_rerun_with_identical_content_touches_nothing(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    source = libs.source(tmp_path / "src", 1, version="2.5.0")
    dest = tmp_path / "vgpu"
    install(settings(source, dest))
    before = snapshot(dest)
    report = install(settings(source, dest))
    assert report.changed == ()
    assert len(report.unchanged) == 6
    assert snapshot(dest) == before  # same inodes, mtimes and ctimes: nothing rewritten, not even chmod


def test_rerun_through_the_cli_logs_unchanged(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    source = libs.source(tmp_path / "src", 1)
    dest = tmp_path / "vgpu"
    first = run_installer("--source", str(source), "--dest", str(dest))
    assert first.returncode == 0, first.stderr
    before = snapshot(dest)
    second = run_installer("--source", str(source), "--dest", str(dest))
    assert second.returncode == 0, second.stderr
    assert snapshot(dest) == before
    summary = [e for e in log_events(second.stderr) if e["event"].startswith("installation")]
    assert summary[-1]["event"] == "installation_unchanged"
    assert summary[-1]["changed"] == []
    # Without a VERSION file the version is derived from the content, so it is stable too.
    assert summary[-1]["version"].startswith("sha-")


def test_upgrade_switches_stable_names_and_keeps_the_previous_version(
    libs: LibraryBuilder, tmp_path: pathlib.Path
) -> None:
    dest = tmp_path / "vgpu"
    old = libs.source(tmp_path / "src1", 1, version="1.0")
    new = libs.source(tmp_path / "src2", 2, version="2.0")
    install(settings(old, dest))
    preload_inode = os.lstat(dest / "ld.so.preload").st_ino
    report = install(settings(new, dest, gc_grace=300.0))
    assert [c.path for c in report.changed] == ["libvgpu.so.2.0", "libvgpu_vk.so.2.0", "libvgpu.so", "libvgpu_vk.so"]
    assert_installed(dest, new, "2.0")
    assert (dest / "libvgpu.so.1.0").read_bytes() == (old / "libvgpu.so").read_bytes()  # kept (grace period)
    assert os.lstat(dest / "ld.so.preload").st_ino == preload_inode  # same content: not rewritten


def test_runtime_dir_and_source_manifest(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    template = {
        "file_format_version": "1.2.0",
        "layer": {
            "name": "VK_LAYER_HAMI_vgpu",
            "library_path": "libvgpu_vk.so",
            "disable_environment": {"HAMI_VULKAN_DISABLE": "1"},
        },
    }
    source = libs.source(tmp_path / "src", 1, version="1.0", manifest=template)
    dest = tmp_path / "vgpu"
    install(settings(source, dest, runtime_dir="/usr/local/vgpu"))
    assert_installed(dest, source, "1.0", runtime_dir="/usr/local/vgpu")
    manifest = json.loads((dest / "vulkan/implicit_layer.d/hami.json").read_text())
    assert manifest["layer"]["disable_environment"] == {"HAMI_VULKAN_DISABLE": "1"}


def test_migrates_a_hami_style_install_with_regular_stable_files(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "vgpu"
    dest.mkdir()
    old = libs.source(tmp_path / "src1", 1)
    (dest / "libvgpu.so").write_bytes((old / "libvgpu.so").read_bytes())  # what `cp -f` left behind
    new = libs.source(tmp_path / "src2", 2, version="2.0")
    with open(dest / "libvgpu.so", "rb") as held:  # as a container's bind mount holds this inode
        old_inode = os.fstat(held.fileno()).st_ino
        install(settings(new, dest))
        assert_installed(dest, new, "2.0")
        assert os.fstat(held.fileno()).st_ino == old_inode
        assert held.read() == (old / "libvgpu.so").read_bytes()  # the old inode was replaced, not rewritten


def test_stale_temporary_files_of_a_killed_run_are_removed(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    source = libs.source(tmp_path / "src", 1, version="1.0")
    dest = tmp_path / "vgpu"
    install(settings(source, dest))
    (dest / ".hami-tmp.libvgpu.so.2.0.123.abcd").write_bytes(b"\x7fELF partial")
    (dest / "vulkan/implicit_layer.d/.hami-tmp.hami.json.9.ff").write_text("{")
    (dest / "containers").mkdir()  # the device plugin's, not ours
    report = install(settings(source, dest))
    assert sorted(report.stale_temps_removed) == [
        ".hami-tmp.libvgpu.so.2.0.123.abcd",
        "vulkan/implicit_layer.d/.hami-tmp.hami.json.9.ff",
    ]
    assert report.changed == ()
    assert (dest / "containers").is_dir()


def test_same_version_with_new_content_is_replaced_atomically(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "vgpu"
    install(settings(libs.source(tmp_path / "a", 1, version="1.0"), dest))
    rebuilt = libs.source(tmp_path / "b", 2, version="1.0")
    with open(dest / "libvgpu.so.1.0", "rb") as held:  # as a running process holds it
        report = install(settings(rebuilt, dest))
        assert [(c.path, c.reason) for c in report.changed] == [
            ("libvgpu.so.1.0", "content differs"),
            ("libvgpu_vk.so.1.0", "content differs"),
        ]
        assert_installed(dest, rebuilt, "1.0")
        assert held.read() == (libs.built(1) / "libvgpu.so").read_bytes()


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"#!/bin/sh\necho not a library\n", b"\x7fELF\x02\x01\x01" + b"\0" * 20])
def test_invalid_source_is_refused_and_destination_untouched(
    libs: LibraryBuilder, tmp_path: pathlib.Path, content: bytes
) -> None:
    dest = tmp_path / "vgpu"
    good = libs.source(tmp_path / "good", 1, version="1.0")
    install(settings(good, dest))
    before = snapshot(dest)
    bad = libs.source(tmp_path / "bad", 2, version="2.0")
    (bad / "libvgpu_vk.so").write_bytes(content)
    with pytest.raises(InvalidSourceError, match=r"libvgpu_vk\.so is not a valid shared library"):
        install(settings(bad, dest))
    assert snapshot(dest) == before


def test_executable_source_is_refused_through_the_cli(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    bad = libs.source(tmp_path / "bad", 2, version="2.0")
    (tmp_path / "main.c").write_text("int main(void) { return 0; }\n")
    subprocess.run([CC, "-pie", "-fPIE", "-o", str(bad / "libvgpu.so"), str(tmp_path / "main.c")], check=True)
    result = run_installer("--source", str(bad), "--dest", str(tmp_path / "vgpu"))
    assert result.returncode == 1
    (event,) = [e for e in log_events(result.stderr) if e["level"] == "error"]
    assert "position-independent executable" in event["error"]
    assert not (tmp_path / "vgpu").exists()


def test_missing_source_files_are_named(tmp_path: pathlib.Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(InvalidSourceError, match=r"libvgpu\.so is missing"):
        install(settings(tmp_path / "src", tmp_path / "vgpu"))
    with pytest.raises(InvalidSourceError, match="does not exist"):
        install(settings(tmp_path / "nowhere", tmp_path / "vgpu"))


@pytest.mark.parametrize("version", ["../x", "a/b", "", "x" * 65, "1.0\x07", "-v"])
def test_unsafe_version_flag_is_refused(libs: LibraryBuilder, tmp_path: pathlib.Path, version: str) -> None:
    source = libs.source(tmp_path / "src", 1)
    dest = tmp_path / "vgpu"
    result = run_installer("--source", str(source), "--dest", str(dest), f"--lib-version={version}")
    if version == "":
        # An empty flag means "not set": the content-derived version is used.
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2
    assert "--lib-version" in result.stderr
    assert "e.g. 2.5.0" in result.stderr
    assert not dest.exists()


@pytest.mark.parametrize("version", ["../../etc/x", "a/b", "", "x" * 65, "bad\x01"])
def test_unsafe_version_file_is_refused(libs: LibraryBuilder, tmp_path: pathlib.Path, version: str) -> None:
    source = libs.source(tmp_path / "src", 1)
    (source / "VERSION").write_bytes(version.encode() + b"\n")
    with pytest.raises(InvalidSourceError, match="VERSION"):
        install(settings(source, tmp_path / "vgpu"))
    assert not (tmp_path / "vgpu").exists()


def test_unsafe_version_setting_is_refused_in_process(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="--lib-version"):
        settings(tmp_path, tmp_path / "vgpu", lib_version="../x")
    with pytest.raises(InvalidVersionError):
        validate_version("a/b")


def test_read_only_destination_is_refused_and_left_intact(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    mnt = tmp_path / "mnt"
    old = libs.source(tmp_path / "src1", 1, version="1.0")
    new = libs.source(tmp_path / "src2", 2, version="2.0")
    with small_filesystem(mnt, 8192):
        dest = mnt / "vgpu"
        install(settings(old, dest))
        before = snapshot(dest)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        result = run_installer("--source", str(new), "--dest", str(dest))
        assert result.returncode == 1
        (event,) = [e for e in log_events(result.stderr) if e["level"] == "error"]
        assert "read-only filesystem" in event["error"]
        assert "previous installation is unchanged" in event["error"]
        with pytest.raises(DestinationError, match="read-only"):
            install(settings(new, mnt / "elsewhere"))
        assert snapshot(dest) == before
        assert_installed(dest, old, "1.0")


def test_full_destination_is_refused_before_writing(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    mnt = tmp_path / "mnt"
    old = libs.source(tmp_path / "src1", 1, version="1.0")
    new = libs.source(tmp_path / "src2", 2, version="2.0")
    with small_filesystem(mnt, 3 * 1024):  # holds one version (2 x 1 MiB), not two
        dest = mnt / "vgpu"
        install(settings(old, dest))
        before = snapshot(dest)
        result = run_installer("--source", str(new), "--dest", str(dest))
        assert result.returncode == 1
        (event,) = [e for e in log_events(result.stderr) if e["level"] == "error"]
        assert "bytes free" in event["error"]
        assert "free space" in event["error"]
        assert snapshot(dest) == before
        assert_installed(dest, old, "1.0")


def test_settings_from_a_config_file_and_bad_settings(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    source = libs.source(tmp_path / "src", 1)
    dest = tmp_path / "vgpu"
    config = tmp_path / "installer.yaml"
    config.write_text(f'version: v1\nsource: {source}\ndest: {dest}\nlib-version: "3.0"\nkeep-last: 1\n')
    result = run_installer("--config", str(config))
    assert result.returncode == 0, result.stderr
    assert os.readlink(dest / "libvgpu.so") == "libvgpu.so.3.0"
    result = run_installer("--config", str(config), "--lib-version", "3.1")  # the flag wins
    assert result.returncode == 0, result.stderr
    assert os.readlink(dest / "libvgpu.so") == "libvgpu.so.3.1"
    bad = run_installer("--config", str(config), "--keep-last", "-1")
    assert bad.returncode == 2
    assert "--keep-last must be 0 or more" in bad.stderr
    relative = run_installer("--source", str(source), "--dest", "relative/dir")
    assert relative.returncode == 2
    assert "must be an absolute path" in relative.stderr

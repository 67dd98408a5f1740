"""Crash injection: the installer is SIGKILLed at named points; the installation stays usable.

The installer runs as a subprocess with the documented test hook
(``HAMI_LIB_INSTALLER_TEST_HOOK=POINT@PATH=stop``): it SIGSTOPs itself at the point, the test
then SIGKILLs it (the kernel gives it no chance to clean up) and checks the destination.
Disk-full during the write is provoked the same way: the installer is paused after its
space check, the test fills the filesystem, then lets it continue.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal

import pytest
from hami_lib_installer.app.installer import install
from installer_testkit import (
    LibraryBuilder,
    kill,
    log_events,
    reap,
    run_reader_once,
    settings,
    small_filesystem,
    start_installer,
    wait_stopped,
)

FILE_POINTS = ("before-write", "mid-write", "after-write", "after-fsync", "after-verify", "after-rename")
LINK_POINTS = ("before-write", "after-write", "after-verify", "after-rename")
UPGRADE_PATHS = {
    "libvgpu.so.2.0": FILE_POINTS,
    "libvgpu_vk.so.2.0": FILE_POINTS,
    "libvgpu.so": LINK_POINTS,
    "libvgpu_vk.so": LINK_POINTS,
}
CASES = [(path, point) for path, points in UPGRADE_PATHS.items() for point in points]


def check_usable(
    dest: pathlib.Path, sources: dict[str, pathlib.Path], reader: pathlib.Path, *, complete: bool
) -> set[str]:
    """Every name present is whole and valid, every reference resolves; returns the versions linked.

    ``complete``: a previous installation existed, so every entry must be present.
    """
    for path in dest.rglob("*"):
        name = path.name
        if name.startswith(".hami-tmp."):
            continue  # what a killed run may leave; never a name anything refers to
        for lib in ("libvgpu.so", "libvgpu_vk.so"):
            if name.startswith(lib + ".") and name[len(lib) + 1 :] in sources:
                assert path.read_bytes() == (sources[name[len(lib) + 1 :]] / lib).read_bytes(), f"{name} is partial"
    linked = set()
    for lib, symbol in (("libvgpu.so", "hami_test_version"), ("libvgpu_vk.so", "hami_test_vk_version")):
        stable = dest / lib
        if not stable.is_symlink():
            assert not complete, f"{lib} is missing after a crash during an upgrade"
            continue
        target = os.readlink(stable)
        version = target[len(lib) + 1 :]
        assert version in sources, f"{lib} points at {target}"
        assert stable.read_bytes() == (sources[version] / lib).read_bytes()
        expected = [sources[v] / lib for v in sources]
        assert run_reader_once(reader, stable, symbol, expected) in (1, 2)
        linked.add(version)
    preload = dest / "ld.so.preload"
    if preload.exists():
        assert preload.read_text() == f"{dest}/libvgpu.so\n"
        assert (dest / "libvgpu.so").exists()
    elif complete:
        raise AssertionError("ld.so.preload is missing")
    manifest = dest / "vulkan/implicit_layer.d/hami.json"
    if manifest.exists():
        assert pathlib.Path(json.loads(manifest.read_text())["layer"]["library_path"]).is_file()
    elif complete:
        raise AssertionError("the Vulkan manifest is missing")
    return linked


@pytest.mark.parametrize(("path", "point"), CASES, ids=[f"{p}@{q}" for p, q in CASES])
def test_upgrade_killed_at_any_point_leaves_a_usable_installation(
    libs: LibraryBuilder, reader: pathlib.Path, tmp_path: pathlib.Path, path: str, point: str
) -> None:
    old = libs.source(tmp_path / "src1", 1, version="1.0")
    new = libs.source(tmp_path / "src2", 2, version="2.0")
    dest = tmp_path / "vgpu"
    install(settings(old, dest))
    sources = {"1.0": old, "2.0": new}

    proc = start_installer("--source", str(new), "--dest", str(dest), hook=f"{point}@{path}=stop")
    try:
        wait_stopped(proc)
    finally:
        kill(proc)  # SIGKILL: no chance to clean up

    linked = check_usable(dest, sources, reader, complete=True)
    assert linked <= {"1.0", "2.0"}
    # Switching stable names is ordered: the core library never lags behind the Vulkan layer.
    if os.readlink(dest / "libvgpu_vk.so") == "libvgpu_vk.so.2.0":
        assert os.readlink(dest / "libvgpu.so") == "libvgpu.so.2.0"

    # The next run completes the upgrade and clears the leftovers; the one after changes nothing.
    install(settings(new, dest, gc_grace=300.0))
    assert check_usable(dest, sources, reader, complete=True) == {"2.0"}
    assert not list(dest.rglob(".hami-tmp.*"))
    assert install(settings(new, dest, gc_grace=300.0)).changed == ()


FRESH_CASES = [
    ("libvgpu.so.1.0", "mid-write"),
    ("libvgpu_vk.so.1.0", "after-verify"),
    ("libvgpu.so", "after-write"),
    ("vulkan/implicit_layer.d/hami.json", "mid-write"),
    ("ld.so.preload", "mid-write"),
    ("ld.so.preload", "after-verify"),
]


@pytest.mark.parametrize(("path", "point"), FRESH_CASES, ids=[f"{p}@{q}" for p, q in FRESH_CASES])
def test_fresh_install_killed_leaves_only_whole_files(
    libs: LibraryBuilder, reader: pathlib.Path, tmp_path: pathlib.Path, path: str, point: str
) -> None:
    source = libs.source(tmp_path / "src1", 1, version="1.0")
    dest = tmp_path / "vgpu"
    proc = start_installer("--source", str(source), "--dest", str(dest), hook=f"{point}@{path}=stop")
    try:
        wait_stopped(proc)
    finally:
        kill(proc)  # SIGKILL: no chance to clean up
    check_usable(dest, {"1.0": source}, reader, complete=False)
    assert not (dest / "ld.so.preload").exists()  # written last: present only when all else is
    install(settings(source, dest))
    assert check_usable(dest, {"1.0": source}, reader, complete=True) == {"1.0"}


def test_killed_during_garbage_collection(libs: LibraryBuilder, reader: pathlib.Path, tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "vgpu"
    sources = {f"{n}.0": libs.source(tmp_path / f"src{n}", n, version=f"{n}.0") for n in (1, 2)}
    install(settings(sources["1.0"], dest))
    install(settings(sources["2.0"], dest, gc=False))
    proc = start_installer(
        "--source",
        str(sources["2.0"]),
        "--dest",
        str(dest),
        "--gc-grace",
        "0",
        "--keep-last",
        "0",
        "--process-scan",
        "off",
        hook="mid-gc=stop",
    )
    try:
        wait_stopped(proc)
    finally:
        kill(proc)  # SIGKILL: no chance to clean up
    assert check_usable(dest, sources, reader, complete=True) == {"2.0"}
    assert len(list(dest.glob("*.so.1.0"))) == 1  # half collected
    report = install(settings(sources["2.0"], dest, keep_last=0))
    assert report.removed_versions == ("1.0",)
    assert not list(dest.glob("*.so.1.0"))


def test_disk_full_while_writing_fails_cleanly(
    libs: LibraryBuilder, reader: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    mnt = tmp_path / "mnt"
    old = libs.source(tmp_path / "src1", 1, version="1.0")
    new = libs.source(tmp_path / "src2", 2, version="2.0")
    with small_filesystem(mnt, 6 * 1024):
        dest = mnt / "vgpu"
        install(settings(old, dest))
        proc = start_installer("--source", str(new), "--dest", str(dest), hook="after-preflight=stop")
        try:
            wait_stopped(proc)
            # Another writer fills the filesystem between the space check and the writes.
            filler = mnt / "filler"
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            os.kill(proc.pid, signal.SIGCONT)
            _out, err = proc.communicate(timeout=120)
        finally:
            reap(proc)
        assert proc.returncode == 1, err
        (event,) = [e for e in log_events(err) if e["level"] == "error"]
        assert "is full" in event["error"]
        assert "previous installation is unchanged" in event["error"]
        assert check_usable(dest, {"1.0": old, "2.0": new}, reader, complete=True) == {"1.0"}
        assert not list(dest.rglob(".hami-tmp.*"))
        filler.unlink()
        install(settings(new, dest, gc_grace=300.0))
        assert check_usable(dest, {"1.0": old, "2.0": new}, reader, complete=True) == {"2.0"}

"""Garbage collection against real processes and mounts: only unused old versions go."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from hami_lib_installer.adapters.procfs import in_initial_pid_namespace
from hami_lib_installer.app.installer import install
from installer_testkit import LibraryBuilder, reap, settings


def versions_present(dest: pathlib.Path) -> set[str]:
    return {p.name.removeprefix("libvgpu.so.") for p in dest.glob("libvgpu.so.*")} | {
        p.name.removeprefix("libvgpu_vk.so.") for p in dest.glob("libvgpu_vk.so.*")
    }


def sources(libs: LibraryBuilder, tmp_path: pathlib.Path, *numbers: int) -> dict[int, pathlib.Path]:
    return {n: libs.source(tmp_path / f"src{n}", n, version=f"{n}.0") for n in numbers}


def test_a_mapped_old_version_stays_until_its_process_exits(
    libs: LibraryBuilder, reader: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    src = sources(libs, tmp_path, 1, 2, 3)
    dest = tmp_path / "vgpu"
    scan = {"process_scan": "on", "keep_last": 0}
    install(settings(src[1], dest, **scan))
    stop = tmp_path / "stop"
    # A container process: loaded libvgpu.so (then version 1) and keeps using it.
    holder = subprocess.Popen(
        [
            str(reader),
            "--hold",
            str(dest / "libvgpu.so"),
            "hami_test_version",
            str(stop),
            *(str(src[n] / "libvgpu.so") for n in src),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        install(settings(src[2], dest, **scan))
        report = install(settings(src[3], dest, **scan))
        assert report.removed_versions == ("2.0",)  # never mapped by anyone
        kept = {k.version: k.reason for k in report.kept_versions}
        assert kept["1.0"] == f"libvgpu.so.1.0 mapped by pid {holder.pid}"
        assert versions_present(dest) == {"1.0", "3.0"}
        assert (dest / "libvgpu.so.1.0").read_bytes() == (src[1] / "libvgpu.so").read_bytes()
    finally:
        stop.touch()
        try:
            out, _ = holder.communicate(timeout=60)
        finally:
            reap(holder)
    assert holder.returncode == 0, out
    report = install(settings(src[3], dest, **scan))
    assert report.removed_versions == ("1.0",)
    assert versions_present(dest) == {"3.0"}


def test_a_bind_mounted_old_version_stays_until_unmounted(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    src = sources(libs, tmp_path, 1, 2)
    dest = tmp_path / "vgpu"
    scan = {"process_scan": "on", "keep_last": 0}
    install(settings(src[1], dest, **scan))
    container_file = tmp_path / "container-rootfs-libvgpu_vk.so"
    container_file.touch()
    # What the container runtime does with the device plugin's mount of the stable name.
    mounted = subprocess.run(
        ["mount", "--bind", str(dest / "libvgpu_vk.so"), str(container_file)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.fail(f"bind mounts need root (run the suite as root): {mounted.stderr.strip()}")
    try:
        report = install(settings(src[2], dest, **scan))
        assert {k.version: k.reason for k in report.kept_versions}["1.0"] == (
            "libvgpu_vk.so.1.0 bind-mounted in a mount namespace"
        )
        assert container_file.read_bytes() == (src[1] / "libvgpu_vk.so").read_bytes()
    finally:
        subprocess.run(["umount", str(container_file)], check=True)
    assert install(settings(src[2], dest, **scan)).removed_versions == ("1.0",)


def test_without_process_visibility_the_last_n_versions_stay(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    src = sources(libs, tmp_path, 1, 2, 3, 4, 5)
    dest = tmp_path / "vgpu"
    for n in src:
        report = install(settings(src[n], dest, process_scan="off", keep_last=2))
    assert report.removed_versions == ("2.0",)
    assert versions_present(dest) == {"3.0", "4.0", "5.0"}
    reasons = {k.version: k.reason for k in report.kept_versions}
    assert reasons["3.0"] == "keep-last 2 (process maps not visible)"
    assert reasons["5.0"] == "current"


def test_nothing_is_collected_during_the_grace_period(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    src = sources(libs, tmp_path, 1, 2)
    dest = tmp_path / "vgpu"
    install(settings(src[1], dest, gc_grace=300.0, keep_last=0))
    report = install(settings(src[2], dest, gc_grace=300.0, keep_last=0))
    assert report.removed_versions == ()
    assert "grace period" in {k.version: k.reason for k in report.kept_versions}["1.0"]
    later = install(settings(src[2], dest, gc_grace=300.0, keep_last=0), clock=lambda: time.time() + 301)
    assert later.removed_versions == ("1.0",)


def test_gc_leaves_other_files_alone(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    src = sources(libs, tmp_path, 1, 2)
    dest = tmp_path / "vgpu"
    install(settings(src[1], dest))
    foreign = ["libvgpu.so.bak~", "libvgpu.so.", "notes.txt", "libcuda.so.1", "abc.cache"]
    for name in foreign:
        (dest / name).write_text("not ours")
    (dest / "containers" / "pod_ctr").mkdir(parents=True)
    os.symlink("libvgpu.so.1.0", dest / "libvgpu.so.9.9")  # a symlink with a versioned name is not a version file
    report = install(settings(src[2], dest, keep_last=0))
    assert report.removed_versions == ("1.0",)
    for name in foreign:
        assert (dest / name).read_text() == "not ours"
    assert (dest / "containers" / "pod_ctr").is_dir()
    assert (dest / "libvgpu.so.9.9").is_symlink()


def test_gc_disabled_keeps_everything(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    src = sources(libs, tmp_path, 1, 2)
    dest = tmp_path / "vgpu"
    install(settings(src[1], dest, gc=False))
    install(settings(src[2], dest, gc=False, keep_last=0))
    assert versions_present(dest) == {"1.0", "2.0"}


def test_host_pid_namespace_detection(tmp_path: pathlib.Path) -> None:
    host = tmp_path / "host" / "self" / "ns"
    pod = tmp_path / "pod" / "self" / "ns"
    host.mkdir(parents=True)
    pod.mkdir(parents=True)
    os.symlink("pid:[4026531836]", host / "pid")  # the kernel's fixed inode of the initial namespace
    os.symlink("pid:[4026532201]", pod / "pid")
    assert in_initial_pid_namespace(tmp_path / "host")
    assert not in_initial_pid_namespace(tmp_path / "pod")
    assert not in_initial_pid_namespace(tmp_path / "missing")


DRIVER = """
import json, subprocess, sys, pathlib
from hami_lib_installer.app.installer import install
from installer_testkit import settings
reader, dest, stop, *srcs = sys.argv[1:]
dest, srcs = pathlib.Path(dest), [pathlib.Path(s) for s in srcs]
scan = {"process_scan": "on", "keep_last": 5}
install(settings(srcs[0], dest, **scan))
holder = subprocess.Popen([reader, "--hold", str(dest / "libvgpu.so"), "hami_test_version", stop,
                           *(str(s / "libvgpu.so") for s in srcs)], stdout=subprocess.PIPE, text=True)
assert holder.stdout.readline().strip() == "ready"
install(settings(srcs[1], dest, **scan))
during = install(settings(srcs[2], dest, **scan))
pathlib.Path(stop).touch()
holder.communicate()
after = install(settings(srcs[2], dest, **scan))
def summary(report):
    return [report.removed_versions, [[k.version, k.reason] for k in report.kept_versions]]
print(json.dumps({"holder": holder.pid, "during": summary(during), "after": summary(after)}))
"""


def test_complete_process_scan_in_a_private_pid_namespace(
    libs: LibraryBuilder, reader: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Where every process is visible (here: a fresh PID namespace with its own /proc), keep-last does not apply."""
    src = sources(libs, tmp_path, 1, 2, 3)
    dest = tmp_path / "vgpu"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"unshare --pid needs root (run the suite as root): {probe.stderr.strip()}")
    result = subprocess.run(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            sys.executable,
            "-c",
            DRIVER,
            str(reader),
            str(dest),
            str(tmp_path / "stop"),
            *(str(src[n]) for n in (1, 2, 3)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=pathlib.Path(__file__).parent,
        env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parent)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    removed, kept = out["during"]
    assert removed == ["2.0"]  # unmapped, removed although keep-last is 5: the scan saw every process
    assert dict(kept) == {"1.0": f"libvgpu.so.1.0 mapped by pid {out['holder']}", "3.0": "current"}
    removed, kept = out["after"]
    assert removed == ["1.0"]
    assert dict(kept) == {"3.0": "current"}

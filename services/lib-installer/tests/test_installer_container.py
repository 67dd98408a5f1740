"""What a container sees: the device plugin's mounts emulated in a private mount namespace.

A GPU container gets ``<runtime dir>/libvgpu.so`` bind-mounted from the host's stable name and
``/etc/ld.so.preload`` from the host's ``ld.so.preload``. Here a ``unshare --mount`` shell plays
the container: it bind-mounts the same files (``/etc`` gets a private overlay so the host's is
never touched) and runs ``/bin/true``, into which the dynamic loader preloads the installed test
library; the library's constructor records its build number. This shows that the installed
``ld.so.preload`` works, that a container keeps the version it was started with across an upgrade
(the bind mount resolved the symlink when it was made), that a new container gets the new version,
and that the collector sees the container's mount from another mount namespace.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest
from hami_lib_installer.app.installer import install
from installer_testkit import CC, LibraryBuilder, reap, settings, wait_until

PRELOAD_C = """
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void loaded(void) {
    const char *marker = getenv("HAMI_TEST_PRELOAD_MARKER");
    FILE *f = marker ? fopen(marker, "a") : NULL;
    if (f) { fprintf(f, "%d\\n", BUILD_NUMBER); fclose(f); }
}
int hami_test_version(void) { return BUILD_NUMBER; }
"""

CONTAINER_SH = r"""
set -eu
mkdir -p "$WORK/upper" "$WORK/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$WORK/upper,workdir=$WORK/work" /etc
mkdir -p "$RUNTIME"
touch "$RUNTIME/libvgpu.so" /etc/ld.so.preload
mount --bind "$DEST/libvgpu.so" "$RUNTIME/libvgpu.so"
mount --bind "$DEST/ld.so.preload" /etc/ld.so.preload
HAMI_TEST_PRELOAD_MARKER="$MARKER" /bin/true
touch "$WORK/ready"
while [ ! -e "$WORK/go" ]; do sleep 0.05; done
HAMI_TEST_PRELOAD_MARKER="$MARKER" /bin/true
"""


def preload_source(libs: LibraryBuilder, where: pathlib.Path, n: int) -> pathlib.Path:
    source = libs.source(where, n, version=f"{n}.0")
    c = where / "preload.c"
    c.write_text(PRELOAD_C.replace("BUILD_NUMBER", str(n)))
    subprocess.run([CC, "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(source / "libvgpu.so"), str(c)], check=True)
    c.unlink()
    return source


def start_container(work: pathlib.Path, dest: pathlib.Path, runtime: pathlib.Path) -> subprocess.Popen[str]:
    work.mkdir(parents=True)
    env = {**os.environ, "WORK": str(work), "DEST": str(dest), "RUNTIME": str(runtime), "MARKER": str(work / "marker")}
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", CONTAINER_SH],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def marker(work: pathlib.Path) -> list[str]:
    path = work / "marker"
    return path.read_text().split() if path.exists() else []


def test_containers_keep_their_version_and_new_ones_get_the_upgrade(
    libs: LibraryBuilder, tmp_path: pathlib.Path
) -> None:
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"mount namespaces need root (run the suite as root): {probe.stderr.strip()}")
    dest = tmp_path / "host" / "usr" / "local" / "vgpu"
    runtime = tmp_path / "container" / "usr" / "local" / "vgpu"  # where containers see the library
    install(settings(preload_source(libs, tmp_path / "src1", 1), dest, runtime_dir=str(runtime)))

    first = start_container(tmp_path / "c1", dest, runtime)
    try:
        wait_until(lambda: (tmp_path / "c1" / "ready").exists() or first.poll() is not None, what="container 1")
        assert first.poll() is None, first.communicate()[1]
        assert marker(tmp_path / "c1") == ["1"]  # ld.so.preload -> stable name -> version 1, preloaded

        report = install(
            settings(
                preload_source(libs, tmp_path / "src2", 2),
                dest,
                runtime_dir=str(runtime),
                process_scan="on",
                keep_last=0,
            )
        )
        assert os.readlink(dest / "libvgpu.so") == "libvgpu.so.2.0"
        kept = {k.version: k.reason for k in report.kept_versions}
        # Kept for its mount, or because a process in the container (even `sleep`, as every process
        # there preloads it) has it mapped at that moment.
        assert kept["1.0"] == "libvgpu.so.1.0 bind-mounted in a mount namespace" or kept["1.0"].startswith(
            "libvgpu.so.1.0 mapped by pid"
        )

        (tmp_path / "c1" / "go").touch()
        _out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        assert marker(tmp_path / "c1") == ["1", "1"]  # the running container still loads version 1
    finally:
        (tmp_path / "c1" / "go").touch()
        reap(first)

    second = start_container(tmp_path / "c2", dest, runtime)
    (tmp_path / "c2" / "go").touch()
    try:
        _out, err = second.communicate(timeout=60)
    finally:
        reap(second)
    assert second.returncode == 0, err
    assert marker(tmp_path / "c2") == ["2", "2"]  # a container started after the upgrade gets version 2
    # With no container left, version 1 is collected.
    assert install(
        settings(
            preload_source(libs, tmp_path / "src2b", 2), dest, runtime_dir=str(runtime), process_scan="on", keep_last=0
        )
    ).removed_versions == ("1.0",)

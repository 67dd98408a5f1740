"""Upgrades under load: processes keep loading and reading the library while versions switch.

The readers (tests/c/reader.c, built here) compare every whole read with the complete files
of the known versions and dlopen()/call/dlclose() the library each iteration; any partial
file, failed load or unknown content ends them with a non-zero status.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

from hami_lib_installer.app.installer import install
from installer_testkit import LibraryBuilder, reap, settings


def start_reader(procs: list[subprocess.Popen[str]], reader: pathlib.Path, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([str(reader), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs.append(proc)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.strip() == "ready", first + proc.stdout.read()
    return proc


def finish(result: tuple[str, int]) -> tuple[int, dict[int, int]]:
    """(version loaded in the last iteration, {version: iterations that loaded it}) from (stdout, status)."""
    out, status = result
    assert status == 0, out
    final = int(out.split("final=")[1].split()[0])
    seen = out.split("seen=")[1].strip().rstrip(",")
    return final, {int(v): int(c) for v, c in (item.split(":") for item in seen.split(","))}


def test_readers_never_see_a_partial_library_during_upgrades(
    libs: LibraryBuilder, reader: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    sources = {n: libs.source(tmp_path / f"src{n}", n, version=f"{n}.0") for n in (1, 2, 3)}
    dest = tmp_path / "vgpu"
    install(settings(sources[1], dest))
    stop = tmp_path / "stop"
    core_expected = [str(sources[n] / "libvgpu.so") for n in sources]
    vk_expected = [str(sources[n] / "libvgpu_vk.so") for n in sources]
    procs: list[subprocess.Popen[str]] = []
    try:
        stable = start_reader(procs, reader, str(dest / "libvgpu.so"), "hami_test_version", str(stop), *core_expected)
        stable_vk = start_reader(
            procs, reader, str(dest / "libvgpu_vk.so"), "hami_test_vk_version", str(stop), *vk_expected
        )
        pinned = start_reader(  # a long-running process that mapped version 1 through its versioned name
            procs, reader, "--hold", str(dest / "libvgpu.so.1.0"), "hami_test_version", str(stop), core_expected[0]
        )
        # Upgrades with new files written while the readers run, then switches back and forth.
        for n in (2, 3, 1) * 5 + (2, 3):
            report = install(settings(sources[n], dest, gc_grace=300.0))
            assert report.version == f"{n}.0"
        assert os.readlink(dest / "libvgpu.so") == "libvgpu.so.3.0"
    finally:
        stop.touch()  # each reader then does one last iteration, after the final switch
        outputs = {}
        for proc in procs:
            try:
                outputs[proc.pid] = (proc.communicate(timeout=120)[0], proc.wait())
            finally:
                reap(proc)
    final_core, seen_core = finish(outputs[stable.pid])
    final_vk, seen_vk = finish(outputs[stable_vk.pid])
    final_pinned, seen_pinned = finish(outputs[pinned.pid])
    assert set(seen_core) <= {1, 2, 3}
    assert set(seen_vk) <= {1, 2, 3}
    assert seen_core[1] >= 1
    assert seen_vk[1] >= 1
    assert final_core == 3
    assert final_vk == 3
    assert final_pinned == 1
    assert set(seen_pinned) == {1}


def test_reader_detects_an_in_place_overwrite(
    libs: LibraryBuilder, reader: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Control: the reader does catch what HAMi's `cp -f` can produce (a half-rewritten file)."""
    lib = tmp_path / "libvgpu.so"
    old = (libs.built(1) / "libvgpu.so").read_bytes()
    new = (libs.built(2) / "libvgpu.so").read_bytes()
    lib.write_bytes(old)
    with open(lib, "r+b") as f:  # in place, like cp over an existing file, stopped half way
        f.truncate(0)
        f.write(new[: len(new) // 2])
    result = subprocess.run(
        [
            str(reader),
            "--once",
            str(lib),
            "hami_test_version",
            "/nonexistent",
            str(libs.built(1) / "libvgpu.so"),
            str(libs.built(2) / "libvgpu.so"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "matches no expected file" in result.stdout

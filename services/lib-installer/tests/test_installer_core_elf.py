"""ELF header checks on real objects built here and on crafted headers."""

from __future__ import annotations

import pathlib
import struct
import subprocess

import pytest
from hami_lib_installer.core.elf import ELFCLASS32, ElfTarget, elf_problem
from installer_testkit import CC, LibraryBuilder

X86_64 = ElfTarget.for_platform("x86_64", "little")


@pytest.fixture(scope="module")
def host() -> ElfTarget:
    import platform
    import sys

    return ElfTarget.for_platform(platform.machine(), sys.byteorder)


def test_a_real_shared_library_passes(libs: LibraryBuilder, host: ElfTarget) -> None:
    assert elf_problem((libs.built(1) / "libvgpu.so").read_bytes(), host) is None


def test_text_and_empty_files_are_not_elf(host: ElfTarget) -> None:
    assert "not an ELF file" in (elf_problem(b"#!/bin/sh\necho hi\n", host) or "")
    assert "not an ELF file" in (elf_problem(b"", host) or "")


def test_truncated_library_is_refused(libs: LibraryBuilder, host: ElfTarget) -> None:
    data = (libs.built(1) / "libvgpu.so").read_bytes()
    assert "truncated" in (elf_problem(data[:40], host) or "")
    assert "truncated" in (elf_problem(data[:70], host) or "")


def test_executables_and_objects_are_refused(tmp_path: pathlib.Path, host: ElfTarget) -> None:
    src = tmp_path / "main.c"
    src.write_text("int main(void) { return 0; }\n")
    subprocess.run([CC, "-fPIE", "-pie", "-o", str(tmp_path / "pie"), str(src)], check=True)
    subprocess.run([CC, "-c", "-o", str(tmp_path / "main.o"), str(src)], check=True)
    assert "executable" in (elf_problem((tmp_path / "pie").read_bytes(), host) or "")
    assert "relocatable object" in (elf_problem((tmp_path / "main.o").read_bytes(), host) or "")


def test_wrong_machine_class_and_byte_order_are_refused(libs: LibraryBuilder) -> None:
    data = bytearray((libs.built(1) / "libvgpu.so").read_bytes())
    machine = struct.unpack_from("<H", data, 18)[0]
    other = ElfTarget(X86_64.elf_class, X86_64.data, 183 if machine != 183 else 62)
    assert "built for" in (elf_problem(bytes(data), other) or "")
    wrong_class = bytearray(data)
    wrong_class[4] = ELFCLASS32
    assert "32-bit ELF" in (elf_problem(bytes(wrong_class), X86_64) or "")
    wrong_order = bytearray(data)
    wrong_order[5] = 2
    assert "byte order" in (elf_problem(bytes(wrong_order), X86_64) or "")


def test_unknown_platform_is_reported() -> None:
    with pytest.raises(ValueError, match="unsupported machine"):
        ElfTarget.for_platform("pdp11", "little")

"""ELF header checks: is this file a shared library the node's dynamic loader can map? The header and
program headers suffice to refuse a text file, a truncated download, a static executable, a 32-bit build or
another architecture's before it can replace a working library.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Final

ELF_MAGIC: Final = b"\x7fELF"
ELFCLASS32: Final = 1
ELFCLASS64: Final = 2
ELFDATA2LSB: Final = 1
ELFDATA2MSB: Final = 2
ET_DYN: Final = 3
PT_DYNAMIC: Final = 2
PT_INTERP: Final = 3

MACHINES: Final = {
    "x86_64": 62,
    "amd64": 62,
    "aarch64": 183,
    "arm64": 183,
    "ppc64le": 21,
    "s390x": 22,
    "riscv64": 243,
}
_MACHINE_NAMES: Final = {
    62: "x86-64",
    183: "AArch64",
    21: "PowerPC64",
    22: "s390x",
    243: "RISC-V",
    3: "i386",
    40: "ARM",
}
_TYPE_NAMES: Final = {
    0: "no type",
    1: "relocatable object (.o)",
    2: "static executable",
    3: "shared object",
    4: "core dump",
}


@dataclasses.dataclass(frozen=True, slots=True)
class ElfTarget:
    """What the node's loader accepts: word size, byte order and machine."""

    elf_class: int
    data: int
    machine: int

    @classmethod
    def for_platform(cls, machine_name: str, byteorder: str) -> ElfTarget:
        """The target of a platform (``platform.machine()``, ``sys.byteorder``); 64-bit only."""
        machine = MACHINES.get(machine_name.lower())
        if machine is None:
            raise ValueError(f"unsupported machine {machine_name!r}; supported: {', '.join(sorted(MACHINES))}")
        return cls(ELFCLASS64, ELFDATA2LSB if byteorder == "little" else ELFDATA2MSB, machine)


def elf_problem(data: bytes, target: ElfTarget) -> str | None:
    """Why ``data`` is not a shared library for ``target``, or None when it is one."""
    if len(data) < 16 or data[:4] != ELF_MAGIC:
        return "not an ELF file (no \\x7fELF magic at the start)"
    elf_class, byte_order, ident_version = data[4], data[5], data[6]
    if elf_class not in (ELFCLASS32, ELFCLASS64):
        return f"invalid ELF class {elf_class}"
    if byte_order not in (ELFDATA2LSB, ELFDATA2MSB):
        return f"invalid ELF byte order {byte_order}"
    if ident_version != 1:
        return f"invalid ELF version {ident_version}"
    if elf_class != target.elf_class:
        have_bits = 32 if elf_class == ELFCLASS32 else 64
        want_bits = 64 if target.elf_class == ELFCLASS64 else 32
        return f"{have_bits}-bit ELF; this node needs {want_bits}-bit"
    if byte_order != target.data:
        return "ELF byte order does not match this node"
    endian = "<" if byte_order == ELFDATA2LSB else ">"
    wide = elf_class == ELFCLASS64
    header_size = 64 if wide else 52
    if len(data) < header_size:
        return f"truncated ELF header ({len(data)} bytes)"
    e_type, e_machine = struct.unpack_from(endian + "HH", data, 16)
    if e_type != ET_DYN:
        return f"ELF type is {_TYPE_NAMES.get(e_type, str(e_type))}, not a shared object"
    if e_machine != target.machine:
        have = _MACHINE_NAMES.get(e_machine, f"machine {e_machine}")
        want = _MACHINE_NAMES.get(target.machine, f"machine {target.machine}")
        return f"built for {have}, this node is {want}"
    if wide:
        (phoff,) = struct.unpack_from(endian + "Q", data, 32)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 54)
    else:
        (phoff,) = struct.unpack_from(endian + "I", data, 28)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 42)
    if phnum == 0 or phentsize < 8:
        return "ELF file has no program headers; the loader cannot map it"
    if phoff + phnum * phentsize > len(data):
        return "truncated ELF file (program headers lie past the end)"
    types = {struct.unpack_from(endian + "I", data, phoff + i * phentsize)[0] for i in range(phnum)}
    if PT_DYNAMIC not in types:
        return "ELF file has no dynamic section; it is not a shared library"
    if PT_INTERP in types:
        return "ELF file is a position-independent executable, not a shared library"
    return None

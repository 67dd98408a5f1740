"""hamicore's binary layouts (the accounting region, region_layout.h; the per-container spec, spec_layout.h) as the
C compiler lays them out, for :mod:`.region` and :mod:`.spec`.

Nothing here is typed in by hand: ``_generated/region_layout.py`` is generated from ``offsetof``/``sizeof`` of a
compiled probe of the headers at build time (``make device-plugin-layout``, hamicore/tools/gen_region_layout.py);
a test checks that the module matches the headers of the tree.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Final, NamedTuple

try:
    from hami_device_plugin._generated import region_layout as _generated
except ModuleNotFoundError as exc:  # a source tree where the build step has not run
    raise ModuleNotFoundError(
        "hami_device_plugin._generated.region_layout is missing: it is generated from hamicore's C headers by "
        "`make device-plugin-layout` (hamicore/tools/gen_region_layout.py)",
        name=exc.name,
    ) from exc


class Field(NamedTuple):
    """One member, as the generated module lists it: its offset in its struct, its size, its ``struct`` module
    format ('' for a struct member)."""

    name: str
    offset: int
    size: int
    format: str


@dataclasses.dataclass(frozen=True, slots=True)
class StructLayout:
    """One C struct: its size and its members, which tile it (the generator checks there are no holes)."""

    name: str
    size: int
    fields: tuple[Field, ...]

    def offset(self, name: str) -> int:
        return {f.name: f.offset for f in self.fields}[name]  # KeyError: no such member

    def packer(self, first: str, last: str) -> struct.Struct:
        """Little-endian packer of the members ``first`` to ``last``, from the offset of ``first``."""
        names = [f.name for f in self.fields]
        run = self.fields[names.index(first) : names.index(last) + 1]
        if not run or any(not f.format for f in run):
            raise ValueError(f"struct {self.name}: {first}..{last} is not a run of scalar members")
        return struct.Struct("<" + "".join(f.format for f in run))


def constant(name: str) -> int:
    """The integer value of a ``#define`` or enum constant of the headers (``HAMI_...``)."""
    value = _generated.CONSTANTS[name]
    if not isinstance(value, int):
        raise TypeError(f"{name} is {value!r}, not an integer")
    return value


def text(name: str) -> str:
    """The value of a string ``#define`` of the headers."""
    value = _generated.CONSTANTS[name]
    if not isinstance(value, str):
        raise TypeError(f"{name} is {value!r}, not a string")
    return value


def struct_layout(name: str) -> StructLayout:
    """The layout of ``struct <name>``."""
    size, fields = _generated.STRUCTS[name]
    return StructLayout(name, size, tuple(Field._make(f) for f in fields))


def constants_with_prefix(prefix: str) -> dict[str, int]:
    """Every integer constant named ``<prefix><NAME>``, as ``{NAME: value}`` (an enum's members)."""
    items = _generated.CONSTANTS.items()
    return {n.removeprefix(prefix): v for n, v in items if n.startswith(prefix) and isinstance(v, int)}


REGION_HEADER: Final = struct_layout("hami_region_header")
DEVICE_RECORD: Final = struct_layout("hami_device_record")
LIMITER_FIELDS: Final = struct_layout("hami_limiter_fields")
PROC_SLOT: Final = struct_layout("hami_proc_slot")
REGION: Final = struct_layout("hami_region")
SPEC: Final = struct_layout("hami_spec")
SPEC_DEVICE: Final = struct_layout("hami_spec_device")

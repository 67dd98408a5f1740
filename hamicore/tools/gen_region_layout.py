#!/usr/bin/env python3
"""Generate the Python view of hamicore's binary layouts (the accounting region, region_layout.h, and the
per-container spec, spec_layout.h) from the C headers, so that readers in Python never keep a copy by hand.

The numbers come from the C compiler, not from reading C: a probe program includes the headers and prints
``sizeof``/``offsetof`` of every member, each member's element type (``_Generic``) and the value of every
constant, and this script writes them as plain data into a Python module (the device plugin's
``hami_device_plugin/_generated/region_layout.py``: ``make device-plugin-layout``, and the image build's
hamicore stage, deploy/images/build-hamicore.sh).

The headers are read only to learn the names to ask the compiler about, and only in this strict subset
(anything else in a struct body is refused, never guessed at):

* ``#define HAMI_<NAME> <value>``: an object-like macro (integer or string); include guards (``*_H``) are not
  constants;
* ``enum { HAMI_<NAME> = <value>, ... };``: anonymous enums;
* ``struct hami_<name> { <member>; ... };`` with one member per declaration:
  ``[_Atomic] <integer type> <name>[<count>];`` or ``struct hami_<other> <name>[<count>];`` (``[<count>]``
  optional), integer types being the ``<stdint.h>`` exact-width ones and ``char``.

Every struct must be tiled by its members (explicit padding fields, no holes the compiler adds, nothing after
the last member): a member the subset missed would leave a hole, so a hole is an error.

Usage: gen_region_layout.py [--cc CC] [--include DIR] --out FILE
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HEADERS = ("region_layout.h", "spec_layout.h")
DEFAULT_INCLUDE = Path(__file__).resolve().parents[1] / "src" / "accounting"

_SCALARS = {
    "uint8_t": "B", "int8_t": "b", "char": "c", "uint16_t": "H", "int16_t": "h",
    "uint32_t": "I", "int32_t": "i", "uint64_t": "Q", "int64_t": "q",
}  # fmt: skip
_DEFINE = re.compile(r"^#\s*define\s+(HAMI_[A-Z0-9_]+)[ \t]+\S", re.M)
_ENUM = re.compile(r"\benum\s*\{([^}]*)\}\s*;")
_STRUCT = re.compile(r"\bstruct\s+(hami_[a-z0-9_]+)\s*\{([^}]*)\}\s*;")
_MEMBER = re.compile(
    r"^(?:_Atomic\s+)?(?P<type>struct\s+hami_[a-z0-9_]+|[a-z0-9_]+)\s+(?P<name>[a-z_][a-z0-9_]*)"
    r"\s*(?:\[(?P<count>[^\]]+)\])?$"
)


class LayoutError(RuntimeError):
    """The headers leave the subset this generator reads, or a struct is not tiled by its members."""


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", " ", text, flags=re.S))


def parse(text: str) -> tuple[list[str], dict[str, list[tuple[str, str, bool]]]]:
    """The constant names and, per struct, its members as ``(name, element type, is_array)``."""
    text = _strip_comments(text)
    constants = [n for n in _DEFINE.findall(text) if not n.endswith("_H")]
    for body in _ENUM.findall(text):
        constants += [item.split("=")[0].strip() for item in body.split(",") if item.strip()]
    structs: dict[str, list[tuple[str, str, bool]]] = {}
    for name, body in _STRUCT.findall(text):
        members = []
        for declaration in (d.strip() for d in body.split(";")):
            if not declaration:
                continue
            match = _MEMBER.match(" ".join(declaration.split()))
            if match is None:
                raise LayoutError(f"struct {name}: {declaration!r} is outside the subset this generator reads")
            element = match["type"]
            if not element.startswith("struct ") and element not in _SCALARS:
                raise LayoutError(f"struct {name}: member {match['name']} has type {element}, not a fixed-width one")
            members.append((match["name"], element, match["count"] is not None))
        structs[name] = members
    return constants, structs


def probe_source(headers: list[str], constants: list[str], structs: dict[str, list[tuple[str, str, bool]]]) -> str:
    """A C program that prints the layouts as JSON (keys: constants, structs)."""
    codes = ", ".join(f'{t}: "{c}"' for t, c in _SCALARS.items())
    lines = [
        "#include <stdio.h>",
        *(f'#include "{h}"' for h in headers),
        f'#define CODE(e) _Generic((e), {codes}, default: "")',
        'static inline void pu(const char *n, unsigned long long v) { printf("\\"%s\\": %llu,", n, v); }',
        'static inline void ps(const char *n, long long v) { printf("\\"%s\\": %lld,", n, v); }',
        'static inline void pt(const char *n, const char *v) { printf("\\"%s\\": \\"%s\\",", n, v); }',
        "#define CONSTANT(c) _Generic((c), char *: pt, const char *: pt, unsigned: pu, unsigned long: pu, "
        "unsigned long long: pu, default: ps)(#c, c)",
        '#define MEMBER(s, m, e) printf("[\\"%s\\", %zu, %zu, %zu, \\"%s\\"],", #m, offsetof(struct s, m), '
        "sizeof(((struct s *)0)->m), sizeof(((struct s *)0)->m) / sizeof(e), CODE(e))",
        "int main(void) {",
        '    printf("{\\"constants\\": {");',
        *(f"    CONSTANT({c});" for c in constants),
        '    printf("\\"\\": 0}, \\"structs\\": {");',
    ]
    for name, members in structs.items():
        lines.append(f'    printf("\\"{name}\\": [%zu, [", sizeof(struct {name}));')
        for member, _element, is_array in members:
            element = f"((struct {name} *)0)->{member}" + ("[0]" if is_array else "")
            lines.append(f"    MEMBER({name}, {member}, {element});")
        lines.append('    printf("null]],");')
    lines += ['    printf("\\"\\": null}}\\n");', "    return 0;", "}"]
    return "\n".join(lines) + "\n"


def run_probe(source: str, cc: str, include: Path) -> tuple[dict[str, int | str], dict[str, Any]]:
    """Compile and run the probe: (constants, per struct ``[sizeof, [[member, offset, size, count, code], ...]]``)."""
    with tempfile.TemporaryDirectory(prefix="hami-layout-") as tmp:
        c_file, exe = Path(tmp) / "probe.c", Path(tmp) / "probe"
        c_file.write_text(source)
        subprocess.run([*shlex.split(cc), "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{include}", "-o", str(exe),
                        str(c_file)], check=True)  # fmt: skip
        out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    data = json.loads(out)
    constants, structs = data["constants"], data["structs"]
    del constants[""], structs[""]  # the probe's end markers
    return constants, structs


def _format(element: str, count: int, is_array: bool, code: str) -> str:
    """The ``struct`` module format of a whole member ('' for a struct-typed one)."""
    if element.startswith("struct "):
        return ""
    if not is_array:
        return code
    return f"{count}s" if code in ("B", "c") else f"{count}{code}"


Fields = tuple[tuple[str, int, int, str], ...]


def tile(structs: dict[str, list[tuple[str, str, bool]]], probed: dict[str, Any]) -> dict[str, tuple[int, Fields]]:
    """Per struct: ``(size, ((member, offset, size, format), ...))``, after checking the members tile it."""
    out: dict[str, tuple[int, Fields]] = {}
    for name, members in structs.items():
        size, rows = probed[name]
        fields: list[tuple[str, int, int, str]] = []
        at = 0
        for (member, element, is_array), row in zip(members, rows[:-1], strict=True):
            got, offset, member_size, count, code = row
            assert got == member
            if offset != at:
                raise LayoutError(f"struct {name}: a hole of {offset - at} bytes before {member} (at {at})")
            fields.append((member, offset, member_size, _format(element, count, is_array, code)))
            at = offset + member_size
        if at != size:
            raise LayoutError(f"struct {name}: {size - at} bytes after its last member")
        out[name] = (size, tuple(fields))
    return out


def _literal(value: object) -> str:
    return f"{value:#x}" if isinstance(value, int) and value >= 1 << 32 else repr(value)  # magics read as hex


def render(headers: list[str], constants: dict[str, int | str], structs: dict[str, tuple[int, Fields]]) -> str:
    lines = [
        f'"""hamicore\'s binary layouts ({", ".join(headers)}) as the C compiler lays them out.',
        "",
        "Generated by hamicore/tools/gen_region_layout.py (``make device-plugin-layout``); do not edit: change the",
        'C headers. Read through hami_device_plugin.core.layout."""',
        "",
        "from typing import Final",
        "",
        "# name -> value of every #define HAMI_* and enum constant",
        "CONSTANTS: Final[dict[str, int | str]] = {",
        *(f"    {name!r}: {_literal(value)}," for name, value in constants.items()),
        "}",
        "",
        "# struct name -> (sizeof, ((member, offsetof, sizeof, struct-module format or '' for a struct), ...))",
        "STRUCTS: Final[dict[str, tuple[int, tuple[tuple[str, int, int, str], ...]]]] = {",
    ]
    for name, (size, fields) in structs.items():
        lines.append(f"    {name!r}: ({size}, (")
        lines += [f"        {field!r}," for field in fields]
        lines.append("    )),")
    lines.append("}")
    return "\n".join(lines) + "\n"


def generate(cc: str, include: Path) -> str:
    text = "\n".join((include / h).read_text() for h in HEADERS)
    constant_names, structs = parse(text)
    constants, probed = run_probe(probe_source(list(HEADERS), constant_names, structs), cc, include)
    return render(list(HEADERS), constants, tile(structs, probed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen_region_layout.py", description=__doc__.splitlines()[0])
    parser.add_argument("--cc", default=os.environ.get("CC", "cc"), help="C compiler (default: $CC or cc)")
    parser.add_argument("--include", type=Path, default=DEFAULT_INCLUDE, help="directory of the headers")
    parser.add_argument("--out", type=Path, required=True, help="the Python module to write")
    args = parser.parse_args(argv)
    try:
        module = generate(args.cc, args.include)
    except (LayoutError, subprocess.CalledProcessError) as exc:
        print(f"gen_region_layout: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temp = args.out.with_name(f".{args.out.name}.tmp")
    temp.write_text(module)
    temp.replace(args.out)  # a reader never imports a half-written module
    return 0


if __name__ == "__main__":
    sys.exit(main())

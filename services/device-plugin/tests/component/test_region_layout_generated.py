"""The region and spec layouts the plugin reads and writes are hamicore's C headers, compiled: the generated module
(``_generated/region_layout.py``) is what hamicore/tools/gen_region_layout.py makes of the headers of this tree,
and the generator refuses headers it cannot read exactly (a member outside its subset, a hole in a struct)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from hami_device_plugin.core import layout

ROOT = Path(__file__).resolve().parents[4]
GENERATOR = ROOT / "hamicore" / "tools" / "gen_region_layout.py"
HEADERS = ROOT / "hamicore" / "src" / "accounting"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_region_layout", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_module_is_what_the_headers_of_this_tree_compile_to(tmp_path: Path) -> None:
    out = tmp_path / "region_layout.py"
    assert _generator().main(["--include", str(HEADERS), "--out", str(out)]) == 0
    installed = Path(layout.__file__).parents[1] / "_generated" / "region_layout.py"
    assert installed.read_text() == out.read_text(), "stale: run `make device-plugin-layout`"


def test_every_struct_is_tiled_by_its_members() -> None:
    for name in ("hami_region_header", "hami_device_record", "hami_proc_slot", "hami_region", "hami_spec"):
        s = layout.struct_layout(name)
        ends = [f.offset + f.size for f in s.fields]
        assert [f.offset for f in s.fields] == [0, *ends[:-1]]
        assert ends[-1] == s.size


def _write(tmp_path: Path, region: str) -> Path:
    (tmp_path / "region_layout.h").write_text(f"#pragma once\n#include <stdint.h>\n#include <stddef.h>\n{region}\n")
    (tmp_path / "spec_layout.h").write_text('#include "region_layout.h"\n')
    return tmp_path


def test_a_struct_with_a_hole_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    include = _write(tmp_path, "struct hami_x {\n    uint32_t a;\n    uint64_t b;\n};")
    assert _generator().main(["--include", str(include), "--out", str(tmp_path / "out.py")]) == 1
    assert "hole of 4 bytes before b" in capsys.readouterr().err
    assert not (tmp_path / "out.py").exists()


def test_a_member_outside_the_subset_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    include = _write(tmp_path, "struct hami_x {\n    uint32_t a, b;\n};")
    assert _generator().main(["--include", str(include), "--out", str(tmp_path / "out.py")]) == 1
    assert "outside the subset" in capsys.readouterr().err

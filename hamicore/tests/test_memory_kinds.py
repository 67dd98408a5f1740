"""The context/module/buffer split of a process's device memory (region layout 1.3, ``kind_bytes`` of the slot):
what CUDA contexts and loaded modules hold is recorded apart, inside ``used_bytes``, where it is charged and
released; it goes with the slot when the process exits or is reclaimed, and slots of older libraries have none."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from conftest import BUILD, MIB, Hami

CONTEXT_MIB = 300
MODULE_KIB = 4096
LIB_1_3 = (1 << 16) | 3
LAYOUT12 = BUILD / "libvgpu-layout12.so"


def _env(**extra: str) -> dict[str, str]:
    return {
        "CUDA_DEVICE_MEMORY_LIMIT": "2g",
        "FAKE_GPU_CONTEXT_MIB": str(CONTEXT_MIB),
        "FAKE_MODULE_KIB": str(MODULE_KIB),
        **extra,
    }


def _lines(proc: subprocess.Popen[str], count: int) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    return [json.loads(proc.stdout.readline()) for _ in range(count)]


def _process(hami: Hami, pid: int) -> dict[str, Any]:
    procs: list[dict[str, Any]] = [p for p in hami.inspect()["processes"] if p["pid"] == pid]
    assert len(procs) == 1, procs
    return procs[0]


def _step(hami: Hami, proc: subprocess.Popen[str], flag: Path, outputs: int) -> None:
    flag.touch()
    lines = _lines(proc, outputs)
    assert all(line.get("rc", 0) == 0 for line in lines), lines


def test_contexts_and_modules_are_recorded_apart_and_released_where_they_are_freed(hami: Hami) -> None:
    go = [hami.tmp / f"go{i}" for i in range(3)]
    proc = hami.spawn(
        "init",
        "ctx",
        "0",
        "module",
        "alloc",
        "64m",
        "ctx-create",
        "0",
        "ready",
        "wait-file",
        str(go[0]),
        "unload",
        "ready",
        "wait-file",
        str(go[1]),
        "ctx-destroy",
        "ctx-release",
        "0",
        "ready",
        "wait-file",
        str(go[2]),
        "hold",
        **_env(),
    )
    try:
        lines = _lines(proc, 6)
        assert [line.get("rc", 0) for line in lines] == [0] * 6, lines
        pid = lines[-1]["pid"]
        held = _process(hami, pid)
        assert held["lib_version"] == LIB_1_3
        assert held["context"][0] == 2 * CONTEXT_MIB * MIB  # the primary and the created context
        assert held["module"][0] == MODULE_KIB * 1024
        assert held["used"][0] == 2 * CONTEXT_MIB * MIB + MODULE_KIB * 1024 + 64 * MIB
        _step(hami, proc, go[0], 3)  # wait-file, unload, ready
        after_unload = _process(hami, pid)
        assert (after_unload["context"][0], after_unload["module"][0]) == (2 * CONTEXT_MIB * MIB, 0)
        assert after_unload["used"][0] == 2 * CONTEXT_MIB * MIB + 64 * MIB
        _step(hami, proc, go[1], 4)  # wait-file, ctx-destroy, ctx-release, ready
        after_release = _process(hami, pid)
        assert (after_release["context"][0], after_release["module"][0]) == (0, 0)
        assert after_release["used"][0] == 64 * MIB  # only the buffer is left
    finally:
        hami.stop(proc)


def test_a_killed_process_s_split_goes_with_its_reclaimed_usage(hami: Hami) -> None:
    holder = hami.spawn("init", "ctx", "0", "module", "alloc", "100m", "ready", "hold", **_env())
    try:
        pid = _lines(holder, 5)[4]["pid"]
        assert _process(hami, pid)["context"][0] == CONTEXT_MIB * MIB
    finally:
        hami.stop(holder)  # SIGKILL: no destructor runs
    assert hami.inspect()["devices"][0]["used"] == (CONTEXT_MIB + 100) * MIB + MODULE_KIB * 1024
    # 300 + 1500 MiB fit in 2 GiB only once the dead process's 404 MiB are reclaimed.
    survivor = hami.spawn("init", "ctx", "0", "alloc", "1500m", "ready", "hold", **_env())
    try:
        lines = _lines(survivor, 4)
        assert lines[2]["rc"] == 0, lines
        inspected = hami.inspect()
        assert inspected["reclaim_count"] == 1
        assert [p["pid"] for p in inspected["processes"]] == [lines[3]["pid"]]
        assert inspected["devices"][0]["used"] == (CONTEXT_MIB + 1500) * MIB
        assert inspected["processes"][0]["context"][0] == CONTEXT_MIB * MIB
        assert inspected["processes"][0]["module"][0] == 0
    finally:
        hami.stop(survivor)


def _layout12(hami: Hami, *args: str, **extra: str) -> subprocess.Popen[str]:
    """A process of a 1.2 library (no context/module split) in the same container."""
    argv, env = hami.command([str(BUILD / "tests" / "cuda_probe"), *args], hami.environ(True, **extra))
    key = "HAMI_TEST_PRELOAD" if hami.spec else "LD_PRELOAD"
    env[key] = env.get(key, "").replace(str(hami.lib), str(LAYOUT12))
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_1_2_and_1_3_libraries_share_a_region_and_only_1_3_slots_carry_a_split(hami: Hami) -> None:
    """Rolling upgrade both ways: whichever creates the region, the other attaches; a 1.2 process's context is
    in its used_bytes with no split (a reader counts it as buffer), a 1.3 process's is split."""
    for first in ("old", "new"):
        hami.region.unlink(missing_ok=True)
        old_args = ("init", "ctx", "0", "module", "ready", "hold")
        if first == "old":
            old = _layout12(hami, *old_args, **_env())
            old_pid = _lines(old, 4)[3]["pid"]
            new = hami.spawn(*old_args, **_env())
            new_pid = _lines(new, 4)[3]["pid"]
        else:
            new = hami.spawn(*old_args, **_env())
            new_pid = _lines(new, 4)[3]["pid"]
            old = _layout12(hami, *old_args, **_env())
            old_pid = _lines(old, 4)[3]["pid"]
        try:
            inspected = hami.inspect()
            assert inspected["version"] == ("1.2" if first == "old" else "1.3")
            per_process = MODULE_KIB * 1024 + CONTEXT_MIB * MIB
            assert inspected["devices"][0]["used"] == 2 * per_process
            old_slot, new_slot = _process(hami, old_pid), _process(hami, new_pid)
            assert old_slot["lib_version"] == (1 << 16) | 2
            assert (old_slot["used"][0], old_slot["context"][0], old_slot["module"][0]) == (per_process, 0, 0)
            assert new_slot["lib_version"] == LIB_1_3
            assert (new_slot["context"][0], new_slot["module"][0]) == (CONTEXT_MIB * MIB, MODULE_KIB * 1024)
        finally:
            hami.stop(old), hami.stop(new)


def test_a_slot_a_1_2_library_reclaimed_leaves_no_split_behind(hami: Hami) -> None:
    """A 1.2 library reclaims a killed 1.3 process without knowing the split; the next 1.3 process in that slot
    (or any reader) sees none of it."""
    holder = hami.spawn("init", "ctx", "0", "module", "ready", "hold", **_env())
    try:
        pid = _lines(holder, 4)[3]["pid"]
        assert _process(hami, pid)["context"][0] == CONTEXT_MIB * MIB
    finally:
        hami.stop(holder)
    # The 1.2 process needs more than is left, so it reclaims the dead slot first.
    old = _layout12(hami, "init", "ctx", "0", "alloc", "1700m", "ready", "hold", **_env())
    try:
        lines = _lines(old, 4)
        assert lines[2]["rc"] == 0, lines
        inspected = hami.inspect()
        assert inspected["reclaim_count"] == 1
        assert [p["pid"] for p in inspected["processes"]] == [lines[3]["pid"]]
        assert inspected["devices"][0]["used"] == (CONTEXT_MIB + 1700) * MIB
        assert all(p["context"][0] == 0 and p["module"][0] == 0 for p in inspected["processes"])
    finally:
        hami.stop(old)


def test_the_split_is_per_device_and_what_a_slot_cannot_record_stays_charged_as_buffer(hami: Hami) -> None:
    """Contexts on five GPUs and a module on the last: the slot records four (device, kind) pairs; the fifth
    context is charged all the same (reported as buffer) and its release takes back only what was charged."""
    go = hami.tmp / "go"
    proc = hami.spawn(
        "init",
        "ctx",
        "0",
        "ctx",
        "1",
        "ctx",
        "2",
        "ctx",
        "3",
        "ctx",
        "4",
        "module",
        "ready",
        "wait-file",
        str(go),
        "ctx-release",
        "4",
        "ctx-release",
        "0",
        "ready",
        "hold",
        **_env(FAKE_GPU_COUNT="5"),
    )
    try:
        lines = _lines(proc, 8)
        assert [line.get("rc", 0) for line in lines] == [0] * 8, lines
        pid = lines[-1]["pid"]
        held = _process(hami, pid)
        assert held["used"][:5] == [CONTEXT_MIB * MIB] * 4 + [CONTEXT_MIB * MIB + MODULE_KIB * 1024]
        assert held["context"][:5] == [CONTEXT_MIB * MIB] * 4 + [0]  # no entry left for device 4's context
        assert held["module"][:5] == [0, 0, 0, 0, 0]
        _step(hami, proc, go, 4)  # wait-file, ctx-release 4, ctx-release 0, ready
        after = _process(hami, pid)
        assert after["used"][:5] == [0] + [CONTEXT_MIB * MIB] * 3 + [MODULE_KIB * 1024]
        assert after["context"][:5] == [0] + [CONTEXT_MIB * MIB] * 3 + [0]
    finally:
        hami.stop(proc)

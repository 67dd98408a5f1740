"""Many processes, one budget: the race at the cap, SIGKILL reclaim, PID reuse, threads and fork."""

from __future__ import annotations

import json
import mmap
import os
import signal
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import MIB, Hami, by_cmd, region_layout, scaled

OUT_OF_MEMORY = 2


def _readline_json(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"probe ended early: {proc.stderr.read() if proc.stderr else ''}"
    result: dict[str, Any] = json.loads(line)
    return result


def test_racing_processes_never_exceed_the_cap_and_together_get_exactly_cap_over_size(hami: Hami) -> None:
    processes = scaled(64, 16)
    size_mib, cap_mib = 3, 3 * 97  # 97 allocations fit; every process tries to take them all
    go = hami.tmp / "go"
    done = hami.tmp / "done"
    hami.env.update({"CUDA_DEVICE_MEMORY_LIMIT": f"{cap_mib}m"})
    procs = [
        hami.spawn(
            "init",
            "ctx",
            "0",
            "ready",
            "wait-file",
            str(go),
            "fill",
            f"{size_mib}m",
            "budget",
            "0",
            "wait-file",
            str(done),
        )
        for _ in range(processes)
    ]
    try:
        for p in procs:
            assert _readline_json(p)["cmd"] == "init"
            _readline_json(p)
            _readline_json(p)
        go.touch()  # all start filling at once
        counts, peaks = [], []
        for p in procs:
            assert _readline_json(p)["cmd"] == "wait-file"
            fill = _readline_json(p)
            assert fill["rc"] == OUT_OF_MEMORY
            counts.append(int(fill["count"]))
            budget = _readline_json(p)
            peaks.append(int(budget["used_total"]))
        assert sum(counts) == cap_mib // size_mib
        assert max(peaks) <= cap_mib * MIB
        region = hami.inspect()
        device = region["devices"][0]
        assert device["used"] == cap_mib * MIB
        assert device["peak"] == cap_mib * MIB
        done.touch()
        for p in procs:
            assert p.wait(timeout=120) == 0
    finally:
        done.touch()
        for p in procs:
            hami.stop(p)
    assert hami.inspect()["devices"][0]["used"] == 0


def test_memory_of_a_sigkilled_process_is_reclaimed_before_anyone_is_refused(hami: Hami) -> None:
    hami.env.update({"CUDA_DEVICE_MEMORY_LIMIT": "100m"})
    victim = hami.spawn("init", "ctx", "0", "alloc", "80m", "hold")
    try:
        for _ in range(4):
            _readline_json(victim)
        assert hami.inspect()["devices"][0]["used"] == 80 * MIB
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=60)
        lines = hami.probe("init", "ctx", "0", "alloc", "80m", "budget", "0")
        assert by_cmd(lines, "alloc")[0]["rc"] == 0
        assert by_cmd(lines, "budget")[0]["used_total"] == 80 * MIB
        region = hami.inspect()
        assert region["reclaim_count"] == 1
        assert not any(p["pid"] == victim.pid for p in region["processes"])
    finally:
        hami.stop(victim)


def _plant_slot(region: Path, pid: int, start_time: int, used: int) -> None:
    """Write a live-looking slot holding `used` bytes on device 0, as a process would have."""
    lay = region_layout()
    with region.open("r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        slot = lay["slots_offset"] + (lay["max_procs"] - 1) * lay["slot_size"]
        struct.pack_into("<I", m, slot + lay["slot.state"], 2)
        struct.pack_into("<i", m, slot + lay["slot.pid"], pid)
        struct.pack_into("<Q", m, slot + lay["slot.start_time"], start_time)
        struct.pack_into("<Q", m, slot + lay["slot.used_bytes"], used)
        dev = lay["devices_offset"] + lay["device.used_bytes"]
        (current,) = struct.unpack_from("<Q", m, dev)
        struct.pack_into("<Q", m, dev, current + used)


def _start_time(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def test_a_reused_pid_is_not_mistaken_for_the_process_that_held_the_memory(hami: Hami) -> None:
    hami.env.update({"CUDA_DEVICE_MEMORY_LIMIT": "100m"})
    hami.probe("init", "ctx", "0")  # creates the region
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        # The slot names a live pid, but with another start time: its owner is gone, the pid was reused.
        _plant_slot(hami.region, sleeper.pid, _start_time(sleeper.pid) + 12345, 90 * MIB)
        lines = hami.probe("init", "ctx", "0", "alloc", "50m")
        assert by_cmd(lines, "alloc")[0]["rc"] == 0
        assert hami.inspect()["reclaim_count"] == 1
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_live_process_keeps_its_memory(hami: Hami) -> None:
    hami.env.update({"CUDA_DEVICE_MEMORY_LIMIT": "100m"})
    hami.probe("init", "ctx", "0")
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        _plant_slot(hami.region, sleeper.pid, _start_time(sleeper.pid), 90 * MIB)
        lines = hami.probe("init", "ctx", "0", "alloc", "50m")
        assert by_cmd(lines, "alloc")[0]["rc"] == OUT_OF_MEMORY
        assert hami.inspect()["reclaim_count"] == 0
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_zombie_is_dead(hami: Hami) -> None:
    hami.env.update({"CUDA_DEVICE_MEMORY_LIMIT": "100m"})
    victim = hami.spawn("init", "ctx", "0", "alloc", "80m", "hold")
    try:
        for _ in range(4):
            _readline_json(victim)
        os.kill(victim.pid, signal.SIGKILL)
        # Not reaped: a zombie still answers kill(pid, 0). Wait until the kernel made it one.
        stat = Path(f"/proc/{victim.pid}/stat")
        deadline = time.monotonic() + 60
        while stat.read_text()[stat.read_text().rindex(")") + 2] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        lines = hami.probe("init", "ctx", "0", "alloc", "80m")
        assert by_cmd(lines, "alloc")[0]["rc"] == 0
    finally:
        hami.stop(victim)


def test_fork_child_is_accounted_separately_and_parent_memory_stays_with_the_parent(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "alloc",
        "30m",
        "fork",
        "20m",
        "budget",
        "0",
        "alloc",
        "70m",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
    )
    child = by_cmd(lines, "fork-child")[0]
    assert child["rc"] == 0
    assert child["used_self"] == 20 * MIB
    assert child["used_total"] == 50 * MIB
    # The parent's pointer is untracked in the child: freeing it there reaches the driver, budget unchanged.
    assert child["parent_ptr_free_rc"] == 0
    after_fork, after_alloc = by_cmd(lines, "budget")
    assert after_fork["used_self"] == 30 * MIB
    # The child left with _exit (no destructors): its 20m count until someone needs them ...
    assert after_fork["used_total"] == 50 * MIB
    # ... and are reclaimed then, because the child is dead.
    assert by_cmd(lines, "alloc")[1]["rc"] == 0
    assert after_alloc["used_total"] == 100 * MIB


def test_threads_and_fork_together_keep_the_books_straight(hami: Hami) -> None:
    iters = scaled(2000, 200)
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "threads-fork",
        "8",
        str(iters),
        "1m",
        str(scaled(20, 5)),
        "threads",
        "8",
        str(iters),
        "1m",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="6m",
        timeout=300,
    )
    assert by_cmd(lines, "threads-fork")[0] == {"cmd": "threads-fork", "failures": 0, "child_failures": 0}
    assert by_cmd(lines, "threads")[0]["failures"] == 0
    budget = by_cmd(lines, "budget")[0]
    assert budget["used_total"] == 0
    assert budget["used_self"] == 0
    assert hami.inspect()["devices"][0]["peak"] <= 6 * MIB

"""MIG in the fake NVML, driven through pynvml (nvidia-ml-py) as the device plugin drives it: per-model profiles
and placements (the real profile IDs and sizes), MIG mode with its pending state, GPU and compute instances with
the real driver's error codes, MIG device handles and UUIDs, and instances shared by every process through the
shared state file."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from conftest import MIB, Hami

A100_40GB = "NVIDIA A100-SXM4-40GB"
PARENT = "GPU-12345678-9abc-4def-8123-456789abcdef"

# Runs OPS (a list of [function, args...]) in one pynvml client and prints one result per op: {"ok": value} or
# {"err": NVML return code}. Arguments "$name" refer to an earlier op's result saved with ["=name", op...].
CLIENT = r"""
import json, sys, pynvml as n
n.nvmlInit()
ops = json.loads(sys.argv[1]) if len(sys.argv) > 1 else OPS
saved = {"gpu": n.nvmlDeviceGetHandleByIndex(0)}
for i in range(1, n.nvmlDeviceGetCount()):
    saved[f"gpu{i}"] = n.nvmlDeviceGetHandleByIndex(i)

def text(value):
    return value.decode() if isinstance(value, bytes) else value

def profiles(h):
    out = []
    for index in range(n.NVML_GPU_INSTANCE_PROFILE_COUNT):
        try:
            p = n.nvmlDeviceGetGpuInstanceProfileInfo(h, index)
        except n.NVMLError as e:
            assert e.value == n.NVML_ERROR_NOT_SUPPORTED, e
            continue
        v1 = n.nvmlDeviceGetGpuInstanceProfileInfo(h, index, version=1)
        assert (v1.id, v1.memorySizeMB, v1.multiprocessorCount) == (p.id, p.memorySizeMB, p.multiprocessorCount)
        count = n.c_uint()
        n.nvmlDeviceGetGpuInstancePossiblePlacements(h, p.id, None, n.byref(count))
        places = (n.c_nvmlGpuInstancePlacement_t * count.value)()
        n.nvmlDeviceGetGpuInstancePossiblePlacements(h, p.id, places, n.byref(count))
        out.append({"index": index, "id": p.id, "name": text(p.name), "count": p.instanceCount,
                    "memory": p.memorySizeMB, "sm": p.multiprocessorCount, "slices": p.sliceCount,
                    "ce": p.copyEngineCount, "dec": p.decoderCount, "jpeg": p.jpegCount, "ofa": p.ofaCount,
                    "placements": [[q.start, q.size] for q in places[:count.value]]})
    return out

def instances(h):
    out = []
    for index in range(n.NVML_GPU_INSTANCE_PROFILE_COUNT):
        try:
            p = n.nvmlDeviceGetGpuInstanceProfileInfo(h, index)
        except n.NVMLError:
            continue
        arr = (n.c_nvmlGpuInstance_t * p.instanceCount)()
        count = n.c_uint()
        n.nvmlDeviceGetGpuInstances(h, p.id, arr, n.byref(count))
        for gi in arr[:count.value]:
            info = n.nvmlGpuInstanceGetInfo(gi)
            out.append([info.id, info.profileId, info.placement.start, info.placement.size])
    return sorted(out)

def create(h, profile_id, start=None):
    if start is None:
        gi = n.nvmlDeviceCreateGpuInstance(h, profile_id)
    else:
        place = n.c_nvmlGpuInstancePlacement_t()
        place.start, place.size = start[0], start[1]
        gi = n.nvmlDeviceCreateGpuInstanceWithPlacement(h, profile_id, n.byref(place))
    return gi

def ci_info(ci):
    i = n.nvmlComputeInstanceGetInfo(ci)
    return [i.id, i.profileId, i.placement.start, i.placement.size]

def gi_info(gi):
    i = n.nvmlGpuInstanceGetInfo(gi)
    return [i.id, i.profileId, i.placement.start, i.placement.size]

def ci_profile(gi, index):
    p = n.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, index, 0)
    v1 = n.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, index, 0, version=1)
    assert (v1.id, v1.sliceCount, v1.instanceCount) == (p.id, p.sliceCount, p.instanceCount)
    return [p.id, p.sliceCount, p.instanceCount, p.multiprocessorCount, text(p.name)]

def profile_by_id(h, profile_id):
    p = n.nvmlDeviceGetGpuInstanceProfileInfoById(h, profile_id)
    return [p.id, text(p.name), p.sliceCount]

def ci_create_at(gi, profile, start, size):
    place = n.c_nvmlComputeInstancePlacement_t()
    place.start, place.size = start, size
    return ci_info(n.nvmlGpuInstanceCreateComputeInstanceWithPlacement(gi, profile, n.byref(place)))

def ci_placements(gi, profile):
    count = n.c_uint()
    n.nvmlGpuInstanceGetComputeInstancePossiblePlacements(gi, profile, None, n.byref(count))
    places = (n.c_nvmlComputeInstancePlacement_t * count.value)()
    n.nvmlGpuInstanceGetComputeInstancePossiblePlacements(gi, profile, places, n.byref(count))
    return [[q.start, q.size] for q in places[:count.value]]

def mig_device(h, index):
    m = n.nvmlDeviceGetMigDeviceHandleByIndex(h, index)
    parent = n.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m)
    return {"uuid": n.nvmlDeviceGetUUID(m), "name": n.nvmlDeviceGetName(m),
            "is_mig": n.nvmlDeviceIsMigDeviceHandle(m).value, "gi": n.nvmlDeviceGetGpuInstanceId(m),
            "ci": n.nvmlDeviceGetComputeInstanceId(m), "total": n.nvmlDeviceGetMemoryInfo(m).total,
            "parent": n.nvmlDeviceGetUUID(parent),
            "by_uuid": n.nvmlDeviceGetComputeInstanceId(n.nvmlDeviceGetHandleByUUID(n.nvmlDeviceGetUUID(m)))}

fns = dict(vars(n), profiles=profiles, instances=instances, create=create, ci_info=ci_info, gi_info=gi_info,
           ci_profile=ci_profile, mig_device=mig_device, profile_by_id=profile_by_id, ci_create_at=ci_create_at,
           ci_placements=ci_placements)
results = []
for op in ops:
    name = op[0][1:] if op[0].startswith("=") else None
    if name:
        op = op[1:]
    args = [saved[a[1:]] if isinstance(a, str) and a.startswith("$") else a for a in op[1:]]
    try:
        value = fns[op[0]](*args)
    except n.NVMLError as e:
        results.append({"err": e.value})
        continue
    if name:
        saved[name] = value
        value = None
    if isinstance(value, list) and value and not isinstance(value[0], (int, str, list, dict)):
        value = None
    results.append({"ok": value if isinstance(value, (int, str, list, dict, type(None))) else None})
print(json.dumps(results))
"""


def run(hami: Hami, ops: list[list[Any]], **env: str) -> list[dict[str, Any]]:
    """Runs ops in a fresh pynvml client against the fake NVML; one result per op."""
    settings = {"FAKE_GPU_NAMES": A100_40GB, "FAKE_GPU_MEMORY_MIB": "40960", "FAKE_GPU_UUIDS": PARENT} | env
    out = hami.python(CLIENT.replace("OPS", json.dumps(ops)), preload=False, timeout=120, **settings)
    results: list[dict[str, Any]] = json.loads(out)
    return results


def ok(results: list[dict[str, Any]]) -> list[Any]:
    assert all("ok" in r for r in results), results
    return [r["ok"] for r in results]


ENABLE = [["nvmlDeviceSetMigMode", "$gpu", 1]]
NOT_SUPPORTED, INVALID_ARGUMENT, NOT_FOUND = 3, 2, 6
IN_USE, INSUFFICIENT_RESOURCES, RESET_REQUIRED = 19, 23, 16

# `nvidia-smi mig -lgip` of an A100-SXM4-40GB in the HAMi v2.5 MIG article (shared/seeds/004_*): name, profile ID,
# instances, GiB, SMs; plus 1g.10gb (ID 15) from the NVIDIA MIG user guide.
SEED_A100_40GB = [
    ("1g.5gb", 19, 7, 4.75, 14),
    ("1g.5gb+me", 20, 1, 4.75, 14),
    ("2g.10gb", 14, 3, 9.75, 28),
    ("3g.20gb", 9, 2, 19.62, 42),
    ("4g.20gb", 5, 1, 19.62, 56),
    ("7g.40gb", 0, 1, 39.50, 98),
]
# `nvidia-smi mig -lgipp` of the A100: placements in memory slices.
A100_PLACEMENTS = {
    19: [[s, 1] for s in range(7)],
    20: [[s, 1] for s in range(7)],
    15: [[s, 2] for s in (0, 2, 4, 6)],
    14: [[s, 2] for s in (0, 2, 4)],
    9: [[0, 4], [4, 4]],
    5: [[0, 4]],
    0: [[0, 8]],
}


def test_a100_40gb_profiles_are_the_seeds_nvidia_smi_table(hami: Hami) -> None:
    [_, profiles] = ok(run(hami, [*ENABLE, ["profiles", "$gpu"]]))
    by_name = {p["name"]: p for p in profiles}
    for name, pid, count, gib, sm in SEED_A100_40GB:
        p = by_name[f"MIG {name}"]
        assert (p["id"], p["count"], p["sm"]) == (pid, count, sm)
        assert f"{p['memory'] / 1024:.2f}" == f"{gib:.2f}"  # nvidia-smi prints memorySizeMB / 1024
    assert by_name["MIG 1g.10gb"]["id"] == 15
    assert by_name["MIG 1g.10gb"]["count"] == 4
    assert {p["id"]: p["placements"] for p in profiles} == A100_PLACEMENTS
    # the enumeration index is not the profile ID (the real driver's inconvenient habit)
    assert {p["index"]: p["id"] for p in profiles} == {0: 19, 1: 14, 2: 9, 3: 5, 4: 0, 7: 20, 9: 15}


@pytest.mark.parametrize(
    ("gpu", "names", "ids"),
    [
        ("NVIDIA A30", ["1g.6gb", "1g.6gb+me", "2g.12gb", "2g.12gb+me", "4g.24gb"], [14, 21, 5, 6, 0]),
        (
            "NVIDIA A100-SXM4-80GB",
            ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
            None,
        ),
        (
            "NVIDIA A100 80GB PCIe",
            ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
            None,
        ),
        (
            "NVIDIA H100 80GB HBM3",
            ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
            None,
        ),
        ("NVIDIA H100 PCIe", ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"], None),
        ("NVIDIA H100 NVL", ["1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb"], None),
        (
            "NVIDIA GH200 96GB HBM3",
            ["1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.48gb", "4g.48gb", "7g.96gb"],
            None,
        ),
        ("NVIDIA H200", ["1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"], None),
    ],
)
def test_each_mig_model_has_its_profiles_and_placements(
    hami: Hami, gpu: str, names: list[str], ids: list[int] | None
) -> None:
    ops: list[list[Any]] = [*ENABLE, ["profiles", "$gpu"], ["nvmlDeviceGetMaxMigDeviceCount", "$gpu"]]
    [_, profiles, max_devices] = ok(run(hami, ops, FAKE_GPU_NAMES=gpu))
    assert sorted(p["name"] for p in profiles) == sorted(f"MIG {name}" for name in names)
    by_name = {p["name"].removeprefix("MIG "): p for p in profiles}
    if ids is not None:  # A30: its own profile IDs and four memory slices
        assert [by_name[name]["id"] for name in names] == ids
        assert by_name["1g.6gb"]["placements"] == [[s, 1] for s in range(4)]
        assert by_name["2g.12gb"]["placements"] == [[0, 2], [2, 2]]
        assert by_name["4g.24gb"]["placements"] == [[0, 4]]
        assert max_devices == 4
    else:  # 7 compute / 8 memory slices, the A100 numbering and placements
        assert {p["id"]: p["placements"] for p in profiles} == A100_PLACEMENTS
        assert max_devices == 7
    # memory grows with the slices; the whole-card profile has the most SMs
    assert by_name[names[0]]["memory"] < by_name[names[2]]["memory"] < by_name[names[-1]]["memory"]
    assert max(p["sm"] for p in profiles) == by_name[names[-1]]["sm"]
    # a GB figure in the name matches the memory within rounding (the name rounds up)
    for name, p in by_name.items():
        gb = int(name.split(".")[1].removesuffix("+me").removesuffix("gb"))
        assert gb - 1.6 <= p["memory"] / 1024 <= gb, (name, p["memory"])


def test_gpus_without_mig_answer_not_supported(hami: Hami) -> None:
    results = run(
        hami,
        [
            ["nvmlDeviceGetMigMode", "$gpu"],
            ["nvmlDeviceSetMigMode", "$gpu", 1],
            ["nvmlDeviceGetGpuInstanceProfileInfo", "$gpu", 0],
            ["nvmlDeviceCreateGpuInstance", "$gpu", 19],
            ["nvmlDeviceGetMaxMigDeviceCount", "$gpu"],
        ],
        FAKE_GPU_NAMES="Tesla T4",
    )
    assert results == [{"err": NOT_SUPPORTED}] * 4 + [{"ok": 0}]


def test_mig_mode_is_off_at_power_on_and_applies_at_once_on_an_idle_gpu(hami: Hami) -> None:
    results = run(
        hami,
        [
            ["nvmlDeviceGetMigMode", "$gpu"],
            ["nvmlDeviceCreateGpuInstance", "$gpu", 19],
            ["nvmlDeviceGetGpuInstanceRemainingCapacity", "$gpu", 19],
            ["nvmlDeviceSetMigMode", "$gpu", 1],
            ["nvmlDeviceGetMigMode", "$gpu"],
            ["nvmlDeviceGetGpuInstanceRemainingCapacity", "$gpu", 19],
        ],
    )
    assert results == [
        {"ok": [0, 0]},
        {"err": NOT_SUPPORTED},
        {"err": NOT_SUPPORTED},
        {"ok": 0},
        {"ok": [1, 1]},
        {"ok": 7},
    ]
    # FAKE_GPU_MIG_MODE: enabled at power-on (per GPU)
    assert ok(
        run(
            hami,
            [["nvmlDeviceGetMigMode", "$gpu"], ["nvmlDeviceGetMigMode", "$gpu1"]],
            FAKE_GPU_COUNT="2",
            FAKE_GPU_MIG_MODE="1,0",
            FAKE_GPU_STATE_FILE=str(hami.tmp / "other.state"),
            FAKE_GPU_UUIDS=f"{PARENT},GPU-22345678-9abc-4def-8123-456789abcdef",
        )
    ) == [[1, 1], [0, 0]]


def test_mig_mode_change_is_refused_in_use_while_a_process_holds_the_gpu(hami: Hami) -> None:
    holder = hami.spawn("init", "ctx", "0", "hold", FAKE_GPU_NAMES=A100_40GB, FAKE_GPU_UUIDS=PARENT)
    try:
        assert holder.stdout is not None
        while "hold" not in holder.stdout.readline():
            pass
        assert run(
            hami,
            [
                ["nvmlDeviceSetMigMode", "$gpu", 1],
                ["nvmlDeviceGetMigMode", "$gpu"],
                ["nvmlDeviceCreateGpuInstance", "$gpu", 19],
            ],
        ) == [{"ok": IN_USE}, {"ok": [0, 1]}, {"err": NOT_SUPPORTED}]
    finally:
        hami.stop(holder)
    # once the process is gone the same request takes effect
    assert ok(
        run(
            hami,
            [["nvmlDeviceGetMigMode", "$gpu"], ["nvmlDeviceSetMigMode", "$gpu", 1], ["nvmlDeviceGetMigMode", "$gpu"]],
        )
    ) == [[0, 1], 0, [1, 1]]


def test_a_gpu_that_needs_a_reset_keeps_the_mode_pending_until_reset(hami: Hami) -> None:
    events = hami.tmp / "events"
    events.write_text("")
    env = {"FAKE_NVML_MIG_NEEDS_RESET": "1", "FAKE_NVML_EVENTS_FILE": str(events)}
    assert run(hami, [["nvmlDeviceSetMigMode", "$gpu", 1], ["nvmlDeviceGetMigMode", "$gpu"]], **env) == [
        {"ok": RESET_REQUIRED},
        {"ok": [0, 1]},
    ]
    events.write_text(f"reset {PARENT}\n")
    assert ok(run(hami, [["nvmlDeviceGetMigMode", "$gpu"], ["create", "$gpu", 9]], **env)) == [[1, 1], None]
    # the old reset line is not applied again by later processes: disabling waits for a new reset
    assert ok(run(hami, [["nvmlDeviceGetMigMode", "$gpu"], ["instances", "$gpu"]], **env)) == [[1, 1], [[1, 9, 0, 4]]]
    # a GPU instance keeps the GPU in use: the mode cannot change
    assert ok(run(hami, [["nvmlDeviceSetMigMode", "$gpu", 0], ["nvmlDeviceGetMigMode", "$gpu"]], **env)) == [
        IN_USE,
        [1, 0],
    ]


def test_gpu_instances_follow_the_placement_rules_and_error_codes(hami: Hami) -> None:
    results = run(
        hami,
        [
            *ENABLE,
            ["create", "$gpu", 14, [1, 2]],  # 2g.10gb starts on even slices only
            ["create", "$gpu", 14, [0, 1]],  # wrong size for the profile
            ["create", "$gpu", 42],  # no such profile ID
            ["=g3", "create", "$gpu", 9, [4, 4]],  # 3g.20gb on slices 4-7
            ["create", "$gpu", 19, [5, 1]],  # overlaps it
            ["create", "$gpu", 9, [4, 4]],  # so does a second one there
            ["nvmlDeviceGetGpuInstanceRemainingCapacity", "$gpu", 9],
            ["nvmlDeviceGetGpuInstanceRemainingCapacity", "$gpu", 14],
            ["nvmlDeviceGetGpuInstanceRemainingCapacity", "$gpu", 19],
            ["nvmlDeviceGetGpuInstanceRemainingCapacity", "$gpu", 0],
            ["create", "$gpu", 0],  # 7g.40gb cannot fit any more
            ["=g2", "create", "$gpu", 14],  # lowest free legal placement: slices 0-1
            ["gi_info", "$g2"],
            ["gi_info", "$g3"],
            ["instances", "$gpu"],
            ["nvmlDeviceGetGpuInstanceById", "$gpu", 5],
            ["=c", "nvmlGpuInstanceCreateComputeInstance", "$g3", 2],  # 3c on the 3g
            ["nvmlGpuInstanceCreateComputeInstance", "$g3", 0],  # no compute slice left
            ["ci_info", "$c"],
            ["nvmlGpuInstanceDestroy", "$g3"],  # a compute instance is left
            ["nvmlComputeInstanceDestroy", "$c"],
            ["ci_info", "$c"],  # a destroyed handle
            ["nvmlGpuInstanceDestroy", "$g3"],
            ["gi_info", "$g3"],
            ["nvmlGpuInstanceDestroy", "$g3"],
            ["instances", "$gpu"],
        ],
    )
    assert results == [
        {"ok": 0},
        {"err": INVALID_ARGUMENT},
        {"err": INVALID_ARGUMENT},
        {"err": INVALID_ARGUMENT},
        {"ok": None},
        {"err": INSUFFICIENT_RESOURCES},
        {"err": INSUFFICIENT_RESOURCES},
        {"ok": 1},
        {"ok": 2},
        {"ok": 4},
        {"ok": 0},
        {"err": INSUFFICIENT_RESOURCES},
        {"ok": None},
        {"ok": [3, 14, 0, 2]},
        {"ok": [2, 9, 4, 4]},
        {"ok": [[2, 9, 4, 4], [3, 14, 0, 2]]},
        {"err": NOT_FOUND},
        {"ok": None},
        {"err": INSUFFICIENT_RESOURCES},
        {"ok": [0, 2, 0, 3]},
        {"err": IN_USE},
        {"ok": 0},
        {"err": INVALID_ARGUMENT},
        {"ok": 0},
        {"err": INVALID_ARGUMENT},
        {"err": INVALID_ARGUMENT},
        {"ok": [[3, 14, 0, 2]]},
    ]


def test_the_seeds_geometry_fills_the_card_and_counts_are_enforced(hami: Hami) -> None:
    # HAMi's default A100-40GB geometry "2g.10gb x3 + 1g.5gb x1" (seed 004) fills all 7 compute slices
    ops: list[list[Any]] = [
        *ENABLE,
        *[["create", "$gpu", 14] for _ in range(3)],
        ["create", "$gpu", 19],
        ["create", "$gpu", 19],
        ["instances", "$gpu"],
    ]
    results = run(hami, ops)
    assert results[-2] == {"err": INSUFFICIENT_RESOURCES}
    # GPU-instance IDs follow the placement, as the driver's do: quarters 3..6, eighths 7..14
    assert results[-1]["ok"] == [[3, 14, 0, 2], [4, 14, 2, 2], [5, 14, 4, 2], [13, 19, 6, 1]]
    # instance counts: one 1g.5gb+me at most, seven 1g.5gb
    results = run(
        hami,
        [["create", "$gpu", 20, [0, 1]], ["create", "$gpu", 20, [1, 1]]],
        FAKE_GPU_MIG_MODE="1",
        FAKE_GPU_STATE_FILE=str(hami.tmp / "b.state"),
    )
    assert results == [{"ok": None}, {"err": INSUFFICIENT_RESOURCES}]


def test_compute_instance_profiles_depend_on_the_gpu_instance(hami: Hami) -> None:
    results = run(
        hami,
        [
            *ENABLE,
            ["=g", "create", "$gpu", 0],
            ["=s", "create", "$gpu", 19, [0, 1]],
            ["ci_profile", "$g", 0],
            ["ci_profile", "$g", 2],
            ["ci_profile", "$g", 4],
            ["ci_profile", "$g", 3],
            ["nvmlGpuInstanceGetComputeInstanceRemainingCapacity", "$g", 1],
            ["nvmlGpuInstanceGetComputeInstanceProfileInfo", "$g", 99, 0],
        ],
    )
    assert results[2] == {"err": INSUFFICIENT_RESOURCES}  # 7g.40gb takes every slice
    assert [r.get("ok", r.get("err")) for r in results[3:]] == [
        [0, 1, 7, 14, "MIG 1c.7g.40gb"],
        [2, 3, 2, 42, "MIG 3c.7g.40gb"],
        [4, 7, 1, 98, "MIG 7g.40gb"],
        NOT_SUPPORTED,
        3,
        INVALID_ARGUMENT,
    ]


def test_compute_instances_with_placements(hami: Hami) -> None:
    results = run(
        hami,
        [
            *ENABLE,
            ["profile_by_id", "$gpu", 14],
            ["profile_by_id", "$gpu", 42],
            ["=g", "create", "$gpu", 5],
            ["ci_placements", "$g", 0],
            ["ci_placements", "$g", 1],
            ["ci_create_at", "$g", 1, 1, 2],  # 2c starts on even compute slices only
            ["ci_create_at", "$g", 1, 2, 1],  # wrong size
            ["ci_create_at", "$g", 1, 2, 2],
            ["ci_create_at", "$g", 0, 3, 1],  # overlaps the 2c
            ["ci_create_at", "$g", 0, 1, 1],
            ["nvmlGpuInstanceGetComputeInstanceRemainingCapacity", "$g", 0],
            ["nvmlGpuInstanceGetComputeInstanceRemainingCapacity", "$g", 3],
            ["nvmlGpuInstanceCreateComputeInstance", "$g", 3],  # 4c: compute slices taken
            ["nvmlDeviceGetMaxMigDeviceCount", "$gpu"],
            ["mig_device", "$gpu", 1],
        ],
    )
    assert [r.get("ok", r.get("err")) for r in results[1:3]] == [[14, "MIG 2g.10gb", 2], INVALID_ARGUMENT]
    assert [r.get("ok", r.get("err")) for r in results[4:14]] == [
        [[0, 1], [1, 1], [2, 1], [3, 1]],
        [[0, 2], [2, 2]],
        INVALID_ARGUMENT,
        INVALID_ARGUMENT,
        [0, 1, 2, 2],
        INSUFFICIENT_RESOURCES,
        [1, 0, 1, 1],
        1,
        0,
        INSUFFICIENT_RESOURCES,
    ]
    device = results[15]["ok"]
    # a compute instance smaller than its GPU instance is a MIG device of its own, named after both
    assert (device["gi"], device["ci"], device["name"]) == (1, 1, f"{A100_40GB} MIG 1c.4g.20gb")
    assert device["uuid"] == "MIG-12345678-0101-4def-8123-456789abcdef"
    assert device["total"] == 20096 * MIB


def test_mig_devices_have_predictable_uuids_and_their_instances_memory(hami: Hami) -> None:
    results = ok(
        run(
            hami,
            [
                *ENABLE,
                ["=g1", "create", "$gpu", 9],
                ["=g2", "create", "$gpu", 19],
                ["nvmlGpuInstanceCreateComputeInstance", "$g1", 2],
                ["nvmlGpuInstanceCreateComputeInstance", "$g2", 0],
                ["nvmlDeviceGetMaxMigDeviceCount", "$gpu"],
                ["mig_device", "$gpu", 0],
                ["mig_device", "$gpu", 1],
                ["nvmlDeviceIsMigDeviceHandle", "$gpu"],
            ],
        )
    )
    max_count, first, second, whole = results[5:]
    assert max_count == 7
    assert first == {
        "uuid": "MIG-12345678-0100-4def-8123-456789abcdef",
        "name": f"{A100_40GB} MIG 3g.20gb",
        "is_mig": 1,
        "gi": 1,
        "ci": 0,
        "total": 20096 * MIB,
        "parent": PARENT,
        "by_uuid": 0,
    }
    # the 1g.5gb takes the lowest free slice, 4: the driver's ID of that placement is 7 + 4
    assert second["uuid"] == "MIG-12345678-0b00-4def-8123-456789abcdef"
    assert (second["gi"], second["total"], second["name"]) == (11, 4864 * MIB, f"{A100_40GB} MIG 1g.5gb")
    assert whole is None or whole == 0
    assert run(
        hami,
        [
            ["nvmlDeviceGetMigDeviceHandleByIndex", "$gpu", 2],
            ["nvmlDeviceGetMigDeviceHandleByIndex", "$gpu", 7],
            ["nvmlDeviceGetGpuInstanceId", "$gpu"],
            ["nvmlDeviceGetHandleByUUID", "MIG-12345678-0300-4def-8123-456789abcdef"],
        ],
    ) == [{"err": NOT_FOUND}, {"err": INVALID_ARGUMENT}, {"err": NOT_SUPPORTED}, {"err": NOT_FOUND}]


def test_instances_are_shared_by_processes_and_outlive_them(hami: Hami) -> None:
    # one process creates (like the device plugin at Allocate) and exits (like a restart)
    ok(run(hami, [*ENABLE, ["=g", "create", "$gpu", 14], ["nvmlGpuInstanceCreateComputeInstance", "$g", 1]]))
    # two more processes, concurrently alive, see it
    client = CLIENT.replace("OPS", "[]")
    env = hami.environ(False, FAKE_GPU_NAMES=A100_40GB, FAKE_GPU_MEMORY_MIB="40960", FAKE_GPU_UUIDS=PARENT)
    ops = json.dumps([["instances", "$gpu"], ["mig_device", "$gpu", 0]])
    procs = [
        subprocess.Popen([sys.executable, "-c", client, ops], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert outs[0] == outs[1]
    assert outs[0][0] == {"ok": [[3, 14, 0, 2]]}
    assert outs[0][1]["ok"]["uuid"] == "MIG-12345678-0300-4def-8123-456789abcdef"
    # another destroys it; the next sees the card empty
    results = run(
        hami,
        [
            ["=g", "nvmlDeviceGetGpuInstanceById", "$gpu", 3],
            ["=c", "nvmlGpuInstanceGetComputeInstanceById", "$g", 0],
            ["nvmlComputeInstanceDestroy", "$c"],
            ["nvmlGpuInstanceDestroy", "$g"],
        ],
    )
    assert ok(results) == [None, None, 0, 0]
    assert ok(run(hami, [["instances", "$gpu"], ["nvmlDeviceGetGpuInstanceRemainingCapacity", "$gpu", 19]])) == [[], 7]


def test_concurrent_creators_never_share_a_placement(hami: Hami) -> None:
    ok(run(hami, ENABLE))
    client = CLIENT.replace("OPS", "[]")
    env = hami.environ(False, FAKE_GPU_NAMES=A100_40GB, FAKE_GPU_MEMORY_MIB="40960", FAKE_GPU_UUIDS=PARENT)
    ops = json.dumps([["create", "$gpu", 19] for _ in range(3)])
    procs = [
        subprocess.Popen([sys.executable, "-c", client, ops], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    created = sum("ok" in r for out in outs for r in out)
    refused = [r for out in outs for r in out if "err" in r]
    assert created == 7
    assert refused == [{"err": INSUFFICIENT_RESOURCES}] * 2
    [instances] = ok(run(hami, [["instances", "$gpu"]]))
    assert sorted(i[2] for i in instances) == list(range(7))


def test_pynvml_structures_match_the_versions_the_fake_checks() -> None:
    """The fake accepts a versioned structure only when its version word is nvml.h's (size | version << 24), so the
    v2 calls passing above mean pynvml's ctypes layouts have nvml.h's sizes; the unversioned ones are checked here."""
    import ctypes

    import pynvml as n  # type: ignore[import-untyped]

    assert ctypes.sizeof(n.c_nvmlGpuInstanceProfileInfo_v2_t) | 2 << 24 == n.nvmlGpuInstanceProfileInfo_v2
    assert ctypes.sizeof(n.c_nvmlComputeInstanceProfileInfo_v2_t) | 2 << 24 == n.nvmlComputeInstanceProfileInfo_v2
    # nvml.h: 10 unsigned ints + an unsigned long long; 9 unsigned ints; pointer + 2 uints + placement (2 uints)
    assert ctypes.sizeof(n.c_nvmlGpuInstanceProfileInfo_t) == 48
    assert ctypes.sizeof(n.c_nvmlComputeInstanceProfileInfo_t) == 36
    assert ctypes.sizeof(n.c_nvmlGpuInstanceInfo_t) == ctypes.sizeof(ctypes.c_void_p) + 16
    assert ctypes.sizeof(n.c_nvmlComputeInstanceInfo_t) == 2 * ctypes.sizeof(ctypes.c_void_p) + 16
    assert ctypes.sizeof(n.c_nvmlGpuInstancePlacement_t) == ctypes.sizeof(n.c_nvmlComputeInstancePlacement_t) == 8

"""Device memory a CUDA context costs: the driver double's contexts cost FAKE_GPU_CONTEXT_MIB of the GPU (like a
real driver's, visible to NVML per process and to cuMemGetInfo), and libvgpu charges what it measured to the
container's budget, per process, until the context goes or the process ends."""

from __future__ import annotations

import json

from conftest import MIB, Hami, by_cmd

OUT_OF_MEMORY = 2
CONTEXT_MIB = 300


def test_the_primary_context_is_charged_what_it_costs_on_the_card(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "budget",
        "0",
        "info",
        "alloc",
        "512m",
        "alloc",
        "256m",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        FAKE_GPU_CONTEXT_MIB=str(CONTEXT_MIB),
    )
    assert by_cmd(lines, "ctx")[0]["rc"] == 0
    first, last = by_cmd(lines, "budget")
    assert (first["used_total"], first["used_self"]) == (CONTEXT_MIB * MIB, CONTEXT_MIB * MIB)
    assert by_cmd(lines, "info")[0] == {"cmd": "info", "rc": 0, "free": (1024 - CONTEXT_MIB) * MIB, "total": 1024 * MIB}
    assert [a["rc"] for a in by_cmd(lines, "alloc")] == [0, OUT_OF_MEMORY]  # 300 + 512 + 256 > 1024
    assert last["used_total"] == (CONTEXT_MIB + 512) * MIB


def test_a_context_that_does_not_fit_the_budget_is_refused_and_nothing_stays_charged(hami: Hami) -> None:
    lines = hami.probe(
        "init", "ctx", "0", "budget", "0", CUDA_DEVICE_MEMORY_LIMIT="200m", FAKE_GPU_CONTEXT_MIB=str(CONTEXT_MIB)
    )
    assert by_cmd(lines, "ctx")[0]["rc"] == OUT_OF_MEMORY
    assert by_cmd(lines, "budget")[0]["used_total"] == 0


def test_the_charge_goes_with_the_last_release_and_with_the_process(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "ctx",
        "0",
        "ctx-release",
        "0",
        "budget",
        "0",
        "ctx-release",
        "0",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        FAKE_GPU_CONTEXT_MIB=str(CONTEXT_MIB),
    )
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [CONTEXT_MIB * MIB, 0]
    hami.probe("init", "ctx", "0", CUDA_DEVICE_MEMORY_LIMIT="1g", FAKE_GPU_CONTEXT_MIB=str(CONTEXT_MIB))
    after_exit = by_cmd(hami.probe("budget", "0", CUDA_DEVICE_MEMORY_LIMIT="1g"), "budget")[0]
    assert after_exit["used_total"] == 0


def test_a_killed_process_s_context_charge_is_reclaimed(hami: Hami) -> None:
    holder = hami.spawn(
        "init", "ctx", "0", "hold", CUDA_DEVICE_MEMORY_LIMIT="1g", FAKE_GPU_CONTEXT_MIB=str(CONTEXT_MIB)
    )
    try:
        assert holder.stdout is not None
        assert json.loads(holder.stdout.readline())["cmd"] == "init"
        assert json.loads(holder.stdout.readline())["rc"] == 0
        json.loads(holder.stdout.readline())  # hold
        other = hami.probe(
            "init",
            "ctx",
            "0",
            "budget",
            "0",
            "alloc",
            "500m",
            CUDA_DEVICE_MEMORY_LIMIT="1g",
            FAKE_GPU_CONTEXT_MIB=str(CONTEXT_MIB),
        )
        assert by_cmd(other, "budget")[0]["used_total"] == 2 * CONTEXT_MIB * MIB
        assert by_cmd(other, "alloc")[0]["rc"] == OUT_OF_MEMORY  # 300 + 300 + 500 > 1024
    finally:
        holder.kill()
        holder.communicate()
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "alloc",
        "500m",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        FAKE_GPU_CONTEXT_MIB=str(CONTEXT_MIB),
    )
    assert by_cmd(lines, "alloc")[0]["rc"] == 0
    assert by_cmd(lines, "budget")[0]["used_total"] == (CONTEXT_MIB + 500) * MIB


def test_created_contexts_are_charged_until_destroyed(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx-create",
        "0",
        "budget",
        "0",
        "ctx-create",
        "0",
        "budget",
        "0",
        "ctx-destroy",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        FAKE_GPU_CONTEXT_MIB="200",
    )
    assert [r["rc"] for r in by_cmd(lines, "ctx-create")] == [0, 0]
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [200 * MIB, 400 * MIB, 200 * MIB]


def test_contexts_created_by_cuctxcreate_v3_are_charged_until_destroyed(hami: Hami) -> None:
    """cuCtxCreate_v3 (execution affinity, CUDA 11.4 to 12.4's cuCtxCreate) costs a context like _v2/_v4."""
    lines = hami.probe(
        "init",
        "ctx-create3",
        "0",
        "budget",
        "0",
        "info",
        "ctx-destroy",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        FAKE_GPU_CONTEXT_MIB="200",
    )
    assert by_cmd(lines, "ctx-create3")[0]["rc"] == 0
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [200 * MIB, 0]
    assert by_cmd(lines, "info")[0]["free"] == (1024 - 200) * MIB


def test_a_cuctxcreate_v3_context_that_does_not_fit_is_refused(hami: Hami) -> None:
    lines = hami.probe(
        "init", "ctx-create3", "0", "budget", "0", "info", CUDA_DEVICE_MEMORY_LIMIT="100m", FAKE_GPU_CONTEXT_MIB="200"
    )
    assert by_cmd(lines, "ctx-create3")[0]["rc"] == OUT_OF_MEMORY
    assert by_cmd(lines, "budget")[0]["used_total"] == 0


def test_a_primary_context_reset_returns_its_charge_and_the_next_retain_is_charged_again(hami: Hami) -> None:
    """cuDevicePrimaryCtxReset (cudaDeviceReset) destroys the primary context whatever its retain count: the
    charge goes as at the last release, and a later retain creates (and costs) the context again, once."""
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "ctx",
        "0",
        "budget",
        "0",
        "ctx-reset",
        "0",
        "budget",
        "0",
        "info",
        "ctx",
        "0",
        "budget",
        "0",
        "ctx-release",
        "0",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        FAKE_GPU_CONTEXT_MIB=str(CONTEXT_MIB),
    )
    assert by_cmd(lines, "ctx-reset")[0]["rc"] == 0
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [CONTEXT_MIB * MIB, 0, CONTEXT_MIB * MIB, 0]
    assert by_cmd(lines, "info")[0]["free"] == 1024 * MIB


def test_nvml_inside_the_container_shows_the_context_in_the_slice(hami: Hami) -> None:
    code = """
import json, pynvml as n
from cuda.bindings import driver as d
assert d.cuInit(0)[0] == 0
err, ctx = d.cuDevicePrimaryCtxRetain(d.cuDeviceGet(0)[1])
assert err == 0
n.nvmlInit()
m = n.nvmlDeviceGetMemoryInfo(n.nvmlDeviceGetHandleByIndex(0))
print(json.dumps({"used": m.used, "free": m.free, "total": m.total}))
"""
    out = json.loads(hami.python(code, CUDA_DEVICE_MEMORY_LIMIT="1g", FAKE_GPU_CONTEXT_MIB=str(CONTEXT_MIB)))
    assert out == {"used": CONTEXT_MIB * MIB, "free": (1024 - CONTEXT_MIB) * MIB, "total": 1024 * MIB}


def test_cuda_bindings_resolving_by_cugetprocaddress_are_held_to_the_slice_with_the_context_in_it(hami: Hami) -> None:
    """NVIDIA's driver bindings resolve every entry point through cuGetProcAddress, which the driver double answers
    with internal addresses: the context (40 MiB) and 16 MiB allocations share the 100 MiB slice."""
    from test_clients import CUDA_BINDINGS

    out = json.loads(hami.python(CUDA_BINDINGS, CUDA_DEVICE_MEMORY_LIMIT="100m", FAKE_GPU_CONTEXT_MIB="40"))
    assert out["info0"] == [60 * MIB, 100 * MIB]
    assert out["count"] == 3  # 40 + 3 x 16 = 88 MiB; a fourth would make 104
    assert out["last"] == OUT_OF_MEMORY
    assert out["info1"] == [12 * MIB, 100 * MIB]
    assert out["info2"] == [60 * MIB, 100 * MIB]


def test_a_fork_child_does_not_inherit_the_parents_context_charge(hami: Hami) -> None:
    """The child of a process holding a charged context keeps using the parent's mapping (the fake, like a lenient
    driver, lets it allocate) but the context stays charged to the parent, once."""
    lines = hami.probe(
        "init", "ctx", "0", "fork", "10m", CUDA_DEVICE_MEMORY_LIMIT="1g", FAKE_GPU_CONTEXT_MIB=str(CONTEXT_MIB)
    )
    child = by_cmd(lines, "fork-child")[0]
    assert child["rc"] == 0
    assert (child["used_total"], child["used_self"]) == ((CONTEXT_MIB + 10) * MIB, 10 * MIB)

"""Real clients under the interposer: NVIDIA's own driver-API bindings (cuda-bindings), and the budget
API of libvgpu.so called through cffi, as the Vulkan layer calls it."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import BUILD, MIB, Hami

CUDA_BINDINGS = """
import json
from cuda.bindings import driver as d

def ok(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    assert err == d.CUresult.CUDA_SUCCESS, err
    return rest[0] if len(rest) == 1 else rest

ok(d.cuInit(0))
dev = ok(d.cuDeviceGet(0))
ctx = ok(d.cuDevicePrimaryCtxRetain(dev))
ok(d.cuCtxSetCurrent(ctx))
total_mem = ok(d.cuDeviceTotalMem(dev))
free0, total0 = ok(d.cuMemGetInfo())
ptrs, codes = [], []
while len(ptrs) < 100:
    err, p = d.cuMemAlloc(16 << 20)
    codes.append(int(err))
    if err != d.CUresult.CUDA_SUCCESS:
        break
    ptrs.append(p)
free1, total1 = ok(d.cuMemGetInfo())
err, stream = d.cuStreamCreate(0)
err_async, p_async = d.cuMemAllocAsync(16 << 20, stream)
for p in ptrs:
    ok(d.cuMemFree(p))
err_async2, p_async = d.cuMemAllocAsync(16 << 20, stream)
ok(d.cuMemFreeAsync(p_async, stream))
ok(d.cuStreamSynchronize(stream))  # the stream's pool keeps freed memory until a synchronisation
free2, total2 = ok(d.cuMemGetInfo())
import ctypes
counter = ctypes.CDLL("libcuda.so.1").fakecuda_counter
counter.restype = ctypes.c_ulonglong
calls = {name: counter(name.encode()) for name in ("cuMemAllocAsync", "cuMemAllocAsync_ptsz")}
print(json.dumps({"calls": calls, "total_mem": total_mem, "info0": [free0, total0], "count": len(ptrs),
                  "last": codes[-1], "info1": [free1, total1], "info2": [free2, total2], "async_full": int(err_async),
                  "async_after_free": int(err_async2)}))
"""


def test_cuda_bindings_client_is_held_to_the_cap(hami: Hami) -> None:
    out = json.loads(hami.python(CUDA_BINDINGS, CUDA_DEVICE_MEMORY_LIMIT="100m"))
    assert out["total_mem"] == 100 * MIB
    assert out["info0"] == [100 * MIB, 100 * MIB]
    assert out["count"] == 6  # 6 x 16m fit in 100m, the 7th is refused
    assert out["last"] == 2  # CUDA_ERROR_OUT_OF_MEMORY
    assert out["info1"] == [4 * MIB, 100 * MIB]
    assert out["async_full"] == 2
    assert out["async_after_free"] == 0
    assert out["info2"] == [100 * MIB, 100 * MIB]
    assert out["calls"] == {"cuMemAllocAsync": 1, "cuMemAllocAsync_ptsz": 0}  # refused one never reached it


def test_cuda_bindings_client_with_per_thread_default_stream(hami: Hami) -> None:
    out = json.loads(
        hami.python(CUDA_BINDINGS, CUDA_DEVICE_MEMORY_LIMIT="100m", CUDA_PYTHON_CUDA_PER_THREAD_DEFAULT_STREAM="1")
    )
    assert out["count"] == 6
    assert out["async_full"] == 2
    assert out["info2"] == [100 * MIB, 100 * MIB]


BUDGET_API = """
import json, cffi
ffi = cffi.FFI()
ffi.cdef('''
int hami_budget_device_by_uuid(const unsigned char uuid[16]);
int hami_budget_reserve(int dev, unsigned long long bytes);
void hami_budget_release(int dev, unsigned long long bytes);
int hami_budget_query(int dev, unsigned long long *limit, unsigned long long *used_total,
                      unsigned long long *used_self);
int hami_budget_device_count(void);
''')
lib = ffi.dlopen(LIB)
def query(dev):
    v = ffi.new("unsigned long long[3]")
    rc = lib.hami_budget_query(dev, v, v + 1, v + 2)
    return [rc, v[0], v[1], v[2]]
uuid1 = bytes.fromhex("fa4e0000000040008000000000000001")
out = {
    "by_uuid": lib.hami_budget_device_by_uuid(uuid1),
    "unknown_uuid": lib.hami_budget_device_by_uuid(bytes(16)),
    "null_uuid": lib.hami_budget_device_by_uuid(ffi.NULL),
    "count": lib.hami_budget_device_count(),
    "reserve": [lib.hami_budget_reserve(1, 60 << 20), lib.hami_budget_reserve(1, 60 << 20),
                lib.hami_budget_reserve(1, 40 << 20)],
    "bad_dev": [lib.hami_budget_reserve(-1, 1), lib.hami_budget_reserve(99, 1), query(99)[0]],
    "query": query(1),
    "null_query": lib.hami_budget_query(1, ffi.NULL, ffi.NULL, ffi.NULL),
}
lib.hami_budget_release(1, 60 << 20)
lib.hami_budget_release(1, 1 << 40)  # more than held: clamps at zero
out["after_release"] = query(1)
print(json.dumps(out))
"""


def test_budget_api_through_cffi(hami: Hami) -> None:
    code = f"LIB = {str(hami.lib)!r}\n" + BUDGET_API
    out = json.loads(hami.python(code, FAKE_GPU_COUNT="2", CUDA_DEVICE_MEMORY_LIMIT_1="100m"))
    assert out["by_uuid"] == 1
    assert out["unknown_uuid"] == -1
    assert out["null_uuid"] == -1
    assert out["count"] == 2
    assert out["reserve"] == [0, 1, 0]
    assert out["bad_dev"] == [-1, -1, -1]
    assert out["query"] == [0, 100 * MIB, 100 * MIB, 100 * MIB]
    assert out["null_query"] == 0
    assert out["after_release"] == [0, 100 * MIB, 0, 0]
    assert "Device 1 OOM" in hami.last_stderr


def test_budget_api_without_a_budget_says_so(hami: Hami) -> None:
    code = f"LIB = {str(hami.lib)!r}\n" + BUDGET_API
    env = hami.environ()
    del env["CUDA_DEVICE_MEMORY_SHARED_CACHE"]
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["reserve"] == [-1, -1, -1]
    assert out["count"] == -1
    assert out["query"][0] == -1


def test_inspection_tool_prints_limits_processes_and_devices(hami: Hami) -> None:
    holder = hami.spawn(
        "init",
        "ctx",
        "0",
        "alloc",
        "30m",
        "hold",
        FAKE_GPU_COUNT="2",
        CUDA_DEVICE_MEMORY_LIMIT_0="100m",
        CUDA_DEVICE_MEMORY_LIMIT_1="200m",
    )
    try:
        assert holder.stdout is not None
        for _ in range(4):
            holder.stdout.readline()
        region = hami.inspect()
        devices = region["devices"]
        assert region["device_count"] == 2
        assert [devices[0]["limit"], devices[1]["limit"]] == [100 * MIB, 200 * MIB]
        assert devices[0]["used"] == 30 * MIB
        assert devices[0]["uuid"] == "GPU-fa4e0000-0000-4000-8000-000000000000"
        procs = region["processes"]
        assert [(p["pid"], p["alive"], p["used"][0]) for p in procs] == [(holder.pid, True, 30 * MIB)]
        text = subprocess.run(
            [str(BUILD / "hami-region-inspect"), str(hami.region)], capture_output=True, text=True, check=True
        ).stdout
        assert str(holder.pid) in text
        assert str(100 * MIB) in text
    finally:
        hami.stop(holder)


def test_inspection_tool_reclaims_dead_processes_on_request(hami: Hami) -> None:
    victim = hami.spawn("init", "ctx", "0", "alloc", "40m", "hold", CUDA_DEVICE_MEMORY_LIMIT="100m")
    try:
        assert victim.stdout is not None
        for _ in range(4):
            victim.stdout.readline()
        victim.kill()
        victim.wait(timeout=60)
        before = hami.inspect()
        assert before["devices"][0]["used"] == 40 * MIB
        assert [p["alive"] for p in before["processes"]] == [False]
        after = hami.inspect("--reclaim")
        assert after["devices"][0]["used"] == 0
        assert after["processes"] == []
        assert after["reclaim_count"] == 1
    finally:
        hami.stop(victim)

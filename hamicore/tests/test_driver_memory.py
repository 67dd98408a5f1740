"""Device memory that no allocation call shows, charged to the container: loaded modules and libraries (measured
like a context's), CUDA arrays and mipmapped arrays (reserved by estimate, settled on the driver's size).

The driver double's model (tests/README.md): a module or library costs FAKE_MODULE_KIB; an array level's rows
are padded to FAKE_GPU_PITCH_ALIGNMENT and the level rounded up to 64 KiB, so the driver's size is never the
estimate libvgpu reserves first (rows rounded to 512 bytes)."""

from __future__ import annotations

import json

import pytest
from conftest import MIB, Hami, by_cmd

OUT_OF_MEMORY = 2
FILE_NOT_FOUND = 301
FLOAT4 = 16  # bytes of the probe's array element
ALIGN = 2048  # the double's default pitch alignment


def driver_level(width: int, height: int, depth: int = 1) -> int:
    row = -(-width * FLOAT4 // ALIGN) * ALIGN
    return -(-row * height * depth // 65536) * 65536


def estimate_level(width: int, height: int, depth: int = 1) -> int:
    return -(-width * FLOAT4 // 512) * 512 * height * depth


@pytest.mark.parametrize(("load", "unload"), [("module", "unload"), ("library", "libunload")])
def test_modules_and_libraries_are_charged_while_loaded(hami: Hami, load: str, unload: str) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        load,
        "budget",
        "0",
        load,
        "budget",
        "0",
        unload,
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        FAKE_MODULE_KIB="4096",
    )
    assert [r["rc"] for r in by_cmd(lines, load)] == [0, 0]
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [4 * MIB, 8 * MIB, 4 * MIB]


@pytest.mark.parametrize(("load", "unload"), [("module-file", "unload"), ("library-file", "libunload")])
def test_modules_and_libraries_loaded_from_a_file_are_charged_while_loaded(hami: Hami, load: str, unload: str) -> None:
    """cuModuleLoad and cuLibraryLoadFromFile (a cubin, PTX or fatbin on disk) cost what cuModuleLoadData does."""
    image = hami.tmp / "kernels.cubin"
    image.write_bytes(b"fake-cubin")
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        load,
        str(image),
        "budget",
        "0",
        "info",
        unload,
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        FAKE_MODULE_KIB="4096",
    )
    assert by_cmd(lines, load)[0]["rc"] == 0
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [4 * MIB, 0]
    assert by_cmd(lines, "info")[0]["free"] == 1020 * MIB


@pytest.mark.parametrize("load", ["module-file", "library-file"])
def test_a_missing_file_is_the_drivers_error_and_charges_nothing(hami: Hami, load: str) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        load,
        str(hami.tmp / "missing.cubin"),
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        FAKE_MODULE_KIB="4096",
    )
    assert by_cmd(lines, load)[0]["rc"] == FILE_NOT_FOUND
    assert by_cmd(lines, "budget")[0]["used_total"] == 0


def test_fat_binaries_are_charged_while_loaded(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "fatbin",
        "budget",
        "0",
        "unload",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        FAKE_MODULE_KIB="4096",
    )
    assert by_cmd(lines, "fatbin")[0]["rc"] == 0
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [4 * MIB, 0]


@pytest.mark.parametrize("load", ["module-file", "library-file", "fatbin"])
def test_a_module_from_a_file_or_fat_binary_that_does_not_fit_is_unloaded_and_refused(hami: Hami, load: str) -> None:
    image = hami.tmp / "kernels.cubin"
    image.write_bytes(b"fake-cubin")
    args = [load] if load == "fatbin" else [load, str(image)]
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "alloc",
        "8m",
        *args,
        "budget",
        "0",
        "info",
        CUDA_DEVICE_MEMORY_LIMIT="10m",
        FAKE_MODULE_KIB="4096",
    )
    assert by_cmd(lines, load)[0]["rc"] == OUT_OF_MEMORY
    assert by_cmd(lines, "budget")[0]["used_total"] == 8 * MIB
    assert by_cmd(lines, "info")[0]["free"] == 2 * MIB  # the driver got its memory back too


def test_a_module_that_does_not_fit_is_unloaded_and_refused(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "alloc",
        "8m",
        "module",
        "budget",
        "0",
        "info",
        CUDA_DEVICE_MEMORY_LIMIT="10m",
        FAKE_MODULE_KIB="4096",
    )
    assert by_cmd(lines, "module")[0]["rc"] == OUT_OF_MEMORY
    assert by_cmd(lines, "budget")[0]["used_total"] == 8 * MIB
    assert by_cmd(lines, "info")[0]["free"] == 2 * MIB  # the driver got its memory back too


def test_arrays_are_charged_what_the_driver_says_they_occupy(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "array",
        "1100",
        "100",
        "budget",
        "0",
        "array-destroy",
        "budget",
        "0",
        "array3d",
        "300",
        "20",
        "7",
        "budget",
        "0",
        "array-destroy",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
    )
    assert [r["rc"] for r in lines if r["cmd"].startswith("array")] == [0, 0, 0, 0]
    assert driver_level(1100, 100) != estimate_level(1100, 100)  # the settle step has work to do
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [
        driver_level(1100, 100),
        0,
        driver_level(300, 20, 7),
        0,
    ]


def test_mipmapped_arrays_are_charged_every_level(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "mipmap",
        "1024",
        "512",
        "4",
        "budget",
        "0",
        "mipmap-destroy",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
    )
    expected = sum(driver_level(1024 >> level, 512 >> level) for level in range(4))
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [expected, 0]


def test_an_array_is_refused_at_the_cap_before_or_after_the_driver_sized_it(hami: Hami) -> None:
    estimate, real = estimate_level(1100, 100), driver_level(1100, 100)
    before = hami.probe(
        "init", "ctx", "0", "array", "1100", "100", "budget", "0", CUDA_DEVICE_MEMORY_LIMIT=str(estimate - 1)
    )
    after = hami.probe(
        "init",
        "ctx",
        "0",
        "array",
        "1100",
        "100",
        "budget",
        "0",
        "info",
        CUDA_DEVICE_MEMORY_LIMIT=str((estimate + real) // 2),
    )
    for lines in (before, after):
        assert by_cmd(lines, "array")[0]["rc"] == OUT_OF_MEMORY
        assert by_cmd(lines, "budget")[0]["used_total"] == 0
    assert by_cmd(after, "info")[0]["free"] == (estimate + real) // 2  # destroyed again: the driver holds nothing


def test_the_in_container_view_includes_modules_and_arrays(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "module",
        "array",
        "1100",
        "100",
        "info",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
        FAKE_MODULE_KIB="2048",
        FAKE_GPU_CONTEXT_MIB="20",
    )
    info = by_cmd(lines, "info")[0]
    assert info["total"] == 100 * MIB
    assert info["free"] == 100 * MIB - 20 * MIB - 2 * MIB - driver_level(1100, 100)


CUDA_BINDINGS_ARRAYS = """
import json
from cuda.bindings import driver as d

def ok(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    assert err == d.CUresult.CUDA_SUCCESS, err
    return rest[0] if len(rest) == 1 else rest

ok(d.cuInit(0))
dev = ok(d.cuDeviceGet(0))
ok(d.cuCtxSetCurrent(ok(d.cuDevicePrimaryCtxRetain(dev))))
desc = d.CUDA_ARRAY_DESCRIPTOR()
desc.Width, desc.Height, desc.NumChannels = 1100, 100, 4
desc.Format = d.CUarray_format.CU_AD_FORMAT_FLOAT
array = ok(d.cuArrayCreate(desc))
free1, total = ok(d.cuMemGetInfo())
ok(d.cuArrayDestroy(array))
free2, _ = ok(d.cuMemGetInfo())
print(json.dumps({"free": [free1, free2], "total": total}))
"""


CUDA_BINDINGS_FILES = """
import json, os
from cuda.bindings import driver as d
def ok(result):
    assert result[0] == 0, result
    return result[1:] if len(result) > 2 else (result[1] if len(result) == 2 else None)
ok(d.cuInit(0))
dev = ok(d.cuDeviceGet(0))
ctx = ok(d.cuDevicePrimaryCtxRetain(dev))
ok(d.cuCtxSetCurrent(ctx))
free0, total = ok(d.cuMemGetInfo())
module = ok(d.cuModuleLoad(os.environ["TEST_IMAGE"].encode()))
library = ok(d.cuLibraryLoadFromFile(os.environ["TEST_IMAGE"].encode(), None, None, 0, None, None, 0))
free1, _ = ok(d.cuMemGetInfo())
ok(d.cuModuleUnload(module))
ok(d.cuLibraryUnload(library))
ok(d.cuDevicePrimaryCtxReset(dev))
ctx = ok(d.cuDevicePrimaryCtxRetain(dev))
ok(d.cuCtxSetCurrent(ctx))
free2, _ = ok(d.cuMemGetInfo())
print(json.dumps({"free": [free0, free1, free2], "total": total}))
"""


def test_file_loads_and_resets_of_cuda_bindings_resolving_by_cugetprocaddress_are_charged(hami: Hami) -> None:
    """NVIDIA's bindings get cuModuleLoad, cuLibraryLoadFromFile and cuDevicePrimaryCtxReset_v2 from
    cuGetProcAddress (internal addresses of the driver double): the name rules lead them to the hooks. The context
    (40 MiB) is in the slice, the module and the library (4 MiB each) while loaded, the context once after a reset
    and a new retain."""
    image = hami.tmp / "kernels.cubin"
    image.write_bytes(b"fake-cubin")
    out = json.loads(
        hami.python(
            CUDA_BINDINGS_FILES,
            TEST_IMAGE=str(image),
            CUDA_DEVICE_MEMORY_LIMIT="100m",
            FAKE_GPU_CONTEXT_MIB="40",
            FAKE_MODULE_KIB="4096",
        )
    )
    assert out == {"free": [60 * MIB, 52 * MIB, 60 * MIB], "total": 100 * MIB}


def test_arrays_of_cuda_bindings_resolving_by_cugetprocaddress_are_charged(hami: Hami) -> None:
    """NVIDIA's bindings get cuArrayCreate_v2 from cuGetProcAddress (an internal address of the driver double):
    the name rules lead it to the hook, and the slice shows the array while it exists."""
    out = json.loads(hami.python(CUDA_BINDINGS_ARRAYS, CUDA_DEVICE_MEMORY_LIMIT="100m"))
    assert out == {"free": [100 * MIB - driver_level(1100, 100), 100 * MIB], "total": 100 * MIB}

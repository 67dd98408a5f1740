"""hamicore's CUDA test client (``cuda_probe`` under the real libvgpu.so, over hamicore's fake driver: test
doubles of the GPU) as the process of a "container" whose accounting file the monitor reads."""

from __future__ import annotations

import os
from pathlib import Path

FAKE_NVML_DIR = Path(
    os.environ.get("HAMI_FAKE_NVML_DIR", Path(__file__).resolve().parents[4] / "hamicore" / "build" / "fake")
)
BUILD = FAKE_NVML_DIR.parent
PROBE = BUILD / "tests" / "cuda_probe"


def client_env(region: Path, state: Path, **extra: str) -> dict[str, str]:
    """Environment of a client whose region is ``region``, on the fake GPUs whose shared state is ``state``."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LD_LIBRARY_PATH": str(FAKE_NVML_DIR),
        "LD_PRELOAD": str(BUILD / "libvgpu.so"),
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(region),
        "CUDA_DEVICE_MEMORY_LIMIT_0": "1000m",
        "FAKE_GPU_STATE_FILE": str(state),
        # Free contexts and modules in the driver double: these tests count the budget of allocations alone.
        "FAKE_GPU_CONTEXT_MIB": "0",
        "FAKE_MODULE_KIB": "0",
        **extra,
    }

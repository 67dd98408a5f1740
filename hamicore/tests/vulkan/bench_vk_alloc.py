"""Benchmark driver: vkAllocateMemory / vkFreeMemory cost without the layer, with it charging, with it passing.

Runs hvk_bench_alloc (built with the layer) several times per configuration, alternating configurations so
load on a shared machine hits them alike, and prints a Markdown table: the median over runs of the mean
cost per call, and the fastest batch of 64 calls seen in any run (what a loaded machine disturbs least).
Usage: bench_vk_alloc.py <build dir> [rounds] [iterations]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LAVAPIPE_ICD = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json"


def lavapipe_uuid(build: Path, env: dict[str, str]) -> str:
    probe = Path(__file__).with_name("vk_probe.py")
    out = subprocess.run([sys.executable, str(probe)], env=env, capture_output=True, text=True, check=True)
    raw = json.loads(out.stdout)["uuid"]
    return f"GPU-{raw[0:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:32]}"


def main() -> None:
    build = Path(sys.argv[1]).resolve()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    iterations = sys.argv[3] if len(sys.argv) > 3 else "20000"
    binary = build / "tests" / "hvk_bench_alloc"
    with tempfile.TemporaryDirectory() as scratch:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HAMI_", "CUDA_", "NVIDIA_", "VK_", "XDG_", "FAKE_", "LD_"))
        }
        base.update(
            VK_ICD_FILENAMES=LAVAPIPE_ICD,
            VK_DRIVER_FILES=LAVAPIPE_ICD,
            XDG_DATA_HOME=str(build),
            XDG_RUNTIME_DIR=scratch,
            NODEVICE_SELECT="1",
            CUDA_DEVICE_MEMORY_SHARED_CACHE=os.path.join(scratch, "vgpu.cache"),
        )
        gpu = lavapipe_uuid(build, base)
        # The fake NVML (TEST DOUBLE) tells the accounting core which GPUs the container has.
        fake = {"LD_LIBRARY_PATH": str(build / "fake"), "FAKE_GPU_COUNT": "1"}
        configurations = {
            "no layer": {},
            "layer, GPU charged (limit 64 GiB)": {
                "HAMI_VULKAN_ENABLE": "1",
                "CUDA_DEVICE_MEMORY_LIMIT": "64g",
                **fake,
                "FAKE_GPU_UUIDS": gpu,
            },
            "layer, GPU not the container's": {
                "HAMI_VULKAN_ENABLE": "1",
                "CUDA_DEVICE_MEMORY_LIMIT": "64g",
                **fake,
                "FAKE_GPU_UUIDS": "GPU-00000000-1111-2222-3333-444444444444",
            },
        }
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in configurations}
        for _ in range(rounds):
            for name, settings in configurations.items():
                env = {**base, **settings}
                out = subprocess.run([str(binary), iterations], env=env, capture_output=True, text=True, check=True)
                result = json.loads(out.stdout)
                if result["layer"] != name.startswith("layer"):
                    raise SystemExit(f"bench: layer presence is {result['layer']} for {name!r}")
                samples[name].append(result)
    print(f"vkAllocateMemory / vkFreeMemory of 4 KiB on lavapipe, median of {rounds} runs x {iterations} calls")
    print()
    print("| configuration | vkAllocateMemory ns/call | best batch | vkFreeMemory ns/call | best batch |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in samples.items():
        alloc = statistics.median(r["alloc_ns"] for r in runs)
        free = statistics.median(r["free_ns"] for r in runs)
        alloc_best = min(r["alloc_best_ns"] for r in runs)
        free_best = min(r["free_best_ns"] for r in runs)
        print(f"| {name} | {alloc:.0f} | {alloc_best:.0f} | {free:.0f} | {free_best:.0f} |")


if __name__ == "__main__":
    main()

"""`make bench-hamicore`: the interposer's added cost over the fake driver (a test double) alone.

For cuLaunchKernel, cuMemAlloc+cuMemFree and cuMemGetInfo: instructions per call (valgrind callgrind,
counting only the benchmark loop) and nanoseconds per call, with and without LD_PRELOAD=libvgpu.so;
the allocation benchmark runs with 64 processes attached to the same region. cuLaunchKernel is measured
twice with the interposer: without an SM limit (the gate is not installed) and with a 50 % limit in force
(tokens always available: the limiter's launch-path cost, not its waiting). Then the attach time
(cuInit + first allocation) of 64 processes of a new container started at once, with the container's region
published beforehand by the device plugin's own code (as at Allocate) or created by the starters. Prints
Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

# (row label, bench mode, extra environment of the interposed run)
CASES: list[tuple[str, str, dict[str, str]]] = [
    ("cuLaunchKernel", "launch", {}),
    (
        "cuLaunchKernel, SM limit 50 % in force",
        "launch",
        {"CUDA_DEVICE_SM_LIMIT": "50", "GPU_CORE_UTILIZATION_POLICY": "force"},
    ),
    ("cuMemAlloc+cuMemFree", "alloc", {}),
    ("cuMemGetInfo", "meminfo", {}),
]


def environment(build: Path, tmp: Path, preload: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "FAKE_", "LD_PRELOAD"))}
    env["LD_LIBRARY_PATH"] = str(build / "fake")
    env["FAKE_GPU_MEMORY_MIB"] = "81920"
    env["FAKE_KERNEL_NS_PER_THREAD"] = "0"  # launches cost no virtual device time: measure the CPU path
    if preload:
        env["LD_PRELOAD"] = str(build / "libvgpu.so")
        env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = str(tmp / "region.cache")
        env["CUDA_DEVICE_MEMORY_LIMIT"] = "40g"
    return env


def ns_per_call(build: Path, env: dict[str, str], mode: str, n: int, repeats: int = 7) -> float:
    samples = []
    for _ in range(repeats):
        out = subprocess.run(
            [str(build / "tests" / "hami-bench"), mode, str(n)], env=env, capture_output=True, text=True, check=True
        )
        samples.append(float(out.stdout))
    return statistics.median(samples)


def instructions(build: Path, env: dict[str, str], mode: str, tmp: Path) -> float:
    """Instructions per call inside bench_loop_<mode>, one-time costs cancelled by two run lengths."""

    def total(n: int) -> int:
        out_file = tmp / f"callgrind.{mode}.{n}.{env.get('LD_PRELOAD') is not None}"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--toggle-collect=bench_loop_{mode}",
                f"--callgrind-out-file={out_file}",
                str(build / "tests" / "hami-bench"),
                mode,
                str(n),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        text = out_file.read_text()
        match = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
        assert match, f"no instruction total in {out_file}"
        return int(match.group(1))

    def calls(n: int) -> int:
        return n + n // 10 + 1  # the measured loop plus its warm-up

    n1, n2 = 2000, 12000
    return (total(n2) - total(n1)) / (calls(n2) - calls(n1))


def attach_times(build: Path, env: dict[str, str], count: int) -> tuple[list[float], list[float]]:
    """Start `count` processes, release them together, return their (wall, CPU) attach times in us.

    The starters block reading one pipe; closing its write end wakes them all at once. (Polling for a
    file instead kept 64 processes waking every 200 us, a load of its own on the CPUs they then share.)"""
    read_end, write_end = os.pipe()
    try:
        procs = [
            subprocess.Popen(
                [str(build / "tests" / "hami-bench"), "attach", "-"],
                env=env,
                stdin=read_end,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
    finally:
        os.close(read_end)
    time.sleep(1.0)  # all started and blocked in read()
    os.close(write_end)
    wall, cpu = [], []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        w, c = out.split()
        wall.append(float(w))
        cpu.append(float(c))
    return wall, cpu


ATTACH_ROUNDS = 5
GPU0_UUID = "GPU-fa4e0000-0000-4000-8000-000000000000"  # the fake driver's first GPU


def shm_dir() -> Path | None:
    """A tmpfs directory for region files (where the DaemonSet keeps them: /run on the host)."""
    for candidate in (Path("/dev/shm"), Path("/run")):
        if candidate.is_dir() and os.access(candidate, os.W_OK):
            return candidate
    return None


def attach_rows(
    build: Path, direct: dict[str, str], hooked: dict[str, str], tmp: Path
) -> dict[str, tuple[list[float], list[float]]]:
    """Attach times of 64 starters of a new container: the region published beforehand by the device plugin at
    Allocate (its own code builds it), or created by the starters themselves (libvgpu without our device plugin),
    with the regions on tmpfs and, for comparison, on disk."""
    from hami_device_plugin.adapters.files import publish_region
    from hami_device_plugin.core.region import RegionDevice, RegionSpec, build_region

    # What the device plugin injects for a container with one GPU: limit index 0, no SM limit.
    env = {k: v for k, v in hooked.items() if k != "CUDA_DEVICE_MEMORY_LIMIT"}
    env.update(CUDA_DEVICE_MEMORY_LIMIT_0="40960m", CUDA_DEVICE_SM_LIMIT="0", CUDA_DEVICE_SM_LIMIT_0="0")
    spec = RegionSpec(devices=(RegionDevice(GPU0_UUID, 40960 << 20, 0),))
    rows: dict[str, tuple[list[float], list[float]]] = {}

    def measure(label: str, env: dict[str, str]) -> None:
        wall, cpu = attach_times(build, env, 64)
        rows.setdefault(label, ([], []))[0].extend(wall)
        rows[label][1].extend(cpu)

    with tempfile.TemporaryDirectory(dir=shm_dir()) as shm_name:
        places = (("", Path(shm_name)), (", regions on disk", tmp))
        for round_ in range(ATTACH_ROUNDS):
            measure("driver only", direct)
            for where, directory in places:
                published = directory / f"published{round_}.cache"
                publish_region(published, build_region(spec, time.time_ns()))
                measure(
                    f"libvgpu, region published at Allocate by the device plugin{where}",
                    dict(env, CUDA_DEVICE_MEMORY_SHARED_CACHE=str(published)),
                )
            for where, directory in places:
                measure(
                    f"libvgpu, region created by the starters (no device plugin){where}",
                    dict(env, CUDA_DEVICE_MEMORY_SHARED_CACHE=str(directory / f"own{round_}.cache")),
                )
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores ({cpu}), {mem_kib / (1 << 20):.0f} GiB, {system}, no GPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build", type=Path, required=True)
    args = parser.parse_args()
    build: Path = args.build.resolve()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        direct = environment(build, tmp, preload=False)
        hooked = environment(build, tmp, preload=True)
        # 63 other processes attached to the same region (the benchmark is the 64th).
        holders = [
            subprocess.Popen(
                [str(build / "tests" / "cuda_probe"), "init", "ctx", "0", "alloc", "1m", "hold"],
                env=hooked,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for _ in range(63)
        ]
        try:
            for h in holders:
                assert h.stdout is not None
                for _ in range(4):
                    h.stdout.readline()
            rows = []
            for label, mode, extra in CASES:
                n = 200000 if mode != "alloc" else 100000
                # The limit is fixed when a region is created: a limited run gets a region of its own.
                env = (
                    dict(hooked, **extra, CUDA_DEVICE_MEMORY_SHARED_CACHE=str(tmp / "limited.cache"))
                    if extra
                    else hooked
                )
                ns_direct, ns_hooked = ns_per_call(build, direct, mode, n), ns_per_call(build, env, mode, n)
                ir_direct, ir_hooked = instructions(build, direct, mode, tmp), instructions(build, env, mode, tmp)
                rows.append((label, ir_direct, ir_hooked, ns_direct, ns_hooked))
        finally:
            for h in holders:
                h.kill()
                h.communicate()
        attach = attach_rows(build, direct, hooked, tmp)

    print(f"Machine: {machine()}; driver: the fake libcuda.so.1 (test double)\n")
    print(
        "| call | instructions, driver only | instructions, with libvgpu | added instructions "
        "| ns/call, driver only | ns/call, with libvgpu | added ns |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, ir_d, ir_h, ns_d, ns_h in rows:
        print(
            f"| {label} | {ir_d:.0f} | {ir_h:.0f} | {ir_h - ir_d:.0f} | {ns_d:.0f} | {ns_h:.0f} | {ns_h - ns_d:.0f} |"
        )
    print(
        f"\nAttach: cuInit + primary context + first cuMemAlloc in each of 64 processes released at the same"
        f" moment, {ATTACH_ROUNDS} rounds (a new container, so a new region, per round), microseconds. Regions on"
        f" tmpfs ({shm_dir() or 'none here: on disk'}) as the DaemonSet keeps them, unless the row says disk:\n"
    )
    print("| | wall p50 | wall p99 | wall max | CPU p50 | CPU p99 | CPU max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, (wall, cpu) in attach.items():
        print(
            f"| {label} | {percentile(wall, 0.5):.0f} | {percentile(wall, 0.99):.0f} | {max(wall):.0f} "
            f"| {percentile(cpu, 0.5):.0f} | {percentile(cpu, 0.99):.0f} | {max(cpu):.0f} |"
        )


if __name__ == "__main__":
    main()

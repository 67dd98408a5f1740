"""Benchmark of hami-lib-installer: fresh install, unchanged re-run, upgrade, and the CLI end to end.

Uses hamicore/build/libvgpu.so and libvgpu_vk.so when both exist, else two test libraries of
1 MiB built with the system C compiler. Prints a Markdown table (median and max of N runs)
for the component README. Run with `make bench-lib-installer`.
"""

from __future__ import annotations

import functools
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from hami_lib_installer.adapters.procfs import scan_usage
from hami_lib_installer.app.installer import install
from hami_lib_installer.app.settings import Settings
from hami_shared.logging import configure_logging

ROOT = pathlib.Path(__file__).resolve().parents[3]
RUNS = 15
LIB_C = "static const unsigned char payload[{pad}] __attribute__((used)) = {{ {n} }};\nint f(void) {{ return {n}; }}\n"


def make_sources(work: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, str]:
    build = ROOT / "hamicore" / "build"
    a, b = work / "src-a", work / "src-b"
    for d in (a, b):
        d.mkdir()
    if (build / "libvgpu.so").is_file() and (build / "libvgpu_vk.so").is_file():
        for d, tag in ((a, "a"), (b, "b")):
            for name in ("libvgpu.so", "libvgpu_vk.so"):
                shutil.copyfile(build / name, d / name)
            (d / "VERSION").write_text(f"bench-{tag}\n")
        # Same bytes in both sources: the upgrade still writes new versioned files and switches links.
        return a, b, "hamicore/build"
    for d, n in ((a, 1), (b, 2)):
        for name in ("libvgpu.so", "libvgpu_vk.so"):
            c = d / (name + ".c")
            c.write_text(LIB_C.format(pad=1 << 20, n=n))
            subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(d / name), str(c)], check=True)
            c.unlink()
        (d / "VERSION").write_text(f"bench-{n}\n")
    return a, b, "test libraries (2 x 1 MiB)"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def row(name: str, samples: list[float]) -> str:
    return f"| {name} | {statistics.median(samples) * 1000:.1f} | {max(samples) * 1000:.1f} |"


def main() -> int:
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="hami-li-bench-", dir="/var/tmp") as tmp:
        work = pathlib.Path(tmp)
        a, b, what = make_sources(work)
        sizes = sum((a / n).stat().st_size for n in ("libvgpu.so", "libvgpu_vk.so"))

        def cfg(src: pathlib.Path, dest: pathlib.Path) -> Settings:
            return Settings(source=src, dest=dest, gc_grace=0.0, process_scan="off", keep_last=0)

        fresh = [timed(functools.partial(install, cfg(a, work / f"fresh-{i}"))) for i in range(RUNS)]
        dest = work / "dest"
        install(cfg(a, dest))
        unchanged = [timed(lambda: install(cfg(a, dest))) for _ in range(RUNS)]
        upgrades: list[float] = []
        for i in range(RUNS):
            upgrades.append(timed(functools.partial(install, cfg(b if i % 2 == 0 else a, dest))))
        usage = scan_usage(pathlib.Path("/proc"), [1], ["libvgpu.so.x"])
        scan = [timed(lambda: scan_usage(pathlib.Path("/proc"), [1], ["libvgpu.so.x"])) for _ in range(RUNS)]
        cli: list[float] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("HAMI_LIB_INSTALLER")}
        for i in range(5):
            cmd = [
                sys.executable,
                "-m",
                "hami_lib_installer.app.cli",
                "--source",
                str(a),
                "--dest",
                str(work / f"cli-{i}"),
            ]
            cli.append(timed(functools.partial(subprocess.run, cmd, check=True, env=env, capture_output=True)))
        fs = subprocess.run(["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True).stdout.strip()
        print(f"Source: {what}, {sizes / 1048576:.2f} MiB of libraries; destination on {fs}; {RUNS} runs each.")
        machine = f"{os.cpu_count()} CPUs, {_mem_gib():.0f} GiB, {platform.machine()}"
        print(f"Machine: {machine}, Python {platform.python_version()}")
        print()
        print("| operation | median ms | max ms |")
        print("|---|---|---|")
        print(row("fresh install (6 files written, fsynced, verified)", fresh))
        print(row("re-run, nothing changed (hash compare only)", unchanged))
        print(row("upgrade/downgrade (stable names switched, old version collected)", upgrades))
        print(row(f"/proc maps + mountinfo scan ({usage.processes} processes; only when old versions exist)", scan))
        print(row("`hami-lib-installer` once mode, process start to exit", cli))
    return 0


def _mem_gib() -> float:
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1048576
    return 0.0


if __name__ == "__main__":
    sys.exit(main())

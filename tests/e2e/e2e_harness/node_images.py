"""The small container images real nodes run in the e2e suite, built with buildah (daemonless, vfs storage,
chroot isolation) into OCI archives that each node's containerd imports with ``ctr``. No registry is reachable
here, so every image a pod names must come from here (pods use ``imagePullPolicy: Never``).

* ``localhost/pause:hami-e2e``: the pod sandbox image (the kubelet's and containerd's ``sandbox_image``), a
  static C program FROM scratch that reaps zombies and exits on INT/TERM.
* ``localhost/hami-e2e-gpu-client:1``: a CUDA driver-API client for GPU pods, FROM scratch: hamicore's
  ``cuda_probe`` (hamicore/tests/programs/cuda_probe.c, linked against ``libcuda.so.1``), busybox (``sh``,
  ``grep``...), and the glibc files that it, ``libvgpu.so`` and the fake driver need, copied from the host (the
  driver itself is not in the image: the NVIDIA toolkit's test double mounts it, libvgpu.so comes from the
  device plugin's Allocate mounts).

Each build takes about a second; the archives are built once per test session.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PAUSE_IMAGE = "localhost/pause:hami-e2e"
GPU_CLIENT_IMAGE = "localhost/hami-e2e-gpu-client:1"
CUDA_PROBE_IN_IMAGE = "/usr/local/bin/cuda_probe"

PAUSE_C = r"""/* pause: PID 1 of a pod sandbox; reaps zombies, exits on INT/TERM */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void sigdown(int s) { (void)s; _exit(0); }
static void sigreap(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction a = {0}, r = {0};
  a.sa_handler = sigdown; sigaction(SIGINT, &a, NULL); sigaction(SIGTERM, &a, NULL);
  r.sa_handler = sigreap; r.sa_flags = SA_NOCLDSTOP; sigaction(SIGCHLD, &r, NULL);
  for (;;) pause();
  return 0;
}
"""


class ImageBuildError(RuntimeError):
    """An image could not be built; the message carries the failing command's output."""


@dataclass(frozen=True)
class NodeImages:
    """OCI archives to import into a node's containerd, and the names they carry."""

    archives: tuple[Path, ...]
    pause: str = PAUSE_IMAGE
    gpu_client: str = GPU_CLIENT_IMAGE


def _run(argv: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise ImageBuildError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


_LDD_LINE = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)")


def shared_libraries(binaries: list[Path], exclude_dirs: tuple[Path, ...] = ()) -> set[Path]:
    """Absolute paths (as the loader names them) of what ``binaries`` load, the dynamic loader included."""
    out: set[Path] = set()
    for binary in binaries:
        for line in _run(["ldd", str(binary)]).splitlines():
            match = _LDD_LINE.match(line)
            if match:
                path = Path(match.group(1))
                if not any(path.resolve().is_relative_to(d.resolve()) for d in exclude_dirs):
                    out.add(path)
    return out


def _copy_into_rootfs(rootfs: Path, path: Path) -> None:
    target = rootfs / path.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path.resolve(), target)


def build_node_images(work_dir: Path, hamicore_build: Path) -> NodeImages:
    """Build both images under ``work_dir`` (buildah storage, contexts, archives) and return the archives."""
    work_dir.mkdir(parents=True, exist_ok=True)
    buildah = [
        "buildah",
        f"--root={work_dir / 'storage'}",
        f"--runroot={work_dir / 'run'}",
        "--storage-driver=vfs",
    ]
    archives = []

    pause_dir = work_dir / "pause"
    pause_dir.mkdir(exist_ok=True)
    (pause_dir / "pause.c").write_text(PAUSE_C)
    _run(["gcc", "-static", "-O2", "-s", "-o", str(pause_dir / "pause"), str(pause_dir / "pause.c")])
    (pause_dir / "Containerfile").write_text(
        'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n'
    )
    archives.append(_build(buildah, pause_dir, PAUSE_IMAGE, work_dir / "pause.tar"))

    client_dir = work_dir / "gpu-client"
    rootfs = client_dir / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    probe = hamicore_build / "tests" / "cuda_probe"
    fake = hamicore_build / "fake"
    needed = [probe, hamicore_build / "libvgpu.so", fake / "libcuda.so.1", fake / "libnvidia-ml.so.1"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise ImageBuildError(f"missing {', '.join(missing)}: run `make hamicore`")
    # The driver and libvgpu.so are mounted at run time; only their dependencies go into the image.
    for library in shared_libraries(needed, exclude_dirs=(hamicore_build,)):
        _copy_into_rootfs(rootfs, library)
    (rootfs / "usr/local/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(probe, rootfs / CUDA_PROBE_IN_IMAGE.lstrip("/"))
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "cat", "grep", "env", "ls", "sleep", "echo"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    for directory in ("tmp", "etc", "proc", "sys", "dev"):
        (rootfs / directory).mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    (client_dir / "Containerfile").write_text(
        f'FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/bin:/bin\nENTRYPOINT ["{CUDA_PROBE_IN_IMAGE}"]\n'
    )
    archives.append(_build(buildah, client_dir, GPU_CLIENT_IMAGE, work_dir / "gpu-client.tar"))
    return NodeImages(tuple(archives))


def _build(buildah: list[str], context: Path, name: str, archive: Path) -> Path:
    _run([*buildah, "bud", "--isolation=chroot", "--layers=false", "-q", "-t", name, str(context)])
    archive.unlink(missing_ok=True)
    _run([*buildah, "push", "-q", name, f"oci-archive:{archive}:{name}"])
    return archive

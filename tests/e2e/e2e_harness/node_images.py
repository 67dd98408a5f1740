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

* ``localhost/hami-e2e-vulkan-client:1`` (:func:`build_vulkan_client_image`, only for the tests that ask for it):
  a Vulkan application for GPU pods, FROM scratch: hamicore's ``vk_alloc_probe``
  (hamicore/tests/vulkan/vk_alloc_probe.c) linked against the real loader ``libvulkan.so.1``, ``cuda_probe`` (for
  CUDA and Vulkan in one container), Mesa's lavapipe
  (``libvulkan_lvp.so``, a Vulkan driver on the CPU, with its ICD manifest as the only one in the image: it stands
  in for the NVIDIA Vulkan driver that the real toolkit would mount), busybox, and every library these, the layer
  ``libvgpu_vk.so``, ``libvgpu.so`` and the fake driver need (LLVM among them), copied from the host. The layer and
  its manifest are not in the image: the device plugin's Allocate mounts them for pods that opt into Vulkan.

Each small build takes about a second; the archives are built once per test session. The Vulkan client is
big (LLVM), so its archive is also kept across sessions in a cache directory, named by a digest of everything
that goes into it: a changed host library or probe makes a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PAUSE_IMAGE = "localhost/pause:hami-e2e"
GPU_CLIENT_IMAGE = "localhost/hami-e2e-gpu-client:1"
CUDA_PROBE_IN_IMAGE = "/usr/local/bin/cuda_probe"
VULKAN_CLIENT_IMAGE = "localhost/hami-e2e-vulkan-client:1"
VK_PROBE_IN_IMAGE = "/usr/local/bin/vk_alloc_probe"
LAVAPIPE_ICD = Path("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")
"""Debian's mesa-vulkan-drivers manifest of lavapipe; it names the driver by absolute path, kept in the image."""

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


@dataclass(frozen=True)
class VulkanClientImage:
    """The Vulkan client's OCI archive, the name it carries, and what its build cost."""

    archive: Path
    digest: str
    """sha256 of every file that goes into the image (path in the image and content) and of its Containerfile."""
    size_bytes: int
    build_s: float | None
    """Seconds the build took; None when the archive came from the cache."""
    name: str = VULKAN_CLIENT_IMAGE


def _vulkan_client_files(hamicore_build: Path) -> dict[Path, Path]:
    """What goes into the Vulkan client's rootfs: path in the image -> host file (symlinks resolved)."""
    probe = hamicore_build / "tests" / "vk_alloc_probe"
    cuda_probe = hamicore_build / "tests" / "cuda_probe"
    fake = hamicore_build / "fake"
    mounted = [
        hamicore_build / "libvgpu.so",
        hamicore_build / "libvgpu_vk.so",
        fake / "libcuda.so.1",
        fake / "libnvidia-ml.so.1",
    ]
    missing = [str(p) for p in (probe, cuda_probe, *mounted) if not p.is_file()]
    if missing:
        raise ImageBuildError(f"missing {', '.join(missing)}: run `make hamicore`")
    if not LAVAPIPE_ICD.is_file():
        raise ImageBuildError(f"{LAVAPIPE_ICD} is missing: install Debian's mesa-vulkan-drivers (`make deps`)")
    lavapipe = Path(json.loads(LAVAPIPE_ICD.read_text())["ICD"]["library_path"])
    if not lavapipe.is_absolute() or not lavapipe.is_file():
        raise ImageBuildError(f"{LAVAPIPE_ICD} names {lavapipe}, which is not an absolute path to a file")
    # The layer, libvgpu.so and the fake driver are mounted at run time; only their dependencies go in.
    files = {
        path: path.resolve() for path in shared_libraries([probe, cuda_probe, lavapipe, *mounted], (hamicore_build,))
    }
    files[lavapipe] = lavapipe.resolve()
    # The only ICD manifest in the image, so lavapipe is the only driver the loader finds (and no Mesa
    # device-select implicit layer either: the only implicit layer is the one Allocate mounts).
    files[LAVAPIPE_ICD] = LAVAPIPE_ICD.resolve()
    files[Path(VK_PROBE_IN_IMAGE)] = probe.resolve()
    # CUDA in the same container: Vulkan and CUDA draw on one budget.
    files[Path(CUDA_PROBE_IN_IMAGE)] = cuda_probe.resolve()
    files[Path("/bin/busybox")] = Path("/bin/busybox").resolve()
    return files


def _digest(files: dict[Path, Path], containerfile: str) -> str:
    digest = hashlib.sha256(containerfile.encode())
    for inside, host in sorted(files.items()):
        with host.open("rb") as content:
            digest.update(f"{inside}\0{hashlib.file_digest(content, 'sha256').hexdigest()}\0".encode())
    return digest.hexdigest()


def build_vulkan_client_image(work_dir: Path, hamicore_build: Path, cache_dir: Path) -> VulkanClientImage:
    """The Vulkan client's archive from ``cache_dir`` when one of the same content is there, else built (under
    ``work_dir``) and put there, replacing the older ones. Safe against a concurrent build: the archive appears
    under its final name only once complete."""
    containerfile = f'FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/bin:/bin\nENTRYPOINT ["{VK_PROBE_IN_IMAGE}"]\n'
    files = _vulkan_client_files(hamicore_build)
    digest = _digest(files, containerfile)
    archive = cache_dir / f"vulkan-client-{digest[:24]}.tar"
    if archive.is_file():
        return VulkanClientImage(archive, digest, archive.stat().st_size, None)

    started = time.monotonic()
    context = work_dir / "vulkan-client"
    shutil.rmtree(context, ignore_errors=True)
    rootfs = context / "rootfs"
    for inside, host in files.items():
        target = rootfs / inside.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host, target)
    for applet in ("sh", "cat", "grep", "env", "ls", "echo"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    for directory in ("tmp", "etc", "proc", "sys", "dev"):
        (rootfs / directory).mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    (context / "Containerfile").write_text(containerfile)
    # Storage of its own, removed after the push: vfs keeps a full copy of each layer (hundreds of MB here).
    storage = context / "storage"
    buildah = ["buildah", f"--root={storage}", f"--runroot={context / 'run'}", "--storage-driver=vfs"]
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, partial_name = tempfile.mkstemp(prefix=".vulkan-client-", suffix=".tar.partial", dir=cache_dir)
    os.close(fd)
    partial = Path(partial_name)
    partial.unlink()
    try:
        _run([*buildah, "bud", "--isolation=chroot", "--layers=false", "-q", "-t", VULKAN_CLIENT_IMAGE, str(context)])
        _run([*buildah, "push", "-q", VULKAN_CLIENT_IMAGE, f"oci-archive:{partial}:{VULKAN_CLIENT_IMAGE}"])
        os.replace(partial, archive)
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(context, ignore_errors=True)
    for old in cache_dir.glob("vulkan-client-*.tar"):
        if old != archive:
            old.unlink(missing_ok=True)
    return VulkanClientImage(archive, digest, archive.stat().st_size, time.monotonic() - started)

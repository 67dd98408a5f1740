"""A real node's filesystem: its directory under /tmp, the node paths it has its own copy of
(:data:`NODE_PATHS`, bound in a mount namespace of its own, :class:`MountNamespace`), a containerd root seeded
from a template, and the leftovers check (processes naming the directory, mounts under it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from e2e_harness.node_host import RealNodeError, run

KUBELET_ROOT = Path("/var/lib/kubelet")  # the kubelet's default root dir, as on a real node
FIXED_DEVICE_PLUGIN_DIR = KUBELET_ROOT / "device-plugins"  # k8s.io/kubelet deviceplugin/v1beta1
# Node paths each node has its own copy of (its mount namespace binds <base>/host/<path> there): the kubelet's
# root dir and the hostPaths of deploy/kustomize's DaemonSets. Their mount points exist in the run's namespace
# (tests/e2e/isolated.sh makes each a tmpfs there; keep the two lists equal). Other paths are the run's.
NODE_PATHS = (KUBELET_ROOT, Path("/usr/local/vgpu"), Path("/run/hami"))


def host_path(base: Path, node_path: str | Path) -> Path:
    """Where a path of the node whose directory is ``base`` is in the run's namespace: under ``<base>/host`` for
    :data:`NODE_PATHS`, the path itself otherwise."""
    path = Path(node_path)
    if not path.is_absolute():
        raise ValueError(f"node path {node_path!r} is not absolute")
    for prefix in NODE_PATHS:
        if path == prefix or prefix in path.parents:
            return base / "host" / path.relative_to("/")
    return path


def make_node_directories(base: Path) -> None:
    """The node's own directories, and its copy of each node path (which must exist as a mount point)."""
    for directory in ("containerd/root", "containerd/state", "cni/net.d", "cni/ipam", "toolkit", "pod-logs"):
        (base / directory).mkdir(parents=True, exist_ok=True)
    for node_path in NODE_PATHS:
        if not node_path.is_dir():
            raise RealNodeError(f"{node_path} is missing: run inside tests/e2e/isolated.sh, which makes it")
        host_path(base, node_path).mkdir(parents=True, exist_ok=True)
    host_path(base, FIXED_DEVICE_PLUGIN_DIR).mkdir(exist_ok=True)


def seed_containerd_root(template: Path, root: Path) -> None:
    """Fill a containerd root that no containerd runs on yet from ``template``, the root of a stopped containerd
    that imported images: hard links for the content blobs and the unpacked snapshots, which containerd never
    changes in place (a committed snapshot is only ever an overlay lower layer: a container's writes are copied up
    into its own upper directory; removal unlinks), and real copies of the bolt databases, which it rewrites.
    Falls back to copying everything where hard links cannot be made (another filesystem)."""
    root.mkdir(parents=True, exist_ok=True)
    if run(["cp", "-al", f"{template}/.", str(root)], check=False).returncode != 0:
        run(["cp", "-a", f"{template}/.", str(root)], timeout=300.0)
    for database in template.rglob("*.db"):
        target = root / database.relative_to(template)
        target.unlink()
        shutil.copy2(database, target)


class MountNamespace:
    """The node's mount namespace: a copy of the run's (private, so nothing made there comes back) with
    NODE_PATHS bound to the node's directories, then / made rshared as on a real node. A shell holds it open
    (blocked reading its stdin, so no child of it outlives it; its command line names the node's directory, so
    :func:`processes_naming` finds it), and the node's processes enter it by that shell's pid. Not pinned by a bind
    mount of its nsfs file (``unshare --mount=FILE``): on this kernel that bind fails now and then with EINVAL (its
    mount-namespace loop check compares namespace ids that are not allocated in creation order)."""

    def __init__(self, base: Path, node_name: str) -> None:
        self.base = base
        self.node_name = node_name
        self._holder: subprocess.Popen[str] | None = None

    def make(self) -> None:
        binds = " && ".join(f'mount --bind "{host_path(self.base, p)}" "{p}"' for p in NODE_PATHS)
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            f"{binds} && mount --make-rshared / && echo ready && read _",
        ]
        pipe = subprocess.PIPE
        holder = subprocess.Popen(argv, stdin=pipe, stdout=pipe, stderr=pipe, text=True)
        self._holder = holder
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "ready":
            _, stderr = holder.communicate(timeout=10)
            self._holder = None
            raise RealNodeError(f"mount namespace of {self.node_name}: {stderr.strip()}")

    def release(self) -> None:
        """End the holder (EOF on its stdin); the namespace and its mounts go with the last process in it."""
        holder, self._holder = self._holder, None
        if holder is None:
            return
        try:
            holder.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.communicate()

    def enter(self, argv: list[str]) -> list[str]:
        """``argv`` run in this mount namespace (nsenter execs it: the pid is the command's)."""
        if self._holder is None or self._holder.poll() is not None:
            raise RealNodeError(f"the mount namespace of {self.node_name} is gone")
        return ["nsenter", f"--mount=/proc/{self._holder.pid}/ns/mnt", "--", *argv]


def processes_naming(base: Path) -> list[int]:
    """Pids of processes still alive whose command line names ``base``: a node's shims, its namespace holder and
    anything else run from its directory."""
    marker = str(base).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


def mounts_under(base: Path) -> list[str]:
    """Mount points of the run's namespace at or under ``base``."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].encode().decode("unicode_escape")
        if mount_point == str(base) or mount_point.startswith(f"{base}/"):
            out.append(mount_point)
    return out

"""Runs a test process the way a container sees the device plugin's spec: in a private mount namespace where the
fixed path /etc/hami/vgpu.spec shows a given file (a read-only bind mount of its own, or the forms an attacker
could produce). Shared by the CUDA and the Vulkan tests."""

from __future__ import annotations

import os
from pathlib import Path

SPEC_PATH = "/etc/hami/vgpu.spec"  # HAMI_SPEC_PATH: fixed in the library, not settable from the environment

# Runs "$@" in a private mount namespace where SPEC_PATH shows the file $1 the way $2 says: "mount" = a read-only
# bind mount of its own (the device plugin's mount), "rw" = a writable bind mount, "file" = a plain file (as an
# image or the container could put there), "rofile" = a plain file on a read-only file system (an image's file
# under readOnlyRootFilesystem). /etc/hami itself becomes a private tmpfs, so nothing of it reaches the
# host; the empty directory is created on the host once, as a mount point. LD_PRELOAD is applied to the program
# only (not to mount and sh).
_SPEC_WRAPPER = r"""
set -e
src=$1 how=$2; shift 2
mount -t tmpfs -o size=64k,mode=0755 hami-test-spec /etc/hami
case $how in
  file) cp "$src" /etc/hami/vgpu.spec ;;
  mount) : > /etc/hami/vgpu.spec; mount --bind -o ro "$src" /etc/hami/vgpu.spec ;;
  rw) : > /etc/hami/vgpu.spec; mount --bind "$src" /etc/hami/vgpu.spec ;;
  rofile) cp "$src" /etc/hami/vgpu.spec; mount -o remount,ro /etc/hami ;;
esac
if [ -n "$HAMI_TEST_PRELOAD" ]; then export LD_PRELOAD="$HAMI_TEST_PRELOAD"; fi
unset HAMI_TEST_PRELOAD
exec "$@"
"""


def with_spec(argv: list[str], env: dict[str, str], spec: Path, how: str = "mount") -> tuple[list[str], dict[str, str]]:
    """argv and env that run argv with ``spec`` at SPEC_PATH (see _SPEC_WRAPPER), in a private mount namespace."""
    os.makedirs("/etc/hami", exist_ok=True)
    env = dict(env)
    env["HAMI_TEST_PRELOAD"] = env.pop("LD_PRELOAD", "")
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        _SPEC_WRAPPER,
        "sh",
        str(spec),
        how,
        *argv,
    ], env

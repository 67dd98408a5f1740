"""Settings of hami-lib-installer: flags > env (HAMI_LIB_INSTALLER_*) > --config file > defaults."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Final

from hami_shared.config import parse_host_port, setting
from hami_shared.logging import LEVELS
from hami_shared.names import HOOK_DIR
from hami_shared.service.program import Program

from hami_lib_installer.core.errors import InstallError
from hami_lib_installer.core.layout import runtime_path_problem
from hami_lib_installer.core.version import validate_version

ENV_PREFIX: Final = "HAMI_LIB_INSTALLER"
_DESCRIPTION: Final = (
    "Install hamicore (libvgpu.so, libvgpu_vk.so, the Vulkan layer manifest and ld.so.preload) into a host "
    "directory atomically and versioned, so running containers never see a partial library; collect old "
    "versions no process uses. Exit codes: 0 installed, 1 refused or failed (previous installation intact), "
    "2 bad settings."
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    source: pathlib.Path = setting(
        pathlib.Path("/opt/hami/lib"),
        help="directory with the hamicore build: libvgpu.so, libvgpu_vk.so, optional VERSION and "
        "vulkan/implicit_layer.d/*.json (the image ships it here; `make hamicore` builds it in hamicore/build)",
    )
    dest: pathlib.Path = setting(pathlib.Path(HOOK_DIR), help="host directory to install into")
    # Not called "version": that key of a config file names the config format (hami_shared.config).
    lib_version: str = setting(
        "", help="version suffix of the installed files; empty = the source's VERSION file, else a content hash"
    )
    runtime_dir: str = setting(
        "",
        help="absolute directory where processes see the libraries (written into ld.so.preload and the "
        "Vulkan manifest); empty = the destination directory",
    )
    mode: str = setting(
        "once", help="once: install and exit (init container); daemon: keep verifying", choices=("once", "daemon")
    )
    verify_period: float = setting(60.0, help="daemon mode: seconds between verifications (repairing what changed)")
    gc: bool = setting(True, help="remove old versions no process uses")
    keep_last: int = setting(2, help="old versions to keep when process maps cannot be checked")
    gc_grace: float = setting(
        300.0, help="seconds after the stable names switch before the previous version may be removed"
    )
    process_scan: str = setting(
        "auto",
        help="check /proc/*/maps and mountinfo before removing old versions: auto = only in the host PID "
        "namespace (hostPID: true), on, off",
        choices=("auto", "on", "off"),
    )
    proc_root: pathlib.Path = setting(pathlib.Path("/proc"), help="procfs mount to scan")
    health_listen: tuple[str, int] | None = setting(
        None, help="daemon mode: HOST:PORT serving /healthz and /metrics; empty = none", parse=parse_host_port
    )
    health_file: pathlib.Path | None = setting(
        None, help="daemon mode: file rewritten after every verification with the health as JSON; empty = none"
    )
    log_level: str = setting("info", help="log level", choices=LEVELS)

    def __post_init__(self) -> None:
        if self.lib_version:
            try:
                validate_version(self.lib_version)
            except InstallError as exc:
                raise ValueError(f"--lib-version: {exc}") from exc
        problem = runtime_path_problem(self.effective_runtime_dir)
        if problem:
            raise ValueError(f"--runtime-dir: {problem}")
        if not self.dest.is_absolute():
            raise ValueError(f"--dest {self.dest} must be an absolute path")
        if self.verify_period <= 0:
            raise ValueError("--verify-period must be positive")
        if self.keep_last < 0:
            raise ValueError("--keep-last must be 0 or more")
        if self.gc_grace < 0:
            raise ValueError("--gc-grace must be 0 or more")

    @property
    def effective_runtime_dir(self) -> str:
        return self.runtime_dir or str(self.dest)


PROGRAM: Final = Program(name="hami-lib-installer", settings=Settings, env_prefix=ENV_PREFIX, description=_DESCRIPTION)

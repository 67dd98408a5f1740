"""Command-line entry point of hami-lib-installer: settings, logging, then once or daemon mode."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from hami_shared.config import ConfigError, load_settings
from hami_shared.logging import configure_logging, get_logger

from hami_lib_installer.adapters.faults import FaultHook, InjectedFault
from hami_lib_installer.app.installer import install
from hami_lib_installer.app.settings import ENV_PREFIX, Settings
from hami_lib_installer.core.errors import InstallError

PROG = "hami-lib-installer"
DESCRIPTION = (
    "Install hamicore (libvgpu.so, libvgpu_vk.so, the Vulkan layer manifest and ld.so.preload) into a host "
    "directory atomically and versioned, so running containers never see a partial library; collect old "
    "versions no process uses. Exit codes: 0 installed, 1 refused or failed (previous installation intact), "
    "2 bad settings."
)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(Settings, prog=PROG, description=DESCRIPTION, env_prefix=ENV_PREFIX, argv=argv)
        fault = FaultHook.from_env()
    except (ConfigError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, service=PROG)
    log = get_logger(__name__)
    if settings.mode == "daemon":
        # Imported here so the init container (once mode) does not pay for aiohttp's import.
        from hami_lib_installer.app.daemon import run_daemon

        try:
            return asyncio.run(run_daemon(settings, fault=fault))
        except OSError as exc:  # e.g. the health port is taken
            log.error("daemon could not start", error=f"{exc.strerror or exc}", health_listen=settings.health_listen)
            return 1
    try:
        install(settings, fault=fault)
    except InstallError as exc:
        log.error("installation failed", error=str(exc), error_type=type(exc).__name__)
        return 1
    except InjectedFault as exc:
        log.error("installation failed", error=str(exc), error_type=type(exc).__name__)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())

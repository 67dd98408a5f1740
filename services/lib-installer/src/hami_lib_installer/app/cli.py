"""Entry point of hami-lib-installer, run by the service kit: install once (init container), or keep
verifying (daemon mode, ``daemon.py``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hami_shared.config import ConfigError
from hami_shared.service.lifecycle import Lifecycle, run_service

from hami_lib_installer.adapters.faults import FaultHook, InjectedFault
from hami_lib_installer.app.installer import install
from hami_lib_installer.app.settings import PROGRAM, Settings

EXIT_INJECTED_FAULT = 3
"""A crash test's injected fault (adapters/faults.py), told apart from a real failure (1)."""


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(PROGRAM, assemble, argv, exit_codes={InjectedFault: EXIT_INJECTED_FAULT})


async def assemble(settings: Settings, life: Lifecycle) -> None:
    try:
        fault = FaultHook.from_env()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if settings.mode == "daemon":
        # Imported here so the init container (once mode) does not pay for aiohttp's import.
        from hami_lib_installer.app.daemon import assemble_daemon

        await assemble_daemon(settings, life, fault=fault)
    else:
        install(settings, fault=fault)


if __name__ == "__main__":
    sys.exit(main())

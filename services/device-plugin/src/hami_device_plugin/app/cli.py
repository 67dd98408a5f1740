"""Entry point of hami-device-plugin: its settings and parts (``service.py``), run by the service kit."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hami_shared.service.lifecycle import Lifecycle, run_service

from hami_device_plugin.app.settings import PROGRAM, Settings


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(PROGRAM, assemble, argv)


async def assemble(settings: Settings, life: Lifecycle) -> None:
    from hami_device_plugin.app import service  # imports the generated stubs (generated on first use)

    await service.assemble(settings, life)


if __name__ == "__main__":
    sys.exit(main())

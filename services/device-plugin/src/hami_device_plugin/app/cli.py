"""Command-line entry point: read settings, configure logging, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from hami_shared.config import ConfigError
from hami_shared.logging import configure_logging, get_logger

from hami_device_plugin.adapters.nvml import NvmlError
from hami_device_plugin.app.settings import PROG, load_device_plugin_settings

log = get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_device_plugin_settings(argv)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, service=PROG)
    from hami_device_plugin.app import service  # imports the generated stubs (generated on first use)

    try:
        service.check_paths(settings)
        asyncio.run(service.serve(settings))
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except NvmlError as exc:
        log.error("nvml_unavailable", error=str(exc))
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        log.error("cannot_start", error=str(exc))
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

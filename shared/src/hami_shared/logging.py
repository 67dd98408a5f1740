"""Structured JSON logging shared by every service.

One call, :func:`configure_logging`, at process start: JSON lines on stderr with an ISO
timestamp, the level, the logger name and the event, so that node log collectors can index
them. The level comes from a flag or the ``LOG_LEVEL`` environment variable (the settings
helper wires both). Standard-library loggers (aiohttp, grpc, kubernetes_asyncio) go through
the same renderer.
"""

from __future__ import annotations

import logging as std_logging
import sys
from typing import Final, TextIO

import structlog

LEVELS: Final = ("debug", "info", "warning", "error", "critical")


def configure_logging(level: str = "info", *, stream: TextIO | None = None, service: str | None = None) -> None:
    """Configure structlog and the standard library to emit JSON lines at ``level``."""
    level_name = level.lower()
    if level_name not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    numeric = std_logging.getLevelNamesMapping()[level_name.upper()]
    out = stream if stream is not None else sys.stderr
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if service:

        def add_service(_logger: object, _method: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
            event.setdefault("service", service)
            return event

        shared.append(add_service)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )
    handler = std_logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(sort_keys=False),
            ],
        )
    )
    root = std_logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger named after the module, e.g. ``get_logger(__name__)``."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger

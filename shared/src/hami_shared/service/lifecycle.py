"""The lifecycle runner behind every service's ``main``: ``run_service(PROGRAM, assemble, argv)``.

Settings, logging, the service's ``assemble(settings, life)`` (it opens its resources on ``life.resources``,
declares its tasks, shutdown steps and any SIGHUP reload), the tasks under one TaskGroup until SIGTERM/SIGINT
(handled from before ``assemble``), then the shutdown steps in order, the tasks cancelled, the resources closed in
reverse. A failing task or start ends the process with one ``service_failed`` log line, ``<prog>: <message>`` on
stderr and an exit code (``ConfigError`` 2, the service's ``exit_codes``, else 1); shared/README.md, "The service
kit", says more.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from hami_shared.config import ConfigError
from hami_shared.logging import configure_logging, get_logger
from hami_shared.service.program import Program

if TYPE_CHECKING:
    from aiohttp import web

log = get_logger(__name__)

EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 2
EXIT_INTERRUPTED: Final = 130
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class _Settings(Protocol):
    @property
    def log_level(self) -> str: ...


S = TypeVar("S", bound=_Settings)
Step = Callable[[], Awaitable[object]]
Assemble = Callable[[S, "Lifecycle"], Awaitable[None]]


class StartError(Exception):
    """The service cannot start as configured; the message says what to change."""


class _TaskFailed(Exception):
    def __init__(self, name: str, error: Exception) -> None:
        super().__init__(name)
        self.name, self.error = name, error


class Task:
    """One declared task; :meth:`stop` and :meth:`join` are shutdown steps."""

    def __init__(self, run: Callable[[], Coroutine[Any, Any, object]], name: str) -> None:
        self.name, self._run = name, run
        self._task: asyncio.Task[None] | None = None

    async def _main(self) -> None:
        try:
            await self._run()
        except Exception as exc:
            raise _TaskFailed(self.name, exc) from exc

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended."""
        if self._task is not None:
            self._task.cancel()
        await self.join()

    async def join(self) -> None:
        """Wait until the task has ended by itself (one that watches ``life.stopping``)."""
        if self._task is not None:
            await asyncio.wait([self._task])


class Lifecycle:
    """What a service's assembly function declares its resources, tasks, shutdown and reload on."""

    def __init__(self, resources: contextlib.AsyncExitStack) -> None:
        self.resources = resources
        """Closed in reverse order after the tasks have ended (also when one failed)."""
        self.stopping = asyncio.Event()
        """Set by the first SIGTERM/SIGINT."""
        self._again = asyncio.Event()
        self._tasks: list[Task] = []
        self._steps: list[Step] = []
        self._reload: Step | None = None
        self._reload_wanted = asyncio.Event()

    def task(self, run: Callable[[], Coroutine[Any, Any, object]], *, name: str) -> Task:
        """Run ``run()`` in the service's TaskGroup from the end of assembly until shutdown cancels it."""
        self._tasks.append(task := Task(run, name))
        return task

    def on_stop(self, step: Step) -> None:
        """Await ``step()`` on the first signal, after the steps declared before it, before the tasks are cancelled."""
        self._steps.append(step)

    def on_reload(self, reload: Step) -> None:
        """Await ``reload()`` on each SIGHUP (without it, SIGHUP keeps its default action)."""
        self._reload = reload

    async def another_signal(self, *, within: float) -> bool:
        """During shutdown: whether a second SIGTERM/SIGINT came within ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self._again.wait(), within)
        return False

    async def serve_http(
        self,
        app: web.Application,
        listen: tuple[str, int],
        *,
        ssl_context: ssl.SSLContext | None = None,
        reuse_address: bool | None = None,
        backlog: int = 128,
    ) -> list[str]:
        """Serve ``app`` on ``listen`` until the resources close; the bound addresses as ``HOST:PORT``."""
        from aiohttp import web  # only services that serve HTTP pay for the import

        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self.resources.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, *listen, ssl_context=ssl_context, reuse_address=reuse_address, backlog=backlog)
        await site.start()
        return [f"{address[0]}:{address[1]}" for address in runner.addresses]

    def _signalled(self, signum: int) -> None:
        if self.stopping.is_set():
            self._again.set()
        else:
            log.info("signal_received", signal=signal.Signals(signum).name)
            self.stopping.set()

    async def _reloader(self) -> None:
        assert self._reload is not None
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            log.info("reloading")
            try:
                await self._reload()
            except Exception as exc:
                log.error("reload_failed", error=str(exc), error_type=type(exc).__name__)


def run_service(
    program: Program[S],
    assemble: Assemble[S],
    argv: Sequence[str] | None = None,
    *,
    exit_codes: Mapping[type[BaseException], int] | None = None,
) -> int:
    """Run the service to its end (module docstring); the process exit code."""
    try:
        settings = program.load_settings(argv)
    except ConfigError as exc:
        print(f"{program.name}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, service=program.name)
    try:
        for warning in program.warnings(settings) if program.warnings is not None else ():
            log.warning("config_warning", detail=warning)
        asyncio.run(_run(assemble, settings))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        return _failed(program.name, exc, {ConfigError: EXIT_CONFIG, **(exit_codes or {})})
    return 0


async def _run(assemble: Assemble[S], settings: S) -> None:
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as resources:
        life = Lifecycle(resources)
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, life._signalled, signum)
            resources.callback(loop.remove_signal_handler, signum)
        await assemble(settings, life)
        if not life._tasks:
            return
        if life._reload is not None:
            loop.add_signal_handler(signal.SIGHUP, life._reload_wanted.set)
            resources.callback(loop.remove_signal_handler, signal.SIGHUP)
            life.task(life._reloader, name="reload")
        async with asyncio.TaskGroup() as group:
            for task in life._tasks:
                task._task = group.create_task(task._main(), name=task.name)
            await life.stopping.wait()
            for step in life._steps:
                await step()
            log.info("stopping")
            for task in life._tasks:
                if task._task is not None:
                    task._task.cancel()


def _failed(prog: str, exc: BaseException, exit_codes: Mapping[type[BaseException], int]) -> int:
    task: str | None = None
    while isinstance(exc, BaseExceptionGroup | _TaskFailed):  # out of the task groups, to the cause
        if isinstance(exc, _TaskFailed):
            task, exc = task or exc.name, exc.error
        else:
            exc = exc.exceptions[0]
    code = next((exit_codes[t] for t in type(exc).__mro__ if t in exit_codes), EXIT_FAILED)
    message = str(exc) or type(exc).__name__
    if task is not None:
        message = f"task {task} failed: {type(exc).__name__}: {message}"
    log.error(
        "service_failed",
        error=message,
        error_type=type(exc).__name__,
        exit_code=code,
        task=task,
        exc_info=exc if task is not None else None,
    )
    print(f"{prog}: {message}", file=sys.stderr)
    return code

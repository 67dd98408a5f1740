"""The service kit's runner: settings, tasks under one group, ordered shutdown, SIGHUP, failures and exit codes.

Each test runs ``run_service`` in this process (it owns the event loop, as in a service's ``main``) and sends
the signals to this process from inside a running task, when the runner's handlers are installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
from collections.abc import Callable, Iterator

import pytest
import structlog
from hami_shared.config import ConfigError, setting
from hami_shared.logging import LEVELS
from hami_shared.service.lifecycle import Lifecycle, StartError, run_service
from hami_shared.service.program import Program


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DemoSettings:
    node_name: str = setting("", help="a name")
    log_level: str = setting("info", choices=LEVELS, help="log level")

    def __post_init__(self) -> None:
        if self.node_name == "bad":
            raise ValueError("node name 'bad' is refused; write another")


DEMO = Program(name="demo", settings=DemoSettings, env_prefix="DEMO", description="demo service")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """run_service configures logging onto this test's captured stderr: later tests must not write there."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)


def events(stderr: str) -> list[dict[str, object]]:
    out = []
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - state changed by signal handlers and other tasks
            await asyncio.sleep(0.01)


def test_sigterm_runs_the_shutdown_steps_in_order_then_cancels_the_tasks_then_closes_the_resources(
    capsys: pytest.CaptureFixture[str],
) -> None:
    happened: list[str] = []

    async def assemble(settings: DemoSettings, life: Lifecycle) -> None:
        life.resources.callback(happened.append, "resource 1 closed")
        life.resources.callback(happened.append, "resource 2 closed")

        async def serving() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                happened.append("serving cancelled")

        async def first_part() -> None:
            try:
                happened.append("started")
                send(signal.SIGTERM)
                await asyncio.Event().wait()
            finally:
                happened.append("first part ended")

        first = life.task(first_part, name="first")
        life.task(serving, name="serving")

        async def stop_first() -> None:
            happened.append("step 1")
            await first.stop()

        async def step_two() -> None:
            happened.append("step 2")

        life.on_stop(stop_first)
        life.on_stop(step_two)

    assert run_service(DEMO, assemble, []) == 0
    assert happened == [
        "started",
        "step 1",
        "first part ended",
        "step 2",
        "serving cancelled",
        "resource 2 closed",
        "resource 1 closed",
    ]
    logged = [e["event"] for e in events(capsys.readouterr().err)]
    assert logged == ["signal_received", "stopping"]


def test_a_second_signal_ends_a_waiting_shutdown_step_at_once() -> None:
    waited: list[bool] = []

    async def assemble(settings: DemoSettings, life: Lifecycle) -> None:
        async def signal_twice() -> None:
            send(signal.SIGTERM)
            await until(life.stopping.is_set)
            send(signal.SIGINT)
            await asyncio.Event().wait()

        async def drain() -> None:
            waited.append(await life.another_signal(within=60))

        life.task(signal_twice, name="signals")
        life.on_stop(drain)

    assert run_service(DEMO, assemble, []) == 0
    assert waited == [True]


def test_without_a_second_signal_the_step_waits_its_time() -> None:
    waited: list[bool] = []

    async def assemble(settings: DemoSettings, life: Lifecycle) -> None:
        async def signal_once() -> None:
            send(signal.SIGTERM)
            await asyncio.Event().wait()

        async def drain() -> None:
            waited.append(await life.another_signal(within=0.2))

        life.task(signal_once, name="signals")
        life.on_stop(drain)

    assert run_service(DEMO, assemble, []) == 0
    assert waited == [False]


def test_sighup_reloads_and_a_failed_reload_leaves_the_service_running(capsys: pytest.CaptureFixture[str]) -> None:
    reloads: list[int] = []

    async def assemble(settings: DemoSettings, life: Lifecycle) -> None:
        async def reload() -> None:
            reloads.append(len(reloads) + 1)
            if len(reloads) == 1:
                raise ConfigError("the new node config is not valid")

        async def hang_up_twice_then_stop() -> None:
            send(signal.SIGHUP)
            await until(lambda: len(reloads) == 1)
            send(signal.SIGHUP)
            await until(lambda: len(reloads) == 2)
            send(signal.SIGTERM)
            await asyncio.Event().wait()

        life.on_reload(reload)
        life.task(hang_up_twice_then_stop, name="driver")

    assert run_service(DEMO, assemble, []) == 0
    assert reloads == [1, 2]
    logged = events(capsys.readouterr().err)
    failed = [e for e in logged if e["event"] == "reload_failed"]
    assert len(failed) == 1
    assert failed[0]["error"] == "the new node config is not valid"
    assert [e["event"] for e in logged].count("reloading") == 2
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL  # handed back when the service ended


def test_a_failing_task_ends_the_group_and_the_process_with_one_clear_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    happened: list[str] = []

    async def assemble(settings: DemoSettings, life: Lifecycle) -> None:
        life.resources.callback(happened.append, "resource closed")

        async def other() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                happened.append("other cancelled")

        async def broken() -> None:
            await asyncio.sleep(0)
            raise RuntimeError("the socket directory vanished")

        life.task(other, name="other")
        life.task(broken, name="kubelet-link")
        life.on_stop(lambda: asyncio.sleep(0))  # never reached: no signal came

    assert run_service(DEMO, assemble, []) == 1
    assert happened == ["other cancelled", "resource closed"]
    err = capsys.readouterr().err
    assert "demo: task kubelet-link failed: RuntimeError: the socket directory vanished\n" in err
    (failure,) = [e for e in events(err) if e["level"] == "error"]
    assert failure["event"] == "service_failed"
    assert failure["task"] == "kubelet-link"
    assert failure["exit_code"] == 1
    assert "Traceback" in str(failure["exception"])


class InjectedFault(Exception):
    pass


class ChildFault(InjectedFault):
    pass


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (ConfigError("--regions-path /x exists and is not a directory"), 2, "--regions-path /x exists"),
        (StartError("cannot listen on 0.0.0.0:1: Permission denied"), 1, "cannot listen on 0.0.0.0:1"),
        (ChildFault("injected at after-preflight"), 3, "injected at after-preflight"),
        (OSError(98, "Address already in use"), 1, "Address already in use"),
        (KeyError("x"), 1, "'x'"),
    ],
)
def test_start_failures_map_to_exit_codes_with_a_one_line_message(
    error: Exception, code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def assemble(settings: DemoSettings, life: Lifecycle) -> None:
        raise error

    assert run_service(DEMO, assemble, [], exit_codes={InjectedFault: 3}) == code
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("demo: ")]
    assert message in line
    (failure,) = [e for e in events(err) if e["level"] == "error"]
    assert failure["event"] == "service_failed"
    assert failure["exit_code"] == code


def test_bad_settings_exit_2_naming_what_to_change(capsys: pytest.CaptureFixture[str]) -> None:
    async def assemble(settings: DemoSettings, life: Lifecycle) -> None:
        raise AssertionError("not reached")

    assert run_service(DEMO, assemble, ["--node-name", "bad"]) == 2
    assert capsys.readouterr().err == "demo: invalid settings: node name 'bad' is refused; write another\n"


def test_a_service_without_tasks_ends_when_assembled() -> None:
    done: list[str] = []

    async def assemble(settings: DemoSettings, life: Lifecycle) -> None:
        life.resources.callback(done.append, "closed")
        done.append(settings.node_name)

    assert run_service(DEMO, assemble, ["--node-name", "once"]) == 0
    assert done == ["once", "closed"]


def test_settings_read_the_program_s_variables_then_its_fallbacks_then_check() -> None:
    checked: list[str] = []
    program = dataclasses.replace(DEMO, env_fallbacks=("NODE_NAME",), check=lambda s: checked.append(s.node_name))
    assert program.load_settings([], {"NODE_NAME": "from-downward-api"}).node_name == "from-downward-api"
    ours = {"NODE_NAME": "theirs", "DEMO_NODE_NAME": "ours"}
    assert program.load_settings([], ours).node_name == "ours"
    assert program.load_settings(["--node-name", "flag"], ours).node_name == "flag"
    assert checked == ["from-downward-api", "ours", "flag"]
    with pytest.raises(ConfigError, match="node name 'bad' is refused"):
        program.load_settings([], {"NODE_NAME": "bad"})


def test_a_signal_during_the_start_stops_the_service_once_started() -> None:
    happened: list[str] = []

    async def assemble(settings: DemoSettings, life: Lifecycle) -> None:
        send(signal.SIGTERM)
        await until(life.stopping.is_set)
        happened.append("assembled")

        async def never_ends() -> None:
            await asyncio.Event().wait()

        async def step() -> None:
            happened.append("step")

        life.task(never_ends, name="part")
        life.on_stop(step)

    assert run_service(DEMO, assemble, []) == 0
    assert happened == ["assembled", "step"]


def test_the_program_s_config_warnings_are_logged_once_at_start(capsys: pytest.CaptureFixture[str]) -> None:
    program = dataclasses.replace(
        DEMO, warnings=lambda s: (f"device-config.yaml: nvidia.typo ({s.node_name}): unknown key, ignored",)
    )

    async def assemble(settings: DemoSettings, life: Lifecycle) -> None:
        return None

    assert run_service(program, assemble, ["--node-name", "n1"]) == 0
    warned = [e for e in events(capsys.readouterr().err) if e["event"] == "config_warning"]
    assert [(e["level"], e["detail"]) for e in warned] == [
        ("warning", "device-config.yaml: nvidia.typo (n1): unknown key, ignored")
    ]

"""The log-event convention (shared/README.md), checked over the source of shared/ and every service.

A log call's event is a literal snake_case name (``pod_denied``, ``watch_retry``): what happened, the same
string every time, so a log query can select it; every value goes into a field (``uuid=...``), never into
the event text.
"""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCES = [
    ROOT / "shared" / "src",
    *sorted((ROOT / "services").glob("*/src")),
    *sorted((ROOT / "services").glob("*/bench")),
]
LOGGERS = frozenset({"log", "logger"})
METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
EVENT = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


def _is_log_method(node: ast.expr) -> bool:
    if isinstance(node, ast.IfExp):  # (log.debug if quiet else log.info)("event", ...)
        return _is_log_method(node.body) and _is_log_method(node.orelse)
    return (
        isinstance(node, ast.Attribute)
        and node.attr in METHODS
        and isinstance(node.value, ast.Name)
        and node.value.id in LOGGERS
    )


def _events(node: ast.expr) -> list[str] | None:
    """The literal event names of a call's first argument (both branches of a conditional), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        body, orelse = _events(node.body), _events(node.orelse)
        return None if body is None or orelse is None else body + orelse
    return None


def log_calls() -> list[tuple[str, int, ast.expr | None]]:
    calls = []
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            if "_generated" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Call) and _is_log_method(node.func):
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    calls.append((where, node.lineno, node.args[0] if node.args else None))
    return calls


def test_every_log_event_is_a_literal_snake_case_name() -> None:
    calls = log_calls()
    assert len(calls) > 50, "the scan found too few log calls: are the source paths right?"
    wrong = []
    for where, _line, event in calls:
        names = None if event is None else _events(event)
        if names is None:
            shown = "no event" if event is None else ast.unparse(event)
            wrong.append(f"{where}: the event must be a string literal (values go into fields): {shown}")
            continue
        wrong += [f"{where}: {name!r} is not a snake_case event name" for name in names if not EVENT.fullmatch(name)]
    assert not wrong, "\n".join(wrong)


def test_the_scan_finds_interpolated_and_sentence_events(tmp_path: pathlib.Path) -> None:
    """The checker itself: an f-string event, a sentence and a conditional of names are told apart."""
    source = (
        'log.info(f"pod {name} denied")\n'
        'log.warning("certificate reloaded")\n'
        '(log.debug if quiet else log.info)("installation_updated", version=v)\n'
    )
    calls = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call) and _is_log_method(node.func)]
    assert len(calls) == 3
    assert _events(calls[0].args[0]) is None
    assert _events(calls[1].args[0]) == ["certificate reloaded"]
    assert not EVENT.fullmatch("certificate reloaded")
    assert _events(calls[2].args[0]) == ["installation_updated"]

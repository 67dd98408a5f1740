"""Service settings from command-line flags, environment variables and a config file.

A service's settings are one frozen dataclass whose fields are declared with :func:`setting`.
:func:`load_settings` builds the ``argparse`` parser, reads the environment (``<PREFIX>_<FIELD>``) and an optional
YAML/JSON config file (``--config`` or ``<PREFIX>_CONFIG``); precedence: flag > environment > config file > default.
Every error names where the bad value came from (flag, variable or file key) and what to write instead; unknown
config-file keys are refused. Cross-field checks belong in the dataclass's ``__post_init__`` (raise ``ValueError``).

Reading is total: whatever the flags, variables and file hold, :func:`load_settings` returns the settings or
raises :class:`ConfigError` (argparse exits with usage for a bad flag). The config file is read up to
``MAX_CONFIG_FILE_BYTES`` (real ones are a few KiB), must be UTF-8 and nest at most ``MAX_CONFIG_DEPTH`` levels
(YAML; JSON stops at Python's recursion limit); a value must be a scalar (a list of scalars for a list setting),
so a YAML alias cannot expand into an exponentially large string; values quoted in messages are clipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import yaml

S = TypeVar("S")

CONFIG_VERSION: Final = "v1"
MAX_CONFIG_FILE_BYTES: Final = 256 * 1024
MAX_CONFIG_DEPTH: Final = 16
_SCALARS: Final = (str, int, float, bool)
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


class ConfigError(Exception):
    """A setting has a value that cannot be used; the message says which and what to change."""


def setting(
    default: Any,
    *,
    help: str,
    choices: Sequence[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
) -> Any:
    """Declare a settings field. ``parse`` converts text (flag/env) for types beyond the built-ins."""
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "choices": tuple(choices) if choices else None,
            "parse": parse,
            "metavar": metavar,
        },
    )


def load_settings(
    cls: type[S],
    *,
    prog: str,
    description: str,
    env_prefix: str,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    underlay: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
) -> S:
    """Build ``cls`` from flags, environment and config file (see the module docstring).

    ``underlay`` gives values that lie under all three (above the defaults), from the values they set: a foreign
    file named by one of the settings (HAMi's device ConfigMap, :mod:`hami_shared.hami_config`); it raises
    ``ConfigError``."""
    environ = os.environ if environ is None else environ
    fields = _settings_fields(cls)
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    config_env = f"{env_prefix}_CONFIG"
    parser.add_argument(
        "--config",
        type=pathlib.Path,
        default=None,
        help=f"YAML or JSON file with any of the settings below, keys as in the flag names (env {config_env})",
    )
    for field in fields:
        _add_flag(parser, field, hints[field.name], env_prefix)
    namespace = parser.parse_args(argv)

    values: dict[str, Any] = {}
    config_path = namespace.config or (pathlib.Path(environ[config_env]) if environ.get(config_env) else None)
    if config_path is not None:
        values.update(read_config_file(cls, config_path))
    for field in fields:
        var = _env_name(env_prefix, field.name)
        if var in environ:
            values[field.name] = _convert_text(environ[var], field, hints[field.name], f"environment variable {var}")
    for field in fields:
        cli_value = getattr(namespace, field.name)
        if cli_value is not None:
            values[field.name] = cli_value
    if underlay is not None:
        values = {**underlay(values), **values}
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc


def _settings_fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    return tuple(f for f in dataclasses.fields(cls) if f.init)


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env_name(prefix: str, name: str) -> str:
    return f"{prefix}_{name.upper()}"


def _add_flag(parser: argparse.ArgumentParser, field: dataclasses.Field[Any], hint: Any, prefix: str) -> None:
    flag = _flag_name(field.name)

    def convert(text: str) -> Any:
        try:
            return _convert_text(text, field, hint, f"flag {flag}")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    kind: dict[str, Any] = {"type": convert, "metavar": field.metadata.get("metavar") or field.name.upper()}
    parser.add_argument(
        flag,
        dest=field.name,
        default=None,
        help=f"{field.metadata.get('help', '')} (env {_env_name(prefix, field.name)})"
        f" [default: {_show_default(field.default)}]",
        **({"action": argparse.BooleanOptionalAction} if _base_type(hint) is bool else kind),
    )


def _show_default(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "(none)"
    return "(none)" if value is None else str(value)


def _base_type(hint: Any) -> Any:
    """Strip ``X | None`` to ``X``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _base_type(args[0])
    return hint


def _convert_text(text: str, field: dataclasses.Field[Any], hint: Any, source: str) -> Any:
    meta = field.metadata
    base = _base_type(hint)
    optional = base is not hint
    try:
        if optional and text == "":
            return None
        if meta.get("parse"):
            value = meta["parse"](text)
        elif base is bool:
            lowered = text.strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise ValueError("expected true or false")
            value = lowered in _TRUE
        elif base in (int, float, str, pathlib.Path):
            value = base(text)
        elif typing.get_origin(base) is tuple:
            value = tuple(part.strip() for part in text.split(",") if part.strip())
        else:
            raise TypeError(f"no text conversion for {base!r}; give the field a parse= function")
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}={_clip(text)}: {exc}") from exc
    _check_choices(value, field, source)
    return value


def _clip(value: object, limit: int = 200) -> str:
    """``repr`` of a (scalar) value for a message, at most ``limit`` characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<integer of {value.bit_length()} bits>"
    text = repr(value[: limit + 1] if isinstance(value, str) else value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_choices(value: Any, field: dataclasses.Field[Any], source: str) -> None:
    choices = field.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{source}={_clip(value)}: must be one of {', '.join(choices)}")


class _BoundedYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing nesting deeper than ``MAX_CONFIG_DEPTH`` as it composes (the
    stock composer recurses until Python's limit, for seconds on a long run of ``[``)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_CONFIG_DEPTH} levels",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml_bounded(text: str) -> Any:
    """YAML text parsed with the depth bound of config files (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_BoundedYamlLoader)


def read_text_bounded(path: pathlib.Path, label: str) -> str:
    """The UTF-8 text of the file at ``path``, read up to :data:`MAX_CONFIG_FILE_BYTES` (a file larger than that is
    refused unread past the bound). Raises :class:`ConfigError` whose message starts with ``label``: every config
    file the services read (settings, HAMi's device-config, the per-node file) goes through here."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read it: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(f"{label}: larger than {MAX_CONFIG_FILE_BYTES} bytes; is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: not UTF-8 text: {exc}") from exc


def read_config_file(cls: type, path: pathlib.Path) -> dict[str, Any]:
    """The settings a config file sets for the settings dataclass ``cls``, converted and checked
    (what :func:`load_settings` layers under the environment and the flags)."""
    fields, hints = _settings_fields(cls), typing.get_type_hints(cls)
    text = read_text_bounded(path, f"config file {path}")
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_BoundedYamlLoader)
    except (ValueError, TypeError, OverflowError, RecursionError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"config file {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of setting names to values")
    raw = dict(raw)
    version = raw.pop("version", CONFIG_VERSION)
    if not isinstance(version, _SCALARS) or str(version) != CONFIG_VERSION:
        raise ConfigError(
            f"config file {path}: version {_clip(version) if isinstance(version, _SCALARS) else 'of this type'} "
            f"is not supported; write version: {CONFIG_VERSION}"
        )
    by_key = {f.name.replace("_", "-"): f for f in fields} | {f.name: f for f in fields}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        field = by_key.get(key) if isinstance(key, str) else None
        if field is None:
            known = ", ".join(sorted(f.name.replace("_", "-") for f in fields))
            shown = _clip(key) if isinstance(key, _SCALARS) else "of this type"
            raise ConfigError(f"config file {path}: unknown setting {shown}; known settings: {known}")
        out[field.name] = _convert_file_value(value, field, hints[field.name], f"config file {path} key {key!r}")
    return out


def _convert_file_value(value: Any, field: dataclasses.Field[Any], hint: Any, source: str) -> Any:
    base = _base_type(hint)
    if value is None and base is not hint:
        return None
    if isinstance(value, str):
        return _convert_text(value, field, hint, source)
    if typing.get_origin(base) is tuple and isinstance(value, list):
        if not all(isinstance(v, _SCALARS) for v in value):
            raise ConfigError(f"{source}: expected a list of plain values (strings or numbers)")
        return tuple(str(v) for v in value)
    if value is not None and not isinstance(value, _SCALARS):
        expected_name = base.__name__ if isinstance(base, type) else "a plain value"
        raise ConfigError(f"{source}: expected {expected_name}, not a {type(value).__name__}")
    if field.metadata.get("parse"):
        return _convert_text(str(value), field, hint, source)
    expected = base if isinstance(base, type) else None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError as exc:
            raise ConfigError(f"{source}={_clip(value)}: {exc}") from exc
    if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise ConfigError(f"{source}={_clip(value)}: expected {expected.__name__}")
    _check_choices(value, field, source)
    return value


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8443`` for IPv6) into a tuple; the error says what to write."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not 0 < len(port_text) <= 5 or not port_text.isascii() or not port_text.isdigit():
        raise ValueError("expected HOST:PORT, e.g. 0.0.0.0:8443")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0..65535")
    host = host.strip("[]") or "0.0.0.0"
    return host, port

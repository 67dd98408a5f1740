"""A service's declaration of itself, and the one way its settings are loaded.

Each service has one :class:`Program` constant, ``PROGRAM`` in its ``app/settings.py``: the program name
(``argv[0]`` of its messages, the ``service`` field of its log lines), its settings dataclass (named
``Settings``), the prefix of its environment variables and the description ``--help`` prints.
``PROGRAM.load_settings(argv, environ)`` reads them: a flag ``--some-name``, the variable
``<PREFIX>_SOME_NAME`` and the config-file key ``some-name`` are one setting (:mod:`hami_shared.config`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from hami_shared.config import load_settings

S = TypeVar("S")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Program(Generic[S]):
    """What a service is called and how its settings are read."""

    name: str
    settings: type[S]
    env_prefix: str
    description: str
    env_fallbacks: tuple[str, ...] = ()
    """Foreign variables (``NODE_NAME``) read for ``<PREFIX>_<NAME>`` when that is unset or empty."""
    check: Callable[[S], None] | None = None
    """Checks after loading that need more than the dataclass sees (raise ``ConfigError``)."""
    underlay: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    """Values under the config file, environment and flags (HAMi's device ConfigMap: ``hami_config.underlay``)."""
    warnings: Callable[[S], Sequence[str]] | None = None
    """What the loaded settings' sources leave unread (unknown keys): logged at start (``config_warning``)."""

    def load_settings(self, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> S:
        """The settings from flags > environment > config file > underlay > defaults; ``ConfigError`` says what to
        change."""
        env = dict(os.environ if environ is None else environ)
        for name in self.env_fallbacks:
            if not env.get(f"{self.env_prefix}_{name}") and env.get(name):
                env[f"{self.env_prefix}_{name}"] = env[name]
        settings = load_settings(
            self.settings,
            prog=self.name,
            description=self.description,
            env_prefix=self.env_prefix,
            argv=argv,
            environ=env,
            underlay=self.underlay,
        )
        if self.check is not None:
            self.check(settings)
        return settings

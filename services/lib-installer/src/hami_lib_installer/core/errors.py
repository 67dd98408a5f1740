"""Errors the installer reports to the operator; each message says what is wrong and what to change."""

from __future__ import annotations


class InstallError(Exception):
    """An installation could not be done; the previous installation is left as it was."""


class InvalidVersionError(InstallError, ValueError):
    """A version string that is not safe to use in a file name."""


class InvalidSourceError(InstallError):
    """The source directory does not hold valid hamicore artefacts."""


class DestinationError(InstallError):
    """The destination cannot take the installation (read-only, full, wrong file types)."""

"""Version strings: validation (they become file-name suffixes) and the content-derived default."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Final

from hami_lib_installer.core.errors import InvalidVersionError

MAX_VERSION_LENGTH: Final = 64
_ALLOWED: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
HASH_VERSION_PREFIX: Final = "sha-"
_HINT: Final = "use 1 to 64 letters, digits and . _ + - starting with a letter or digit, e.g. 2.5.0"


def validate_version(version: str) -> str:
    """Return ``version`` if it is safe as the suffix of ``libvgpu.so.<version>`` (no ``/`` or ``..``, no
    leading dot or dash, printable in logs), else raise."""
    if not version:
        raise InvalidVersionError(f"version is empty; {_HINT}")
    if len(version) > MAX_VERSION_LENGTH:
        raise InvalidVersionError(f"version is {len(version)} characters long (at most {MAX_VERSION_LENGTH}); {_HINT}")
    bad = sorted({c for c in version if not (c.isascii() and (c.isalnum() or c in "._+-"))})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise InvalidVersionError(
            f"version {version!r} contains characters not allowed in a file name suffix: {shown}; {_HINT}"
        )
    if ".." in version:
        raise InvalidVersionError(f"version {version!r} contains '..'; {_HINT}")
    if not _ALLOWED.match(version):
        raise InvalidVersionError(f"version {version!r} must start with a letter or digit; {_HINT}")
    return version


def version_from_digests(digests: Iterable[str]) -> str:
    """A version derived from the artefacts' digests, for sources without VERSION: same content, same version."""
    combined = hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()
    return validate_version(HASH_VERSION_PREFIX + combined[:12])


def parse_version_file(text: str) -> str:
    """The version named by a VERSION file: its first non-empty line, stripped."""
    for line in text.splitlines():
        if line.strip():
            return validate_version(line.strip())
    raise InvalidVersionError(f"VERSION file is empty; write one line, {_HINT}")

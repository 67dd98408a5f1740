"""Reading the source directory: the hamicore build shipped in the image (``make hamicore`` output)::

libvgpu.so, libvgpu_vk.so                     required, ELF shared objects for this node
vulkan/implicit_layer.d/<name>.json           optional layer manifest (hami.json preferred)
VERSION                                       optional, one line: the version to install as
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from hami_lib_installer.core.elf import ElfTarget, elf_problem
from hami_lib_installer.core.errors import InvalidSourceError
from hami_lib_installer.core.layout import LIBRARIES, VERSION_FILE, parse_manifest_template
from hami_lib_installer.core.plan import Digest, digest_of
from hami_lib_installer.core.version import parse_version_file, version_from_digests

MAX_LIBRARY_BYTES = 512 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class SourceArtifacts:
    """The validated content to install."""

    libraries: dict[str, bytes]
    digests: dict[str, Digest]
    manifest_template: dict[str, Any] | None
    version_file: str | None
    """the version named by the source's VERSION file, if it has one"""

    def default_version(self) -> str:
        """The VERSION file's version, else one derived from the libraries' content."""
        if self.version_file is not None:
            return self.version_file
        return version_from_digests(self.digests[name].sha256 for name in LIBRARIES)


def read_source(source: pathlib.Path, target: ElfTarget) -> SourceArtifacts:
    """Read and validate the source directory; raises :class:`InvalidSourceError` with the reason."""
    if not source.is_dir():
        raise InvalidSourceError(f"source directory {source} does not exist; point --source at the hamicore build")
    libraries: dict[str, bytes] = {}
    for name in LIBRARIES:
        path = source / name
        try:
            if path.stat().st_size > MAX_LIBRARY_BYTES:
                raise InvalidSourceError(
                    f"source {path} is larger than {MAX_LIBRARY_BYTES} bytes; not a hamicore build"
                )
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise InvalidSourceError(
                f"source {path} is missing; the source must hold {' and '.join(LIBRARIES)}"
            ) from exc
        except IsADirectoryError as exc:
            raise InvalidSourceError(f"source {path} is a directory, not a library") from exc
        except OSError as exc:
            raise InvalidSourceError(f"cannot read source {path}: {exc.strerror or exc}") from exc
        problem = elf_problem(data, target)
        if problem:
            raise InvalidSourceError(f"source {path} is not a valid shared library for this node: {problem}")
        libraries[name] = data
    template = _read_manifest_template(source)
    version_path = source / VERSION_FILE
    version = None
    if version_path.is_file():
        try:
            version = parse_version_file(version_path.read_text(encoding="utf-8", errors="replace"))
        except ValueError as exc:
            raise InvalidSourceError(f"{version_path}: {exc}") from exc
    return SourceArtifacts(
        libraries=libraries,
        digests={name: digest_of(data) for name, data in libraries.items()},
        manifest_template=template,
        version_file=version,
    )


def _read_manifest_template(source: pathlib.Path) -> dict[str, Any] | None:
    layer_dir = source / "vulkan" / "implicit_layer.d"
    candidates = sorted(p for p in layer_dir.glob("*.json") if p.is_file()) if layer_dir.is_dir() else []
    if not candidates:
        return None
    preferred = [p for p in candidates if p.name == "hami.json"]
    if preferred:
        chosen = preferred[0]
    elif len(candidates) == 1:
        chosen = candidates[0]
    else:
        names = ", ".join(p.name for p in candidates)
        raise InvalidSourceError(f"{layer_dir} holds several manifests ({names}) and none is hami.json; keep one")
    try:
        text = chosen.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidSourceError(f"cannot read {chosen}: {exc.strerror or exc}") from exc
    return parse_manifest_template(text, str(chosen))

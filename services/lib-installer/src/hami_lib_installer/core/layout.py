"""The destination layout (the contract with the device plugin), what each file contains, names read back::

    libvgpu.so.<version>, libvgpu_vk.so.<version>   regular files: CUDA/NVML interposer, Vulkan layer
    libvgpu.so, libvgpu_vk.so                       relative symlinks to them, the stable names
    vulkan/implicit_layer.d/hami.json               layer manifest, library_path = <runtime dir>/libvgpu_vk.so
    ld.so.preload                                   one line: <runtime dir>/libvgpu.so

The runtime directory is where processes see the libraries (by default the host path, which the device
plugin mounts at the same path in containers).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any, Final

from hami_shared import names

from hami_lib_installer.core.errors import InstallError, InvalidSourceError
from hami_lib_installer.core.version import validate_version

CORE_LIBRARY: Final = names.HOOK_LIBRARY
VULKAN_LIBRARY: Final = names.HOOK_VULKAN_LIBRARY
LIBRARIES: Final = (CORE_LIBRARY, VULKAN_LIBRARY)
"""Install order matters: the core library's stable name flips first, because the Vulkan
layer of version N needs the core library of version N or later (the core keeps its shims
backward compatible), never the other way round."""
VULKAN_MANIFEST: Final = names.HOOK_VULKAN_MANIFEST
PRELOAD: Final = names.HOOK_PRELOAD
VERSION_FILE: Final = "VERSION"
TEMP_PREFIX: Final = ".hami-tmp."
LOCK_FILE: Final = ".hami-lib-installer.lock"
LAYER_NAME: Final = "VK_LAYER_HAMI_vgpu"


def versioned_name(library: str, version: str) -> str:
    """``libvgpu.so`` + ``2.5.0`` -> ``libvgpu.so.2.5.0``."""
    return f"{library}.{validate_version(version)}"


def parse_versioned_name(name: str) -> tuple[str, str] | None:
    """``libvgpu.so.2.5.0`` -> (``libvgpu.so``, ``2.5.0``); None for any other name, so the installer never
    collects a file it did not name itself (``libvgpu.so.bak~``, another tool's files)."""
    for library in LIBRARIES:
        prefix = library + "."
        if name.startswith(prefix):
            try:
                return library, validate_version(name[len(prefix) :])
            except InstallError:
                return None
    return None


def is_temp_name(name: str) -> bool:
    """Temporary files of an interrupted installer run (removed at the next run, under the lock)."""
    return name.startswith(TEMP_PREFIX)


def temp_name(final_name: str, token: str) -> str:
    """A temporary sibling of ``final_name`` (same directory, so the rename is atomic)."""
    return f"{TEMP_PREFIX}{posixpath.basename(final_name)}.{token}"


def runtime_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be written into ld.so.preload or a layer manifest, or None."""
    if not path.startswith("/"):
        return f"runtime directory {path!r} must be an absolute path"
    bad = sorted({c for c in path if c.isspace() or c == ":" or not c.isprintable()})
    if bad:
        return (
            f"runtime directory {path!r} contains {', '.join(repr(c) for c in bad)}, which ld.so.preload cannot express"
        )
    return None


def render_preload(runtime_dir: str) -> bytes:
    """Content of ld.so.preload: the stable name of the core library under the runtime directory."""
    problem = runtime_path_problem(runtime_dir)
    if problem:
        raise InstallError(problem)
    return (posixpath.join(runtime_dir, CORE_LIBRARY) + "\n").encode("ascii")


def default_manifest() -> dict[str, Any]:
    """The layer manifest used when the source ships none (the fields of hamicore's build manifest)."""
    return {
        "file_format_version": "1.2.0",
        "layer": {
            "name": LAYER_NAME,
            "type": "INSTANCE",
            "library_path": VULKAN_LIBRARY,
            "api_version": "1.3.0",
            "implementation_version": "1",
            "description": "HAMi vGPU: charges Vulkan device-local memory to the container's GPU memory budget",
            "device_extensions": [{"name": "VK_EXT_memory_budget", "spec_version": "1", "entrypoints": []}],
            "enable_environment": {names.ENV_VULKAN_ENABLE: "1"},
            "disable_environment": {names.ENV_VULKAN_DISABLE: "1"},
        },
    }


def render_vulkan_manifest(template: Mapping[str, Any] | None, runtime_dir: str) -> bytes:
    """The installed manifest: the source's (or the default) with ``library_path`` the stable name under the
    runtime directory (what the device plugin mounts into containers; a versioned path would not exist there)."""
    problem = runtime_path_problem(runtime_dir)
    if problem:
        raise InstallError(problem)
    manifest = dict(template) if template is not None else default_manifest()
    layer = manifest.get("layer")
    if not isinstance(layer, Mapping):
        raise InvalidSourceError("Vulkan layer manifest has no 'layer' object; ship a manifest in the loader's format")
    if not isinstance(layer.get("name"), str):
        raise InvalidSourceError("Vulkan layer manifest's layer has no 'name'")
    manifest["layer"] = {**layer, "library_path": posixpath.join(runtime_dir, VULKAN_LIBRARY)}
    return (json.dumps(manifest, indent=2) + "\n").encode("utf-8")


def parse_manifest_template(text: str, origin: str) -> dict[str, Any]:
    """Parse the source's layer manifest; the error names the file."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidSourceError(f"{origin}: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidSourceError(f"{origin}: the top level must be a JSON object")
    return value

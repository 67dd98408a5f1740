"""The kubelet API stubs the plugin uses, generated from the protos under ``proto/``: the device-plugin API
v1beta1 (the plugin's own service and kubelet's Registration) and the pod-resources API v1, List only.

The stubs are build products, never committed: ``make device-plugin-protos`` writes them to
``hami_device_plugin/_generated/<api>/`` (with ``.pyi`` stubs when mypy-protobuf is installed); :func:`load`
regenerates them on first use when they are missing or older than the proto.

Each proto file is registered in protobuf's default pool under its path in ``_generated``; another copy of the
same messages under a different file name (the e2e harness generates its own) must live in a different process.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Final

PACKAGE_DIR: Final = Path(__file__).resolve().parents[1]
GENERATED: Final = PACKAGE_DIR / "_generated"


@dataclasses.dataclass(frozen=True, slots=True)
class Api:
    """One kubelet API: its proto under ``proto/<relative>`` and its stubs under ``_generated/<relative>``."""

    relative: str
    """``v1beta1`` or ``podresources/v1``."""
    doc: str

    @property
    def out_dir(self) -> Path:
        return GENERATED / self.relative

    @property
    def proto_relative(self) -> str:
        return f"hami_device_plugin/_generated/{self.relative}/api.proto"

    @property
    def module(self) -> str:
        return "hami_device_plugin._generated." + self.relative.replace("/", ".")


DEVICE_PLUGIN: Final = Api("v1beta1", "Generated kubelet device-plugin v1beta1 stubs.")
POD_RESOURCES: Final = Api("podresources/v1", "Generated kubelet pod-resources v1 stubs (List only).")
APIS: Final = (DEVICE_PLUGIN, POD_RESOURCES)


def proto_path(api: Api = DEVICE_PLUGIN) -> Path:
    """The proto of the source tree (services/device-plugin/proto/<api>/api.proto), else the copy shipped with
    the generated stubs."""
    candidates = (PACKAGE_DIR.parents[1] / "proto" / api.relative / "api.proto", api.out_dir / "api.proto")
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"kubelet API proto {api.relative} not found (looked at {', '.join(str(p) for p in candidates)}); "
        "run from a source checkout or install a build that includes hami_device_plugin/_generated"
    )


def _stale(api: Api, proto: Path) -> bool:
    stamp = api.out_dir / "api_pb2_grpc.py"
    return not stamp.is_file() or stamp.stat().st_mtime < proto.stat().st_mtime


def generate(*, force: bool = False, api: Api = DEVICE_PLUGIN) -> Path:
    """Generate the stubs of ``api`` (and .pyi files when mypy-protobuf is present) unless they are current."""
    proto = proto_path(api)
    GENERATED.mkdir(parents=True, exist_ok=True)
    with (GENERATED / ".lock").open("w") as lock:
        # Two test processes may start at once; neither may import a half-written module.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and not _stale(api, proto):
            return api.out_dir
        from grpc_tools import protoc  # build-time tool: only needed when the stubs are stale

        with tempfile.TemporaryDirectory(prefix="dp-proto-") as tmp:
            include = Path(tmp) / "include"
            out = Path(tmp) / "out"
            (include / api.proto_relative).parent.mkdir(parents=True)
            out.mkdir()
            shutil.copyfile(proto, include / api.proto_relative)
            args = [
                "grpc_tools.protoc",
                f"-I{include}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
            ]
            mypy_plugin = Path(sys.executable).with_name("protoc-gen-mypy")
            mypy_grpc_plugin = Path(sys.executable).with_name("protoc-gen-mypy_grpc")
            if mypy_plugin.is_file() and mypy_grpc_plugin.is_file():
                args += [
                    f"--plugin=protoc-gen-mypy={mypy_plugin}",
                    f"--plugin=protoc-gen-mypy_grpc={mypy_grpc_plugin}",
                    f"--mypy_out={out}",
                    f"--mypy_grpc_out={out}",
                ]
            rc = protoc.main([*args, api.proto_relative])
            if rc != 0:
                raise RuntimeError(f"grpc_tools.protoc failed with exit code {rc} on {proto}")
            api.out_dir.mkdir(parents=True, exist_ok=True)
            for produced in (out / Path(api.proto_relative).parent).iterdir():
                shutil.copyfile(produced, api.out_dir / produced.name)
            shutil.copyfile(proto, api.out_dir / "api.proto")
        (GENERATED / "__init__.py").write_text('"""Generated code (not committed); see adapters/protos.py."""\n')
        # Every package between _generated and the stubs (podresources/ for podresources/v1).
        package = api.out_dir
        while package != GENERATED:
            init = package / "__init__.py"
            if package == api.out_dir:
                init.write_text(f'"""{api.doc}"""\n')
            elif not init.exists():
                init.write_text('"""Generated code (not committed); see adapters/protos.py."""\n')
            package = package.parent
        (GENERATED / "py.typed").touch()
    importlib.invalidate_caches()
    return api.out_dir


def load(api: Api = DEVICE_PLUGIN) -> tuple[ModuleType, ModuleType]:
    """The ``(api_pb2, api_pb2_grpc)`` modules of ``api``, generated first when missing or stale."""
    if _stale(api, proto_path(api)):
        generate(api=api)
    return (importlib.import_module(f"{api.module}.api_pb2"), importlib.import_module(f"{api.module}.api_pb2_grpc"))


def main() -> int:
    """``python -m hami_device_plugin.adapters.protos [--force]``: (re)generate the stubs of every API."""
    for api in APIS:
        print(generate(force="--force" in sys.argv, api=api))
    return 0


if __name__ == "__main__":
    sys.exit(main())

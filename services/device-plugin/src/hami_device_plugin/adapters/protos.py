"""The kubelet device-plugin API v1beta1 stubs, generated from ``proto/v1beta1/api.proto``.

The stubs are build products, never committed: ``make device-plugin-protos`` (a prerequisite of the
test targets) writes them to ``hami_device_plugin/_generated/v1beta1/`` with grpc_tools.protoc and,
when mypy-protobuf is installed, ``.pyi`` type stubs next to them. :func:`load` regenerates them on
first use when they are missing or older than the proto, so a fresh clone works without the make step.

The proto file is registered in protobuf's default pool as
``hami_device_plugin/_generated/v1beta1/api.proto``; another copy of the same messages under a different
file name (the e2e harness generates its own) must live in a different process.
"""

from __future__ import annotations

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
OUT_DIR: Final = GENERATED / "v1beta1"
PROTO_RELATIVE: Final = "hami_device_plugin/_generated/v1beta1/api.proto"


def proto_path() -> Path:
    """The proto of the source tree (services/device-plugin/proto/v1beta1/api.proto)."""
    candidates = (PACKAGE_DIR.parents[1] / "proto" / "v1beta1" / "api.proto", OUT_DIR / "api.proto")
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"device-plugin proto not found (looked at {', '.join(str(p) for p in candidates)}); "
        "run from a source checkout or install a build that includes hami_device_plugin/_generated"
    )


def _stale(proto: Path) -> bool:
    stamp = OUT_DIR / "api_pb2_grpc.py"
    return not stamp.is_file() or stamp.stat().st_mtime < proto.stat().st_mtime


def generate(*, force: bool = False) -> Path:
    """Generate the stubs (and .pyi files when mypy-protobuf is present) unless they are current."""
    proto = proto_path()
    GENERATED.mkdir(parents=True, exist_ok=True)
    with (GENERATED / ".lock").open("w") as lock:
        # Two test processes may start at once; neither may import a half-written module.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and not _stale(proto):
            return OUT_DIR
        from grpc_tools import protoc  # build-time tool: only needed when the stubs are stale

        with tempfile.TemporaryDirectory(prefix="dp-proto-") as tmp:
            include = Path(tmp) / "include"
            out = Path(tmp) / "out"
            (include / PROTO_RELATIVE).parent.mkdir(parents=True)
            out.mkdir()
            shutil.copyfile(proto, include / PROTO_RELATIVE)
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
            rc = protoc.main([*args, PROTO_RELATIVE])
            if rc != 0:
                raise RuntimeError(f"grpc_tools.protoc failed with exit code {rc} on {proto}")
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            for produced in (out / Path(PROTO_RELATIVE).parent).iterdir():
                shutil.copyfile(produced, OUT_DIR / produced.name)
            shutil.copyfile(proto, OUT_DIR / "api.proto")
        (GENERATED / "__init__.py").write_text('"""Generated code (not committed); see adapters/protos.py."""\n')
        (OUT_DIR / "__init__.py").write_text('"""Generated kubelet device-plugin v1beta1 stubs."""\n')
        (GENERATED / "py.typed").touch()
    importlib.invalidate_caches()
    return OUT_DIR


def load() -> tuple[ModuleType, ModuleType]:
    """``(api_pb2, api_pb2_grpc)``, generated first when missing or stale."""
    try:
        proto = proto_path()
    except FileNotFoundError:
        proto = None
    if proto is None or _stale(proto):
        generate()
    return (
        importlib.import_module("hami_device_plugin._generated.v1beta1.api_pb2"),
        importlib.import_module("hami_device_plugin._generated.v1beta1.api_pb2_grpc"),
    )


def main() -> int:
    """``python -m hami_device_plugin.adapters.protos``: (re)generate the stubs."""
    print(generate(force="--force" in sys.argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Python stubs for the kubelet device-plugin API v1beta1, generated at test time from the repository's proto
(services/device-plugin/proto/v1beta1/api.proto) into tests/e2e/.gen/ (not committed).

The generated modules live in their own package, ``hami_e2e_deviceplugin``, so they cannot shadow a top-level
``api_pb2`` of another distribution. Both register the proto package ``v1beta1`` in protobuf's default pool,
so a process that also imports the device plugin's own stubs must generate both from the same file name.
"""

from __future__ import annotations

import fcntl
import importlib
import shutil
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[3]
PROTO = ROOT / "services" / "device-plugin" / "proto" / "v1beta1" / "api.proto"
GEN = ROOT / "tests" / "e2e" / ".gen"
PACKAGE = "hami_e2e_deviceplugin"


def _generate() -> None:
    from grpc_tools import protoc  # imported lazily: only needed when the stubs are stale

    src = GEN / "proto" / PACKAGE
    out = GEN / "python"
    src.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROTO, src / "api.proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{GEN / 'proto'}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"{PACKAGE}/api.proto",
        ]
    )
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed ({rc}) on {PROTO}")
    (out / PACKAGE / "__init__.py").write_text('"""Generated device-plugin v1beta1 stubs (tests)."""\n')


def load() -> tuple[ModuleType, ModuleType]:
    """Return ``(api_pb2, api_pb2_grpc)``, regenerating them when the proto is newer than the stubs."""
    if not PROTO.is_file():
        raise FileNotFoundError(f"device-plugin proto not found at {PROTO}")
    GEN.mkdir(parents=True, exist_ok=True)
    stamp = GEN / "python" / PACKAGE / "api_pb2_grpc.py"
    with (GEN / ".lock").open("w") as lock:
        # Concurrent test processes (e.g. two make targets) must not read a half-written module.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.is_file() or stamp.stat().st_mtime < PROTO.stat().st_mtime:
            _generate()
    path = str(GEN / "python")
    if path not in sys.path:
        sys.path.insert(0, path)
    return (
        importlib.import_module(f"{PACKAGE}.api_pb2"),
        importlib.import_module(f"{PACKAGE}.api_pb2_grpc"),
    )

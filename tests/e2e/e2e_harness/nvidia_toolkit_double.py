#!/usr/bin/python3
"""TEST DOUBLE of the NVIDIA container toolkit's OCI runtime (``nvidia-container-runtime`` in "legacy" mode).

On a GPU node containerd runs ``nvidia-container-runtime`` instead of runc. On ``create`` it reads the bundle's
``config.json``, decides from the container's ``NVIDIA_VISIBLE_DEVICES`` (and the toolkit's own options) whether
this is a GPU container, adds the driver to the spec, and execs runc with the same arguments; every other
command goes to runc unchanged. This double does the same, except that "the driver" is the project's fake
driver (hamicore/build/fake: ``libcuda.so.1``, ``libnvidia-ml.so.1``; there is no GPU here):

* device list: with ``accept-nvidia-visible-devices-as-volume-mounts`` the names under
  ``/var/run/nvidia-container-devices/`` among the container's mounts, when there are any; otherwise
  ``NVIDIA_VISIBLE_DEVICES`` from the process env, honoured for unprivileged containers only with
  ``accept-nvidia-visible-devices-envvar-when-unprivileged`` (default true, as in the real toolkit). Unset,
  empty or ``void``: not a GPU container (the spec is left alone); ``none``: the driver without devices.
* what a GPU container gets: the fake libraries bound read-only into ``library-dir`` (the loader's default
  path, where the real toolkit puts the driver's libraries), the node's fake-GPU description as a
  ``FAKE_NVML_CONFIG`` file and the node's shared fake-GPU state file (read-write: the "driver" keeps the node's
  device memory and processes there), and the host's ``/proc`` read-only for ``FAKE_GPU_HOST_PROC`` (a real driver
  lives in the kernel and names processes by host pid; the fake lives in the process).

The container's copy of the description lists only the visible GPUs, in node order (the real toolkit gives a
container only their device nodes, so CUDA and NVML there see only them); each keeps its node device in the
shared state file (``FAKE_GPU_STATE_SLOTS``), so memory and processes add up across containers and the node's
own NVML view. An unknown device fails the create, as it does with the real toolkit.

Known differences from the real toolkit: no ``/dev/nvidia*`` device nodes, no ldconfig hook (the libraries go
straight into the loader's default directory), no ``NVIDIA_DRIVER_CAPABILITIES`` filtering. The device-list
decision is recorded in the spec as the annotation ``hami.e2e/toolkit-double-devices``.

Configuration: ``$XDG_CONFIG_HOME/nvidia-container-runtime/config.toml`` (the real toolkit's lookup; default
``/etc/nvidia-container-runtime/config.toml``), the real keys plus a ``[fake-driver]`` table for the double::

    accept-nvidia-visible-devices-envvar-when-unprivileged = true
    accept-nvidia-visible-devices-as-volume-mounts = false
    [nvidia-container-runtime]
    debug = "/path/to/log"          # one JSON line per decision
    runtimes = ["/usr/sbin/runc"]   # the first that exists is exec'd
    [fake-driver]
    libraries = ["/abs/libcuda.so.1", "/abs/libnvidia-ml.so.1"]
    library-dir = "/usr/lib/x86_64-linux-gnu"
    config = "/abs/node/fake-gpus.conf"   # KEY=VALUE lines of the fake driver (FAKE_GPU_COUNT, ...)
    state-file = "/abs/node/gpu.state"
    host-proc = true

Standard library only (it runs under the system python3 for every runc call the containerd shim makes).
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEVICE_LIST_ROOT = "/var/run/nvidia-container-devices"
DRIVER_DIR_IN_CONTAINER = "/run/hami-fake-driver"
DEVICES_ANNOTATION = "hami.e2e/toolkit-double-devices"
CAP_SYS_ADMIN = "CAP_SYS_ADMIN"
# runc's global flags that take a value (before the command).
_RUNC_VALUE_FLAGS = frozenset({"--root", "--log", "--log-format", "--criu", "--rootless"})


@dataclass(frozen=True)
class ToolkitConfig:
    """The double's reading of config.toml."""

    accept_envvar_unprivileged: bool = True
    accept_volume_mounts: bool = False
    runtimes: tuple[str, ...] = ("/usr/sbin/runc", "/usr/bin/runc")
    debug_log: str | None = None
    libraries: tuple[str, ...] = ()
    library_dir: str = "/usr/lib/x86_64-linux-gnu"
    fake_config: str | None = None
    state_file: str | None = None
    host_proc: bool = True

    @classmethod
    def from_toml(cls, doc: Mapping[str, Any]) -> ToolkitConfig:
        runtime = doc.get("nvidia-container-runtime", {})
        fake = doc.get("fake-driver", {})
        return cls(
            accept_envvar_unprivileged=bool(doc.get("accept-nvidia-visible-devices-envvar-when-unprivileged", True)),
            accept_volume_mounts=bool(doc.get("accept-nvidia-visible-devices-as-volume-mounts", False)),
            runtimes=tuple(runtime.get("runtimes", cls.runtimes)),
            debug_log=runtime.get("debug"),
            libraries=tuple(fake.get("libraries", ())),
            library_dir=str(fake.get("library-dir", cls.library_dir)),
            fake_config=fake.get("config"),
            state_file=fake.get("state-file"),
            host_proc=bool(fake.get("host-proc", True)),
        )

    @classmethod
    def load(cls, environ: Mapping[str, str]) -> ToolkitConfig:
        base = environ.get("XDG_CONFIG_HOME") or "/etc"
        path = Path(base) / "nvidia-container-runtime" / "config.toml"
        if not path.is_file():
            return cls()
        with path.open("rb") as f:
            return cls.from_toml(tomllib.load(f))


@dataclass(frozen=True)
class Decision:
    """Which devices the container asked for, and how (``None``: not a GPU container)."""

    devices: tuple[str, ...] | None
    source: str
    notes: tuple[str, ...] = field(default=())


def _env(spec: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in spec.get("process", {}).get("env", []) or []:
        key, _, value = str(item).partition("=")
        out[key] = value  # the last one wins, as in execve's consumers
    return out


def is_privileged(spec: Mapping[str, Any]) -> bool:
    """The real toolkit's test: CAP_SYS_ADMIN in the process's bounding set."""
    bounding = spec.get("process", {}).get("capabilities", {}).get("bounding", []) or []
    return CAP_SYS_ADMIN in bounding


def devices_from_mounts(spec: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for mount in spec.get("mounts", []) or []:
        destination = str(mount.get("destination", ""))
        if destination.startswith(DEVICE_LIST_ROOT + "/"):
            name = destination[len(DEVICE_LIST_ROOT) + 1 :].strip("/")
            if name:
                out.append(name)
    return tuple(out)


def decide(spec: Mapping[str, Any], config: ToolkitConfig) -> Decision:
    """The real toolkit's device-list rules (see the module docstring)."""
    if config.accept_volume_mounts:
        from_mounts = devices_from_mounts(spec)
        if from_mounts:
            return Decision(from_mounts, "volume-mounts")
    env = _env(spec)
    value = env.get("NVIDIA_VISIBLE_DEVICES")
    if value is None or value.strip() in ("", "void"):
        return Decision(None, "unset")
    if not (config.accept_envvar_unprivileged or is_privileged(spec)):
        return Decision(None, "envvar-ignored", ("NVIDIA_VISIBLE_DEVICES ignored: unprivileged container",))
    if value.strip() == "none":
        return Decision((), "envvar")
    return Decision(tuple(d.strip() for d in value.split(",") if d.strip()), "envvar")


def _bind(source: str, destination: str, *, read_only: bool) -> dict[str, Any]:
    options = ["rbind", "nosuid", "nodev", "ro" if read_only else "rw"]
    return {"destination": destination, "type": "bind", "source": source, "options": options}


# Per-GPU settings of the fake driver whose defaults depend on the GPU's index (hamicore/tests/README.md).
_INDEXED_DEFAULTS: dict[str, Callable[[int], str]] = {
    "FAKE_GPU_UUIDS": lambda i: f"GPU-fa4e0000-0000-4000-8000-{i:012x}",
    "FAKE_GPU_MINOR_NUMBERS": str,
    "FAKE_GPU_SERIALS": lambda i: f"FAKE{i:08d}",
    "FAKE_GPU_PCI_BUS_IDS": lambda i: f"00000000:{0x10 + i:02x}:00",
    "FAKE_GPU_STATE_SLOTS": str,
}
# Per-GPU settings where one item applies to every GPU.
_BROADCAST = ("FAKE_GPU_NAMES", "FAKE_GPU_MEMORY_MIB", "FAKE_GPU_SM_COUNT", "FAKE_GPU_NUMA_NODES",
              "FAKE_GPU_COMPUTE_CAPABILITY", "FAKE_GPU_MIG_MODE", "FAKE_NVML_MIG_NEEDS_RESET")  # fmt: skip


class UnknownDeviceError(ValueError):
    """NVIDIA_VISIBLE_DEVICES names a device the node does not have (the real toolkit fails the create too)."""


def parse_fake_config(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _items(value: str | None) -> list[str]:
    return [item.strip() for item in value.split(",")] if value else []


def select_devices(node: Mapping[str, str], devices: Sequence[str]) -> list[int]:
    """Node GPU indexes named by a device list (``all``, indexes, UUIDs or unique UUID prefixes), in node order."""
    count = int(node.get("FAKE_GPU_COUNT", "1"))
    uuids = _items(node.get("FAKE_GPU_UUIDS"))
    uuids += [_INDEXED_DEFAULTS["FAKE_GPU_UUIDS"](i) for i in range(len(uuids), count)]
    chosen: set[int] = set()
    for device in devices:
        if device == "all":
            chosen.update(range(count))
        elif device.isdigit() and int(device) < count:
            chosen.add(int(device))
        elif device[:4].upper() == "MIG-":
            chosen.add(_mig_parent(device, uuids[:count]))
        else:
            matches = [i for i, u in enumerate(uuids[:count]) if u.lower().startswith(device.lower())]
            if len(matches) != 1:
                raise UnknownDeviceError(f"unknown device {device!r} (node GPUs: {', '.join(uuids[:count])})")
            chosen.add(matches[0])
    return sorted(chosen)


def _mig_parent(device: str, uuids: Sequence[str]) -> int:
    """The node GPU of a MIG device. hamicore's fake NVML names a MIG device after its parent: the parent's UUID
    with the second group replaced by the GPU- and compute-instance IDs (hamicore/tests/README.md, MIG). The
    container then gets the whole parent GPU: an approximation, as the fake driver has no per-instance view (the
    real toolkit exposes the instance alone)."""
    groups = device[4:].lower().split("-")
    matches = [
        i
        for i, uuid in enumerate(uuids)
        if len(groups) == 5 and (parent := uuid[4:].lower().split("-"))[:1] + parent[2:] == groups[:1] + groups[2:]
    ]
    if len(matches) != 1:
        raise UnknownDeviceError(f"unknown MIG device {device!r} (node GPUs: {', '.join(uuids)})")
    return matches[0]


def container_fake_config(node_config: str, config: ToolkitConfig, devices: Sequence[str] = ("all",)) -> str:
    """The fake driver's description for a container: only the visible GPUs of the node (as the real toolkit gives
    a container only their device nodes), each keeping its node device in the shared state
    (FAKE_GPU_STATE_SLOTS), with the paths the container sees."""
    node = parse_fake_config(node_config)
    count = int(node.get("FAKE_GPU_COUNT", "1"))
    chosen = select_devices(node, devices)
    out = {k: v for k, v in node.items() if k not in ("FAKE_GPU_STATE_FILE", "FAKE_GPU_HOST_PROC")}
    out["FAKE_GPU_COUNT"] = str(len(chosen))
    for key, default in _INDEXED_DEFAULTS.items():
        items = _items(node.get(key))
        if len(items) == 1 and key not in ("FAKE_GPU_UUIDS", "FAKE_GPU_STATE_SLOTS"):
            continue  # one item: the fake applies it to every GPU
        items += [default(i) for i in range(len(items), count)]
        out[key] = ",".join(items[i] for i in chosen)
    for key in _BROADCAST:
        items = _items(node.get(key))
        if len(items) > 1:
            out[key] = ",".join(items[i] for i in chosen if i < len(items))
    if config.state_file:
        out["FAKE_GPU_STATE_FILE"] = f"{DRIVER_DIR_IN_CONTAINER}/gpu.state"
    if config.host_proc:
        out["FAKE_GPU_HOST_PROC"] = f"{DRIVER_DIR_IN_CONTAINER}/host-proc"
    return "".join(f"{k}={v}\n" for k, v in out.items())


def modify_spec(spec: dict[str, Any], config: ToolkitConfig, container_config_path: str | None) -> Decision:
    """Add the fake driver to a GPU container's spec in place; returns the decision. ``container_config_path`` is
    where the container's copy of the fake-GPU description was written (None: no description to mount)."""
    decision = decide(spec, config)
    if decision.devices is None:
        return decision
    mounts: list[dict[str, Any]] = spec.setdefault("mounts", [])
    for library in config.libraries:
        mounts.append(_bind(library, f"{config.library_dir}/{Path(library).name}", read_only=True))
    env_add = []
    if container_config_path is not None:
        mounts.append(_bind(container_config_path, f"{DRIVER_DIR_IN_CONTAINER}/gpus.conf", read_only=True))
        env_add.append(f"FAKE_NVML_CONFIG={DRIVER_DIR_IN_CONTAINER}/gpus.conf")
    if config.state_file:
        mounts.append(_bind(config.state_file, f"{DRIVER_DIR_IN_CONTAINER}/gpu.state", read_only=False))
    if config.host_proc:
        mounts.append(_bind("/proc", f"{DRIVER_DIR_IN_CONTAINER}/host-proc", read_only=True))
    process = spec.setdefault("process", {})
    process["env"] = [*(process.get("env") or []), *env_add]
    spec.setdefault("annotations", {})[DEVICES_ANNOTATION] = ",".join(decision.devices) or "none"
    return decision


def runc_command(argv: Sequence[str]) -> tuple[str | None, str]:
    """(command, bundle dir) from runc's argv (without argv[0]); the bundle defaults to the working directory."""
    command: str | None = None
    bundle = "."
    i = 0
    while i < len(argv):
        arg = argv[i]
        if command is None:
            if arg in _RUNC_VALUE_FLAGS:
                i += 2
                continue
            if not arg.startswith("-"):
                command = arg
        elif arg in ("--bundle", "-b") and i + 1 < len(argv):
            bundle = argv[i + 1]
            i += 1
        elif arg.startswith("--bundle="):
            bundle = arg.partition("=")[2]
        i += 1
    return command, bundle


def _log(config: ToolkitConfig, event: str, **fields: Any) -> None:
    if not config.debug_log:
        return
    with open(config.debug_log, "a") as f:
        f.write(json.dumps({"ts": time.time(), "event": event, **fields}) + "\n")


def prepare_create(bundle: Path, config: ToolkitConfig) -> Decision:
    spec_path = bundle / "config.json"
    spec: dict[str, Any] = json.loads(spec_path.read_text())
    container_config: str | None = None
    devices = decide(spec, config).devices
    if config.fake_config and devices is not None:
        copy = bundle / "hami-fake-gpus.conf"
        copy.write_text(container_fake_config(Path(config.fake_config).read_text(), config, devices))
        container_config = str(copy)
    decision = modify_spec(spec, config, container_config)
    if decision.devices is not None:
        tmp = spec_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(spec))
        tmp.replace(spec_path)
    return decision


def main(argv: Sequence[str]) -> None:
    config = ToolkitConfig.load(os.environ)
    command, bundle = runc_command(argv[1:])
    if command == "create":
        try:
            decision = prepare_create(Path(bundle), config)
            _log(config, "create", bundle=bundle, devices=decision.devices, source=decision.source)
        except Exception as exc:  # the real runtime fails the create with its error: so does the double
            _log(config, "create_failed", bundle=bundle, error=repr(exc))
            print(f"nvidia-container-runtime (test double): {exc}", file=sys.stderr)
            sys.exit(1)
    runtime = next((r for r in config.runtimes if os.access(r, os.X_OK)), None)
    if runtime is None:
        print(f"nvidia-container-runtime (test double): none of {config.runtimes} is executable", file=sys.stderr)
        sys.exit(1)
    os.execv(runtime, [runtime, *argv[1:]])


if __name__ == "__main__":
    main(sys.argv)

"""A device-plugin process's NVML driver, for test_nvml_mig.py: runs ``NvmlDriver`` MIG calls given as JSON on the
command line against hamicore's fake NVML (a test double; the environment configures its GPUs) and prints one JSON
result per call: ``{"ok": value}`` or ``{"err": NVML return code, "message": ...}``.

A call is ``[method, args...]``; ``["raw_gpu_instance", gpu_index, profile_id]`` creates a GPU instance without a
compute instance through pynvml, as another NVML client could."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
from typing import Any

import pynvml
from hami_device_plugin.adapters.nvml import NvmlDriver, NvmlError


def plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


def main() -> None:
    driver = NvmlDriver(pathlib.Path(os.environ["HAMI_TEST_NVML_LIBRARY"])).open()
    gpus = driver.discover()
    results: list[dict[str, Any]] = []
    for call in json.loads(sys.argv[1]):
        name, args = call[0], call[1:]
        try:
            if name == "raw_gpu_instance":
                pynvml.nvmlDeviceCreateGpuInstance(pynvml.nvmlDeviceGetHandleByIndex(args[0]), args[1])
                results.append({"ok": None})
                continue
            # "gpu<i>" names the i-th GPU's UUID
            args = [
                gpus[int(a[3:])].uuid if isinstance(a, str) and a[:3] == "gpu" and a[3:].isdigit() else a for a in args
            ]
            results.append({"ok": plain(getattr(driver, name)(*args))})
        except NvmlError as exc:
            results.append({"err": exc.code, "message": str(exc)})
    driver.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()

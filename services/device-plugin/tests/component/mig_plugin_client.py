"""A device-plugin process in MIG mode, for test_mig_dynamic_nvml.py: the plugin's dynamic MIG (app/mig.py through
DevicePluginState's Allocate, tests/mig_node.py) over the real NVML driver on hamicore's fake NVML (a test double; the
environment configures its GPUs and the file its MIG state is shared through), with the pods given as JSON.

Argument: ``{"pods": [pod JSON], "steps": [[step, args...]]}``; steps: ``["adopt"]``, ``["allocate", [device IDs]]``,
``["flush"]``, ``["delete", pod name]``, ``["reconcile"]``. Prints ``{"answers": [...], "pods": {name: pod JSON},
"instances": [...], "managed": n, "info": [label sets]}``; an Allocate refused is ``{"refused": reason}``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
import sys
import tempfile
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))

from hami_device_plugin.adapters.nvml import NvmlDriver
from hami_device_plugin.app.plugin import AllocateError
from mig_node import MigNode


async def main() -> None:
    spec = json.loads(sys.argv[1])
    driver = NvmlDriver(pathlib.Path(os.environ["HAMI_TEST_NVML_LIBRARY"])).open()
    gpus = driver.discover()
    node = MigNode(pathlib.Path(tempfile.mkdtemp()), driver, spec["pods"], gpus=gpus)
    node.list_pods()
    answers: list[Any] = []
    for step, *args in spec["steps"]:
        if step == "adopt":
            await node.mig.adopt()
        elif step == "allocate":
            try:
                answer = await node.state.allocate(args[0])
                answers.append({"envs": dict(answer.envs), "mounts": len(answer.mounts)})
            except AllocateError as exc:
                answers.append({"refused": str(exc)})
        elif step == "flush":
            await node.flush()
        elif step == "delete":
            node.cache.apply("DELETED", node.api.pods.pop(args[0]))
        elif step == "reconcile":
            await node.mig.reconcile()
    instances = [dataclasses.asdict(i) for g in gpus for i in driver.mig_instances(g.uuid)]
    print(
        json.dumps(
            {
                "answers": answers,
                "pods": node.api.pods,
                "instances": instances,
                "managed": len(node.mig.managed()),
                "info": node.info_samples(),
            }
        )
    )
    driver.close()


if __name__ == "__main__":
    asyncio.run(main())

"""A Vulkan application for the layer tests: runs a script of steps through the real Vulkan loader.

Run as a subprocess by the tests (every scenario needs its own environment: the loader and the layer read
theirs once per process). It prints one JSON document on stdout: what the instance saw (heaps through the
three memory-properties entry points, VK_EXT_memory_budget, deviceUUID, whether libvgpu_vk.so is mapped)
and the outcome of each step. Steps (argv, in order):

    alloc:<MiB>        vkAllocateMemory from the first device-local memory type ("ok" or the VkResult name)
    alloc_bytes:<n>    the same with a size in bytes
    free:<k>           vkFreeMemory of the k-th allocation (0-based, in step order)
    recreate_device    vkDestroyDevice without freeing the allocations, then a new device
    race:<n>:<MiB>     n threads allocate blocks of MiB until refused, then free them all: the count admitted
    other:<step>       run alloc/free/query on a second VkInstance and VkDevice of the same process
    query              heaps and VK_EXT_memory_budget now
    cuda_alloc:<MiB>   cuMemAlloc through the CUDA driver API (cuda-bindings; libcuda.so.1 from the loader path)
    cuda_free:<k>      cuMemFree of the k-th CUDA allocation
    signal:<path>      create the file (tells another process we got here)
    wait:<path>        wait until the file exists (at most 120 s)

Options: --api 1.0|1.1|1.3 (instance apiVersion), --validation (enable VK_LAYER_KHRONOS_validation and
capture its messages with VK_EXT_debug_utils), --budget-ext (enable VK_EXT_memory_budget on the device),
--no-properties2 (do not enable VK_KHR_get_physical_device_properties2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

import vulkan as vk

LAYER_LIBRARY = "libvgpu_vk.so"


def layer_library_mapped() -> bool:
    with open("/proc/self/maps", encoding="utf-8") as maps:
        return any(line.rstrip().endswith("/" + LAYER_LIBRARY) for line in maps)


def result_name(error: Exception) -> str:
    names = {
        vk.VkErrorOutOfDeviceMemory: "VK_ERROR_OUT_OF_DEVICE_MEMORY",
        vk.VkErrorOutOfHostMemory: "VK_ERROR_OUT_OF_HOST_MEMORY",
    }
    return names.get(type(error), type(error).__name__)


class Probe:
    """One instance and one device on the first physical device, plus the script's state."""

    def __init__(self, api: str, validation: bool, budget_ext: bool, properties2: bool = True) -> None:
        major, minor = (int(part) for part in api.split("."))
        self.api_minor = minor
        self.messages: list[dict[str, Any]] = []
        instance_extensions: list[str] = []
        layers: list[str] = []
        next_chain: Any = None
        # Enabled at every version so the ...2KHR alias is exercised next to the core entry point; left out
        # (--no-properties2) to play a Vulkan 1.0 application that knows nothing newer.
        self.properties2 = properties2
        if properties2:
            instance_extensions.append("VK_KHR_get_physical_device_properties2")
        if validation:
            layers.append("VK_LAYER_KHRONOS_validation")
            instance_extensions.append(vk.VK_EXT_DEBUG_UTILS_EXTENSION_NAME)
            next_chain = self._messenger_info()
        app = vk.VkApplicationInfo(
            sType=vk.VK_STRUCTURE_TYPE_APPLICATION_INFO,
            pApplicationName="hami-vk-probe",
            apiVersion=vk.VK_MAKE_VERSION(major, minor, 0),
        )
        self.instance = vk.vkCreateInstance(
            vk.VkInstanceCreateInfo(
                sType=vk.VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
                pNext=next_chain,
                pApplicationInfo=app,
                ppEnabledLayerNames=layers,
                ppEnabledExtensionNames=instance_extensions,
            ),
            None,
        )
        self.messenger = None
        if validation:
            create = vk.vkGetInstanceProcAddr(self.instance, "vkCreateDebugUtilsMessengerEXT")
            self.messenger = create(self.instance, self._messenger_info(), None)
        self.physical = vk.vkEnumeratePhysicalDevices(self.instance)[0]
        extensions = [e.extensionName for e in vk.vkEnumerateDeviceExtensionProperties(self.physical, None)]
        self.budget_ext_listed = vk.VK_EXT_MEMORY_BUDGET_EXTENSION_NAME in extensions
        self.layer_device_extensions = [
            e.extensionName for e in vk.vkEnumerateDeviceExtensionProperties(self.physical, "VK_LAYER_HAMI_vgpu")
        ]
        self.device_extensions = [vk.VK_EXT_MEMORY_BUDGET_EXTENSION_NAME] if budget_ext else []
        self.device = self._create_device()
        self.memory_type = self._device_local_type()
        self.allocations: list[Any] = []
        self.cuda_allocations: list[int] = []
        self.cuda_context: Any = None

    def _create_device(self) -> Any:
        queue = vk.VkDeviceQueueCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
            queueFamilyIndex=0,
            queueCount=1,
            pQueuePriorities=[1.0],
        )
        return vk.vkCreateDevice(
            self.physical,
            vk.VkDeviceCreateInfo(
                sType=vk.VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                pQueueCreateInfos=[queue],
                ppEnabledExtensionNames=self.device_extensions,
            ),
            None,
        )

    def recreate_device(self) -> str:
        vk.vkDestroyDevice(self.device, None)  # the driver frees what the application left allocated
        self.allocations = [None for _ in self.allocations]
        self.device = self._create_device()
        return "ok"

    def _messenger_info(self) -> Any:
        def callback(severity: int, types: int, data: Any, user: Any) -> int:
            self.messages.append(
                {
                    "severity": int(severity),
                    "error": bool(severity & vk.VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT),
                    "id": vk.ffi.string(data.pMessageIdName).decode() if data.pMessageIdName else "",
                    "message": vk.ffi.string(data.pMessage).decode() if data.pMessage else "",
                }
            )
            return int(vk.VK_FALSE)

        return vk.VkDebugUtilsMessengerCreateInfoEXT(
            sType=vk.VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
            messageSeverity=vk.VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT
            | vk.VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
            messageType=vk.VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT
            | vk.VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT
            | vk.VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
            pfnUserCallback=callback,
        )

    def _device_local_type(self) -> int:
        properties = vk.vkGetPhysicalDeviceMemoryProperties(self.physical)
        for index in range(properties.memoryTypeCount):
            heap = properties.memoryHeaps[properties.memoryTypes[index].heapIndex]
            if heap.flags & vk.VK_MEMORY_HEAP_DEVICE_LOCAL_BIT:
                return index
        raise SystemExit("vk_probe: the physical device has no device-local memory type")

    def uuid(self) -> str | None:
        if not self.properties2 and self.api_minor == 0:
            return None
        ids = vk.VkPhysicalDeviceIDProperties(sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES)
        properties = vk.VkPhysicalDeviceProperties2(sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, pNext=ids)
        if self.api_minor == 0:
            get = vk.vkGetInstanceProcAddr(self.instance, "vkGetPhysicalDeviceProperties2KHR")
            get(self.physical, properties)
        else:
            vk.vkGetPhysicalDeviceProperties2(self.physical, properties)
        return bytes(ids.deviceUUID).hex()

    def query(self) -> dict[str, Any]:
        v1 = vk.vkGetPhysicalDeviceMemoryProperties(self.physical)
        report: dict[str, Any] = {"heaps_v1": [v1.memoryHeaps[i].size for i in range(v1.memoryHeapCount)]}
        entry_points: list[tuple[str, Any]] = []
        if self.properties2:
            get_khr = vk.vkGetInstanceProcAddr(self.instance, "vkGetPhysicalDeviceMemoryProperties2KHR")
            entry_points.append(("v2khr", get_khr))
        if self.api_minor >= 1:
            entry_points.insert(0, ("v2", vk.vkGetPhysicalDeviceMemoryProperties2))
        for key, get in entry_points:
            budget = vk.VkPhysicalDeviceMemoryBudgetPropertiesEXT(
                sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT
            )
            properties = vk.VkPhysicalDeviceMemoryProperties2(
                sType=vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2, pNext=budget
            )
            get(self.physical, properties)
            memory = properties.memoryProperties
            count = memory.memoryHeapCount
            report[f"heaps_{key}"] = [memory.memoryHeaps[i].size for i in range(count)]
            report[f"budget_{key}"] = [budget.heapBudget[i] for i in range(count)]
            report[f"usage_{key}"] = [budget.heapUsage[i] for i in range(count)]
        return report

    def alloc(self, size: int) -> str:
        info = vk.VkMemoryAllocateInfo(
            sType=vk.VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, allocationSize=size, memoryTypeIndex=self.memory_type
        )
        try:
            self.allocations.append(vk.vkAllocateMemory(self.device, info, None))
        except vk.VkError as error:
            self.allocations.append(None)
            return result_name(error)
        return "ok"

    def race(self, threads: int, size: int) -> dict[str, Any]:
        """Threads allocating at once (cffi releases the GIL during the calls, so they race in the layer)."""
        info = vk.VkMemoryAllocateInfo(
            sType=vk.VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, allocationSize=size, memoryTypeIndex=self.memory_type
        )
        start = threading.Barrier(threads)
        held: list[list[Any]] = [[] for _ in range(threads)]
        errors: list[str] = []

        def worker(index: int) -> None:
            start.wait()
            while True:
                try:
                    held[index].append(vk.vkAllocateMemory(self.device, info, None))
                except vk.VkErrorOutOfDeviceMemory:
                    return
                except vk.VkError as error:
                    errors.append(result_name(error))
                    return

        workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        admitted = sum(len(blocks) for blocks in held)
        frees = [threading.Thread(target=self._free_all, args=(blocks,)) for blocks in held]
        for thread in frees:
            thread.start()
        for thread in frees:
            thread.join()
        return {"admitted": admitted, "errors": errors}

    def _free_all(self, blocks: list[Any]) -> None:
        for memory in blocks:
            vk.vkFreeMemory(self.device, memory, None)

    def free(self, index: int) -> str:
        memory = self.allocations[index]
        if memory is None:
            return "nothing to free"
        vk.vkFreeMemory(self.device, memory, None)
        self.allocations[index] = None
        return "ok"

    def cuda_alloc(self, size: int) -> str:
        from cuda.bindings import driver  # only the mixed tests need the CUDA driver

        if self.cuda_context is None:
            check(driver.cuInit(0))
            device = check(driver.cuDeviceGet(0))
            self.cuda_context = check(driver.cuDevicePrimaryCtxRetain(device))
            check(driver.cuCtxSetCurrent(self.cuda_context))
        error, pointer = driver.cuMemAlloc(size)
        self.cuda_allocations.append(int(pointer) if error == driver.CUresult.CUDA_SUCCESS else 0)
        return "ok" if error == driver.CUresult.CUDA_SUCCESS else error.name

    def cuda_free(self, index: int) -> str:
        from cuda.bindings import driver

        check(driver.cuMemFree(self.cuda_allocations[index]))
        self.cuda_allocations[index] = 0
        return "ok"

    def close(self) -> None:
        for memory in self.allocations:
            if memory is not None:
                vk.vkFreeMemory(self.device, memory, None)
        vk.vkDestroyDevice(self.device, None)
        if self.messenger is not None:
            destroy = vk.vkGetInstanceProcAddr(self.instance, "vkDestroyDebugUtilsMessengerEXT")
            destroy(self.instance, self.messenger, None)
        vk.vkDestroyInstance(self.instance, None)


def check(result: Any) -> Any:
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise SystemExit(f"vk_probe: CUDA call failed: {error!r}")
    return values[0] if values else None


def wait_for(path: str) -> str:
    deadline = time.monotonic() + 120
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(0.05)
    return "ok"


def run(args: argparse.Namespace) -> dict[str, Any]:
    probe = Probe(args.api, args.validation, args.budget_ext, properties2=not args.no_properties2)
    other: Probe | None = None
    report: dict[str, Any] = {
        "layer_loaded": layer_library_mapped(),
        "uuid": probe.uuid(),
        "budget_ext_listed": probe.budget_ext_listed,
        "layer_device_extensions": probe.layer_device_extensions,
        "initial": probe.query(),
        "steps": [],
    }
    mib = 1 << 20
    for step in args.steps:
        verb, _, argument = step.partition(":")
        target = probe
        if verb == "other":
            if other is None:
                other = Probe(args.api, args.validation, args.budget_ext, properties2=not args.no_properties2)
            target = other
            verb, _, argument = argument.partition(":")
        outcome: Any
        if target is other and verb not in ("alloc", "free", "query"):
            raise SystemExit(f"vk_probe: {step!r}: only alloc, free and query run on the other instance")
        if verb == "alloc":
            outcome = target.alloc(int(argument) * mib)
        elif verb == "alloc_bytes":
            outcome = probe.alloc(int(argument))
        elif verb == "free":
            outcome = target.free(int(argument))
        elif verb == "race":
            threads, size = argument.split(":")
            outcome = probe.race(int(threads), int(size) * mib)
        elif verb == "recreate_device":
            outcome = probe.recreate_device()
        elif verb == "query":
            outcome = target.query()
        elif verb == "cuda_alloc":
            outcome = probe.cuda_alloc(int(argument) * mib)
        elif verb == "cuda_free":
            outcome = probe.cuda_free(int(argument))
        elif verb == "signal":
            with open(argument, "w", encoding="utf-8"):
                pass
            outcome = "ok"
        elif verb == "wait":
            outcome = wait_for(argument)
        else:
            raise SystemExit(f"vk_probe: unknown step {step!r}")
        report["steps"].append({"step": step, "outcome": outcome})
    if other is not None:
        other.close()
    probe.close()
    report["validation_messages"] = probe.messages + (other.messages if other is not None else [])
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", default="1.3", choices=["1.0", "1.1", "1.3"])
    parser.add_argument("--validation", action="store_true")
    parser.add_argument("--budget-ext", action="store_true")
    parser.add_argument(
        "--no-properties2", action="store_true", help="do not enable VK_KHR_get_physical_device_properties2"
    )
    parser.add_argument("steps", nargs="*")
    json.dump(run(parser.parse_args()), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

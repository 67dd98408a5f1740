/* hvk_records: the layer's records (instance, physical device, device) and their maps, implemented in
 * hvk_dispatch.c. Used by the loader glue (hvk_layer.c) and the memory hooks (hvk_memory.c); includes nothing
 * of either, so the dependencies run one way: hvk_layer.c -> hvk_memory.h -> hvk_records.h.
 *
 * Records are keyed by dispatch key (the loader's dispatch-table pointer at the start of every dispatchable
 * handle): a VkPhysicalDevice shares its VkInstance's key, so one map answers both. Physical-device records
 * hang off their instance, keyed by handle. Everything is created at vkCreate* and freed at vkDestroy*. */
#ifndef HVK_RECORDS_H
#define HVK_RECORDS_H

#define VK_NO_PROTOTYPES
#include <vulkan/vulkan.h>
#include <vulkan/vk_layer.h>

#include "hvk_budget.h"
#include "hvk_map.h"
#include "hvk_policy.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

typedef struct hvk_instance {
    VkInstance handle;
    const hvk_budget_ops *budget;
    PFN_vkGetInstanceProcAddr next_get_instance_proc_addr;
    PFN_vkDestroyInstance next_destroy_instance;
    PFN_vkEnumerateDeviceExtensionProperties next_enumerate_device_extension_properties;
    PFN_vkGetPhysicalDeviceMemoryProperties next_get_memory_properties;
    PFN_vkGetPhysicalDeviceMemoryProperties2 next_get_memory_properties2;     /* NULL below Vulkan 1.1 */
    PFN_vkGetPhysicalDeviceMemoryProperties2 next_get_memory_properties2_khr; /* NULL without the extension */
    PFN_vkGetPhysicalDeviceProperties2 next_get_properties2; /* core or KHR; reads deviceUUID */
    hvk_map physical_devices; /* VkPhysicalDevice -> hvk_physical_device*, under hvk_records_lock */
} hvk_instance;

typedef struct hvk_physical_device {
    VkPhysicalDevice handle;
    int limit_index;                           /* -1: not one of the container's GPUs (not charged) */
    unsigned char uuid[VK_UUID_SIZE];
    VkPhysicalDeviceMemoryProperties driver_memory; /* as the driver reports it, unclamped */
    _Atomic uint64_t own_heap_usage[VK_MAX_MEMORY_HEAPS]; /* bytes this process holds per heap */
} hvk_physical_device;

typedef struct hvk_device {
    VkDevice handle;
    hvk_instance *instance;
    hvk_physical_device *physical;
    PFN_vkGetDeviceProcAddr next_get_device_proc_addr;
    PFN_vkDestroyDevice next_destroy_device;
    PFN_vkAllocateMemory next_allocate_memory;
    PFN_vkFreeMemory next_free_memory;
    pthread_mutex_t memory_lock; /* guards `memory` only; never held across a driver call */
    hvk_map memory;              /* VkDeviceMemory -> hvk_memory_record packed by hvk_memory.c */
} hvk_device;

static inline uint64_t hvk_dispatch_key(const void *handle)
{
    return (uint64_t)(uintptr_t)(*(void *const *)handle);
}

/* Record maps (hvk_dispatch.c). Lookups return NULL for unknown handles. */
int hvk_instance_insert(hvk_instance *instance);
hvk_instance *hvk_instance_lookup(const void *dispatchable);
hvk_instance *hvk_instance_remove(VkInstance instance);
int hvk_device_insert(hvk_device *device);
hvk_device *hvk_device_lookup(VkDevice device);
hvk_device *hvk_device_remove(VkDevice device);
/* The physical-device record, created on first use (reads the UUID and heaps from the next layer and maps
 * the UUID to a limit index). NULL when the instance is unknown or memory runs out. */
hvk_physical_device *hvk_physical_device_get(VkPhysicalDevice physical_device);
void hvk_instance_free(hvk_instance *instance);

/* Reads the container's slice of a physical device's GPU from the accounting client. */
hvk_slice hvk_slice_read(const hvk_instance *instance, const hvk_physical_device *physical);

#endif

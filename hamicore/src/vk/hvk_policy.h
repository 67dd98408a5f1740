/* hvk_policy: the layer's memory policy as pure functions on plain Vulkan structs (no dispatch, no I/O).
 *
 * What a container sees of a GPU with a limit: every device-local heap at most the limit, and a
 * VK_EXT_memory_budget view whose headroom (heapBudget - heapUsage) is never more than what is left of
 * the limit. What is charged: allocations from memory types whose heap is device-local. */
#ifndef HVK_POLICY_H
#define HVK_POLICY_H

#define VK_NO_PROTOTYPES
#include <vulkan/vulkan.h>

#include <stdbool.h>
#include <stdint.h>

/* The container's budget for one GPU, as read from the accounting client. */
typedef struct hvk_slice {
    bool mapped;         /* the physical device is one of the container's GPUs */
    uint64_t limit;      /* bytes; 0 = no limit */
    uint64_t used_total; /* bytes charged by all processes of the container (CUDA and Vulkan) */
} hvk_slice;

/* True when allocations from memory type `type_index` are charged (its heap is device-local). */
bool hvk_memory_type_charged(const VkPhysicalDeviceMemoryProperties *props, uint32_t type_index);

/* Clamps device-local heaps to the slice's limit (no-op when not mapped or no limit). */
void hvk_clamp_heaps(VkPhysicalDeviceMemoryProperties *props, const hvk_slice *slice);

/* Fills a VK_EXT_memory_budget struct.
 * driver_props: the heaps as the driver reports them (before clamping).
 * own_heap_usage: bytes this process holds through Vulkan, per heap.
 * budget: on entry what the driver wrote (all zero when the driver does not implement the extension);
 * on return the container's view:
 *   device-local heaps of a mapped GPU with a limit, the largest of them carrying the usage of the
 *   container's other allocations: heapUsage = own usage [+ others], heapBudget = min(clamped size,
 *   heapUsage + (limit - used_total), heapUsage + driver headroom when the driver reported one);
 *   other heaps: the driver's numbers, or (driver silent) heapBudget = heap size, heapUsage = own usage.
 * Entries past memoryHeapCount are zeroed, as the extension requires. */
void hvk_fill_budget(const VkPhysicalDeviceMemoryProperties *driver_props, const hvk_slice *slice,
                     const uint64_t own_heap_usage[VK_MAX_MEMORY_HEAPS],
                     VkPhysicalDeviceMemoryBudgetPropertiesEXT *budget);

#endif

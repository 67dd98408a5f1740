/* hvk_policy: see hvk_policy.h. Pure functions: no globals, no allocation, no I/O. */
#include "hvk_policy.h"


bool hvk_memory_type_charged(const VkPhysicalDeviceMemoryProperties *props, uint32_t type_index)
{
    if (type_index >= props->memoryTypeCount || type_index >= VK_MAX_MEMORY_TYPES)
        return false;
    uint32_t heap = props->memoryTypes[type_index].heapIndex;
    if (heap >= props->memoryHeapCount || heap >= VK_MAX_MEMORY_HEAPS)
        return false;
    return (props->memoryHeaps[heap].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) != 0;
}

static bool hvk_slice_limits(const hvk_slice *slice)
{
    return slice->mapped && slice->limit != 0;
}

void hvk_clamp_heaps(VkPhysicalDeviceMemoryProperties *props, const hvk_slice *slice)
{
    if (!hvk_slice_limits(slice))
        return;
    for (uint32_t i = 0; i < props->memoryHeapCount && i < VK_MAX_MEMORY_HEAPS; i++) {
        VkMemoryHeap *heap = &props->memoryHeaps[i];
        if ((heap->flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) && heap->size > slice->limit)
            heap->size = slice->limit;
    }
}

static uint64_t hvk_min(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static uint64_t hvk_saturating_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

void hvk_fill_budget(const VkPhysicalDeviceMemoryProperties *driver_props, const hvk_slice *slice,
                     const uint64_t own_heap_usage[VK_MAX_MEMORY_HEAPS],
                     VkPhysicalDeviceMemoryBudgetPropertiesEXT *budget)
{
    uint32_t heap_count = driver_props->memoryHeapCount;
    if (heap_count > VK_MAX_MEMORY_HEAPS)
        heap_count = VK_MAX_MEMORY_HEAPS;
    bool limited = hvk_slice_limits(slice);

    /* The charged total includes CUDA and other processes, which have no heap of their own in Vulkan's
     * view: attribute what is not this process's Vulkan usage to the largest device-local heap. */
    uint64_t own_device_local = 0;
    uint32_t largest = UINT32_MAX;
    for (uint32_t i = 0; i < heap_count; i++) {
        if (!(driver_props->memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT))
            continue;
        own_device_local = hvk_saturating_add(own_device_local, own_heap_usage[i]);
        if (largest == UINT32_MAX || driver_props->memoryHeaps[i].size > driver_props->memoryHeaps[largest].size)
            largest = i;
    }
    uint64_t others = limited && slice->used_total > own_device_local ? slice->used_total - own_device_local : 0;
    uint64_t left = limited && slice->limit > slice->used_total ? slice->limit - slice->used_total : 0;

    for (uint32_t i = 0; i < heap_count; i++) {
        const VkMemoryHeap *heap = &driver_props->memoryHeaps[i];
        uint64_t driver_budget = budget->heapBudget[i];
        uint64_t driver_usage = budget->heapUsage[i];
        bool driver_reported = driver_budget != 0;
        if (limited && (heap->flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)) {
            uint64_t usage = own_heap_usage[i] + (i == largest ? others : 0);
            uint64_t clamped_size = hvk_min(heap->size, slice->limit);
            uint64_t heap_budget = hvk_min(clamped_size, hvk_saturating_add(usage, left));
            if (driver_reported) {
                uint64_t driver_headroom = driver_budget > driver_usage ? driver_budget - driver_usage : 0;
                heap_budget = hvk_min(heap_budget, hvk_saturating_add(usage, driver_headroom));
            }
            budget->heapUsage[i] = usage;
            budget->heapBudget[i] = heap_budget;
        } else if (!driver_reported) {
            budget->heapUsage[i] = own_heap_usage[i];
            budget->heapBudget[i] = heap->size;
        }
    }
    for (uint32_t i = heap_count; i < VK_MAX_MEMORY_HEAPS; i++) {
        budget->heapBudget[i] = 0;
        budget->heapUsage[i] = 0;
    }
}

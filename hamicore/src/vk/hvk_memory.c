/* hvk_memory: the memory hooks. Heap sizes and VK_EXT_memory_budget as the container's slice
 * (vkGetPhysicalDeviceMemoryProperties[2][KHR]) and charging of device-local allocations
 * (vkAllocateMemory / vkFreeMemory) to the container's budget for that GPU.
 *
 * Allocation order: reserve from the budget, then call the driver, roll back if the driver fails; free
 * order: driver first, then return the budget, so a racing allocation never sees bytes that are still in
 * use. Imported memory (fd, host pointer, dma-buf, AHB) is not charged: its bytes belong to, and were
 * charged with, the allocation that exported them. */
#include "hvk_memory.h"

#include "hvk_log.h"

/* What vkFreeMemory needs to undo an allocation, packed into the map's 64-bit value:
 * bytes << 8 | heap index << 1 | charged. Heaps < 16 and sizes < 2^56 bytes fit. */
static uint64_t hvk_memory_pack(uint64_t bytes, uint32_t heap, bool charged)
{
    return bytes << 8 | (uint64_t)(heap & 0x7f) << 1 | (charged ? 1u : 0u);
}

static void hvk_memory_unpack(uint64_t packed, uint64_t *bytes, uint32_t *heap, bool *charged)
{
    *bytes = packed >> 8;
    *heap = (uint32_t)(packed >> 1) & 0x7f;
    *charged = packed & 1;
}

static bool hvk_memory_is_import(const VkMemoryAllocateInfo *info)
{
    for (const VkBaseInStructure *s = info->pNext; s != NULL; s = s->pNext) {
        switch (s->sType) {
        case VK_STRUCTURE_TYPE_IMPORT_MEMORY_FD_INFO_KHR:
        case VK_STRUCTURE_TYPE_IMPORT_MEMORY_HOST_POINTER_INFO_EXT:
        case VK_STRUCTURE_TYPE_IMPORT_ANDROID_HARDWARE_BUFFER_INFO_ANDROID:
        case VK_STRUCTURE_TYPE_IMPORT_MEMORY_WIN32_HANDLE_INFO_KHR:
        case VK_STRUCTURE_TYPE_IMPORT_MEMORY_ZIRCON_HANDLE_INFO_FUCHSIA:
            return true;
        default:
            break;
        }
    }
    return false;
}

static uint64_t hvk_heap_usage_load(hvk_physical_device *physical, uint32_t heap)
{
    return atomic_load_explicit(&physical->own_heap_usage[heap], memory_order_relaxed);
}

VKAPI_ATTR VkResult VKAPI_CALL hvk_AllocateMemory(VkDevice device, const VkMemoryAllocateInfo *info,
                                                  const VkAllocationCallbacks *allocator, VkDeviceMemory *memory)
{
    hvk_device *record = hvk_device_lookup(device);
    if (record == NULL)
        return VK_ERROR_DEVICE_LOST; /* not created through this layer: nothing sane to call */
    hvk_physical_device *physical = record->physical;
    const VkPhysicalDeviceMemoryProperties *heaps = &physical->driver_memory;
    uint64_t bytes = info->allocationSize;
    uint32_t heap = info->memoryTypeIndex < heaps->memoryTypeCount
                        ? heaps->memoryTypes[info->memoryTypeIndex].heapIndex
                        : VK_MAX_MEMORY_HEAPS;
    bool charged = physical->limit_index >= 0 && hvk_memory_type_charged(heaps, info->memoryTypeIndex) &&
                   !hvk_memory_is_import(info);
    if (charged) {
        int reserved = record->instance->budget->reserve(physical->limit_index, bytes);
        if (reserved == 1) {
            hvk_log(HVK_LOG_WARN, "vkAllocateMemory of %llu bytes refused: over the GPU memory limit (index %d)",
                    (unsigned long long)bytes, physical->limit_index);
            return VK_ERROR_OUT_OF_DEVICE_MEMORY;
        }
        charged = reserved == 0; /* -1: no budget for this GPU, nothing charged */
    }

    VkResult result = record->next_allocate_memory(device, info, allocator, memory);
    if (result != VK_SUCCESS) {
        if (charged)
            record->instance->budget->release(physical->limit_index, bytes);
        return result;
    }
    if (heap >= VK_MAX_MEMORY_HEAPS)
        return result; /* invalid type index the driver accepted anyway: nothing we can attribute */

    pthread_mutex_lock(&record->memory_lock);
    bool stored = hvk_map_put(&record->memory, (uint64_t)*memory, hvk_memory_pack(bytes, heap, charged));
    pthread_mutex_unlock(&record->memory_lock);
    if (!stored) {
        record->next_free_memory(device, *memory, allocator);
        *memory = VK_NULL_HANDLE;
        if (charged)
            record->instance->budget->release(physical->limit_index, bytes);
        return VK_ERROR_OUT_OF_HOST_MEMORY;
    }
    atomic_fetch_add_explicit(&physical->own_heap_usage[heap], bytes, memory_order_relaxed);
    return VK_SUCCESS;
}

static void hvk_memory_forget(hvk_device *record, uint64_t packed)
{
    uint64_t bytes;
    uint32_t heap;
    bool charged;
    hvk_memory_unpack(packed, &bytes, &heap, &charged);
    atomic_fetch_sub_explicit(&record->physical->own_heap_usage[heap], bytes, memory_order_relaxed);
    if (charged)
        record->instance->budget->release(record->physical->limit_index, bytes);
}

VKAPI_ATTR void VKAPI_CALL hvk_FreeMemory(VkDevice device, VkDeviceMemory memory,
                                          const VkAllocationCallbacks *allocator)
{
    hvk_device *record = hvk_device_lookup(device);
    if (record == NULL)
        return;
    uint64_t packed = 0;
    bool known = false;
    if (memory != VK_NULL_HANDLE) {
        pthread_mutex_lock(&record->memory_lock);
        known = hvk_map_remove(&record->memory, (uint64_t)memory, &packed);
        pthread_mutex_unlock(&record->memory_lock);
    }
    record->next_free_memory(device, memory, allocator); /* an untracked handle is still freed */
    if (known)
        hvk_memory_forget(record, packed);
}

void hvk_device_release_leftovers(hvk_device *record)
{
    pthread_mutex_lock(&record->memory_lock);
    for (size_t i = 0; i < record->memory.capacity; i++)
        if (record->memory.slots[i].key != 0)
            hvk_memory_forget(record, record->memory.slots[i].value);
    hvk_map_clear(&record->memory);
    pthread_mutex_unlock(&record->memory_lock);
}

/* ---- memory properties ------------------------------------------------------------------------- */

VKAPI_ATTR void VKAPI_CALL hvk_GetPhysicalDeviceMemoryProperties(VkPhysicalDevice physical_device,
                                                                 VkPhysicalDeviceMemoryProperties *properties)
{
    hvk_instance *instance = hvk_instance_lookup(physical_device);
    if (instance == NULL)
        return;
    instance->next_get_memory_properties(physical_device, properties);
    hvk_physical_device *physical = hvk_physical_device_get(physical_device);
    hvk_slice slice = hvk_slice_read(instance, physical);
    hvk_clamp_heaps(properties, &slice);
}

static VkPhysicalDeviceMemoryBudgetPropertiesEXT *hvk_find_budget(VkPhysicalDeviceMemoryProperties2 *properties)
{
    for (VkBaseOutStructure *s = properties->pNext; s != NULL; s = s->pNext)
        if (s->sType == VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT)
            return (VkPhysicalDeviceMemoryBudgetPropertiesEXT *)s;
    return NULL;
}

static void hvk_memory_properties2(VkPhysicalDevice physical_device, VkPhysicalDeviceMemoryProperties2 *properties,
                                   bool khr)
{
    hvk_instance *instance = hvk_instance_lookup(physical_device);
    if (instance == NULL)
        return;
    PFN_vkGetPhysicalDeviceMemoryProperties2 next =
        khr ? instance->next_get_memory_properties2_khr : instance->next_get_memory_properties2;
    VkPhysicalDeviceMemoryBudgetPropertiesEXT *budget = hvk_find_budget(properties);
    if (budget != NULL) {
        /* Zero, so that afterwards non-zero means the driver implements the extension itself. */
        for (uint32_t i = 0; i < VK_MAX_MEMORY_HEAPS; i++) {
            budget->heapBudget[i] = 0;
            budget->heapUsage[i] = 0;
        }
    }
    next(physical_device, properties);
    hvk_physical_device *physical = hvk_physical_device_get(physical_device);
    hvk_slice slice = hvk_slice_read(instance, physical);
    if (budget != NULL) {
        uint64_t own[VK_MAX_MEMORY_HEAPS] = {0};
        for (uint32_t i = 0; physical != NULL && i < VK_MAX_MEMORY_HEAPS; i++)
            own[i] = hvk_heap_usage_load(physical, i);
        hvk_fill_budget(&properties->memoryProperties, &slice, own, budget);
    }
    hvk_clamp_heaps(&properties->memoryProperties, &slice);
}

VKAPI_ATTR void VKAPI_CALL hvk_GetPhysicalDeviceMemoryProperties2(VkPhysicalDevice physical_device,
                                                                  VkPhysicalDeviceMemoryProperties2 *properties)
{
    hvk_memory_properties2(physical_device, properties, false);
}

VKAPI_ATTR void VKAPI_CALL hvk_GetPhysicalDeviceMemoryProperties2KHR(VkPhysicalDevice physical_device,
                                                                     VkPhysicalDeviceMemoryProperties2 *properties)
{
    hvk_memory_properties2(physical_device, properties, true);
}

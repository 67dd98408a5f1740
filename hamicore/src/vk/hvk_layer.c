/* hvk_layer: loader glue of VK_LAYER_HAMI_vgpu: interface negotiation, the proc-addr functions, and the
 * instance and device chains. Memory hooks live in hvk_memory.c, policy in hvk_policy.c, accounting in
 * hvk_budget*.c. Exports (version script libvgpu_vk.map): vkNegotiateLoaderLayerInterfaceVersion and,
 * for loaders that look them up by name, vkGetInstanceProcAddr and vkGetDeviceProcAddr. */
#include "hvk_memory.h"
#include "hvk_records.h"

#include "hvk_log.h"

#include <stdlib.h>
#include <string.h>

#define HVK_LAYER_NAME "VK_LAYER_HAMI_vgpu"
#define HVK_EXPORT __attribute__((visibility("default")))

static const VkExtensionProperties hvk_device_extensions[] = {
    {VK_EXT_MEMORY_BUDGET_EXTENSION_NAME, VK_EXT_MEMORY_BUDGET_SPEC_VERSION},
};

static VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL hvk_GetInstanceProcAddr(VkInstance instance, const char *name);
static VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL hvk_GetDeviceProcAddr(VkDevice device, const char *name);

/* ---- instance chain ---------------------------------------------------------------------------- */

static VkLayerInstanceCreateInfo *hvk_find_instance_link(const VkInstanceCreateInfo *info)
{
    for (const VkBaseInStructure *s = info->pNext; s != NULL; s = s->pNext) {
        if (s->sType != VK_STRUCTURE_TYPE_LOADER_INSTANCE_CREATE_INFO)
            continue;
        VkLayerInstanceCreateInfo *link = (VkLayerInstanceCreateInfo *)s;
        if (link->function == VK_LAYER_LINK_INFO)
            return link;
    }
    return NULL;
}

static bool hvk_extension_listed(const char *const *names, uint32_t count, const char *wanted)
{
    for (uint32_t i = 0; i < count; i++)
        if (names[i] != NULL && strcmp(names[i], wanted) == 0)
            return true;
    return false;
}

static VKAPI_ATTR VkResult VKAPI_CALL hvk_CreateInstance(const VkInstanceCreateInfo *info,
                                                        const VkAllocationCallbacks *allocator,
                                                        VkInstance *instance_out)
{
    hvk_log_init_from_env();
    VkLayerInstanceCreateInfo *link = hvk_find_instance_link(info);
    if (link == NULL || link->u.pLayerInfo == NULL) {
        hvk_log(HVK_LOG_ERROR, "vkCreateInstance without the loader's layer link: is the loader too old?");
        return VK_ERROR_INITIALIZATION_FAILED;
    }
    PFN_vkGetInstanceProcAddr next_gipa = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
    PFN_vkCreateInstance next_create = (PFN_vkCreateInstance)next_gipa(VK_NULL_HANDLE, "vkCreateInstance");
    if (next_create == NULL)
        return VK_ERROR_INITIALIZATION_FAILED;
    link->u.pLayerInfo = link->u.pLayerInfo->pNext; /* the next layer finds its own link */

    /* Mapping a GPU to its budget needs deviceUUID (vkGetPhysicalDeviceProperties2): core from Vulkan 1.1;
     * for a 1.0 application we enable VK_KHR_get_physical_device_properties2 (the loader always has it). */
    uint32_t api_version = info->pApplicationInfo ? info->pApplicationInfo->apiVersion : VK_API_VERSION_1_0;
    bool core_properties2 = api_version >= VK_API_VERSION_1_1;
    VkInstanceCreateInfo local_info = *info;
    const char **names = NULL;
    if (!core_properties2 && !hvk_extension_listed(info->ppEnabledExtensionNames, info->enabledExtensionCount,
                                                   VK_KHR_GET_PHYSICAL_DEVICE_PROPERTIES_2_EXTENSION_NAME)) {
        names = malloc((info->enabledExtensionCount + 1) * sizeof *names);
        if (names == NULL)
            return VK_ERROR_OUT_OF_HOST_MEMORY;
        for (uint32_t i = 0; i < info->enabledExtensionCount; i++)
            names[i] = info->ppEnabledExtensionNames[i];
        names[info->enabledExtensionCount] = VK_KHR_GET_PHYSICAL_DEVICE_PROPERTIES_2_EXTENSION_NAME;
        local_info.enabledExtensionCount = info->enabledExtensionCount + 1;
        local_info.ppEnabledExtensionNames = names;
    }

    hvk_instance *record = calloc(1, sizeof *record);
    if (record == NULL) {
        free(names);
        return VK_ERROR_OUT_OF_HOST_MEMORY;
    }
    VkResult result = next_create(&local_info, allocator, instance_out);
    bool khr_properties2 = names != NULL || hvk_extension_listed(info->ppEnabledExtensionNames,
                                                                 info->enabledExtensionCount,
                                                                 VK_KHR_GET_PHYSICAL_DEVICE_PROPERTIES_2_EXTENSION_NAME);
    free(names);
    if (result != VK_SUCCESS) {
        free(record);
        return result;
    }

    VkInstance instance = *instance_out;
    record->handle = instance;
    record->budget = hvk_budget_resolve();
    record->next_get_instance_proc_addr = next_gipa;
#define HVK_NEXT(type, name) ((type)next_gipa(instance, name))
    record->next_destroy_instance = HVK_NEXT(PFN_vkDestroyInstance, "vkDestroyInstance");
    record->next_enumerate_device_extension_properties =
        HVK_NEXT(PFN_vkEnumerateDeviceExtensionProperties, "vkEnumerateDeviceExtensionProperties");
    record->next_get_memory_properties =
        HVK_NEXT(PFN_vkGetPhysicalDeviceMemoryProperties, "vkGetPhysicalDeviceMemoryProperties");
    if (core_properties2)
        record->next_get_memory_properties2 =
            HVK_NEXT(PFN_vkGetPhysicalDeviceMemoryProperties2, "vkGetPhysicalDeviceMemoryProperties2");
    if (khr_properties2) /* the application's, or ours (enabled above for a 1.0 application) */
        record->next_get_memory_properties2_khr =
            HVK_NEXT(PFN_vkGetPhysicalDeviceMemoryProperties2, "vkGetPhysicalDeviceMemoryProperties2KHR");
    record->next_get_properties2 =
        core_properties2 ? HVK_NEXT(PFN_vkGetPhysicalDeviceProperties2, "vkGetPhysicalDeviceProperties2")
                         : HVK_NEXT(PFN_vkGetPhysicalDeviceProperties2, "vkGetPhysicalDeviceProperties2KHR");
#undef HVK_NEXT

    if (record->next_destroy_instance == NULL || record->next_get_memory_properties == NULL ||
        record->next_enumerate_device_extension_properties == NULL || hvk_instance_insert(record) != 0) {
        if (record->next_destroy_instance != NULL)
            record->next_destroy_instance(instance, allocator);
        hvk_instance_free(record);
        hvk_log(HVK_LOG_ERROR, "vkCreateInstance: the next layer lacks core functions or memory ran out");
        return VK_ERROR_INITIALIZATION_FAILED;
    }
    hvk_log(HVK_LOG_DEBUG, "instance %p created (api %u.%u)", (void *)instance, VK_API_VERSION_MAJOR(api_version),
            VK_API_VERSION_MINOR(api_version));
    return VK_SUCCESS;
}

static VKAPI_ATTR void VKAPI_CALL hvk_DestroyInstance(VkInstance instance, const VkAllocationCallbacks *allocator)
{
    hvk_instance *record = hvk_instance_remove(instance);
    if (record == NULL)
        return; /* VK_NULL_HANDLE, or an instance created before this layer was in the chain */
    record->next_destroy_instance(instance, allocator);
    hvk_instance_free(record);
}

static VKAPI_ATTR VkResult VKAPI_CALL hvk_EnumerateDeviceExtensionProperties(VkPhysicalDevice physical_device,
                                                                           const char *layer_name,
                                                                           uint32_t *count,
                                                                           VkExtensionProperties *properties)
{
    if (layer_name != NULL && strcmp(layer_name, HVK_LAYER_NAME) == 0) {
        /* Our own list: VK_EXT_memory_budget, which the layer answers itself on drivers that lack it. */
        uint32_t available = (uint32_t)(sizeof hvk_device_extensions / sizeof hvk_device_extensions[0]);
        if (properties == NULL) {
            *count = available;
            return VK_SUCCESS;
        }
        uint32_t written = *count < available ? *count : available;
        memcpy(properties, hvk_device_extensions, written * sizeof *properties);
        *count = written;
        return written < available ? VK_INCOMPLETE : VK_SUCCESS;
    }
    hvk_instance *instance = hvk_instance_lookup(physical_device);
    if (instance == NULL)
        return VK_ERROR_INITIALIZATION_FAILED;
    return instance->next_enumerate_device_extension_properties(physical_device, layer_name, count, properties);
}

/* ---- device chain ------------------------------------------------------------------------------ */

static VkLayerDeviceCreateInfo *hvk_find_device_link(const VkDeviceCreateInfo *info)
{
    for (const VkBaseInStructure *s = info->pNext; s != NULL; s = s->pNext) {
        if (s->sType != VK_STRUCTURE_TYPE_LOADER_DEVICE_CREATE_INFO)
            continue;
        VkLayerDeviceCreateInfo *link = (VkLayerDeviceCreateInfo *)s;
        if (link->function == VK_LAYER_LINK_INFO)
            return link;
    }
    return NULL;
}

static VKAPI_ATTR VkResult VKAPI_CALL hvk_CreateDevice(VkPhysicalDevice physical_device,
                                                      const VkDeviceCreateInfo *info,
                                                      const VkAllocationCallbacks *allocator, VkDevice *device_out)
{
    VkLayerDeviceCreateInfo *link = hvk_find_device_link(info);
    hvk_instance *instance = hvk_instance_lookup(physical_device);
    if (link == NULL || link->u.pLayerInfo == NULL || instance == NULL) {
        hvk_log(HVK_LOG_ERROR, "vkCreateDevice without the loader's layer link or for an unknown instance");
        return VK_ERROR_INITIALIZATION_FAILED;
    }
    PFN_vkGetInstanceProcAddr next_gipa = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
    PFN_vkGetDeviceProcAddr next_gdpa = link->u.pLayerInfo->pfnNextGetDeviceProcAddr;
    PFN_vkCreateDevice next_create = (PFN_vkCreateDevice)next_gipa(instance->handle, "vkCreateDevice");
    if (next_create == NULL)
        return VK_ERROR_INITIALIZATION_FAILED;
    link->u.pLayerInfo = link->u.pLayerInfo->pNext;

    hvk_physical_device *physical = hvk_physical_device_get(physical_device);
    hvk_device *record = calloc(1, sizeof *record);
    if (physical == NULL || record == NULL) {
        free(record);
        return VK_ERROR_OUT_OF_HOST_MEMORY;
    }
    VkResult result = next_create(physical_device, info, allocator, device_out);
    if (result != VK_SUCCESS) {
        free(record);
        return result;
    }

    VkDevice device = *device_out;
    record->handle = device;
    record->instance = instance;
    record->physical = physical;
    record->next_get_device_proc_addr = next_gdpa;
    record->next_destroy_device = (PFN_vkDestroyDevice)next_gdpa(device, "vkDestroyDevice");
    record->next_allocate_memory = (PFN_vkAllocateMemory)next_gdpa(device, "vkAllocateMemory");
    record->next_free_memory = (PFN_vkFreeMemory)next_gdpa(device, "vkFreeMemory");
    pthread_mutex_init(&record->memory_lock, NULL);
    if (record->next_destroy_device == NULL || record->next_allocate_memory == NULL ||
        record->next_free_memory == NULL || hvk_device_insert(record) != 0) {
        if (record->next_destroy_device != NULL)
            record->next_destroy_device(device, allocator);
        pthread_mutex_destroy(&record->memory_lock);
        free(record);
        hvk_log(HVK_LOG_ERROR, "vkCreateDevice: the next layer lacks core functions or memory ran out");
        return VK_ERROR_INITIALIZATION_FAILED;
    }
    hvk_log(HVK_LOG_DEBUG, "device %p created (limit index %d)", (void *)device, physical->limit_index);
    return VK_SUCCESS;
}

static VKAPI_ATTR void VKAPI_CALL hvk_DestroyDevice(VkDevice device, const VkAllocationCallbacks *allocator)
{
    hvk_device *record = hvk_device_remove(device);
    if (record == NULL)
        return;
    record->next_destroy_device(device, allocator);
    /* Destroying a device frees its memory objects: return what the application did not free itself. */
    hvk_device_release_leftovers(record);
    pthread_mutex_destroy(&record->memory_lock);
    hvk_map_clear(&record->memory);
    free(record);
}

/* ---- proc-addr lookup -------------------------------------------------------------------------- */

typedef struct hvk_intercept {
    const char *name;
    PFN_vkVoidFunction function;
} hvk_intercept;

#define HVK_INTERCEPT(name) {"vk" #name, (PFN_vkVoidFunction)hvk_##name}

static const hvk_intercept hvk_instance_intercepts[] = {
    HVK_INTERCEPT(GetInstanceProcAddr),
    HVK_INTERCEPT(CreateInstance),
    HVK_INTERCEPT(DestroyInstance),
    HVK_INTERCEPT(CreateDevice),
    HVK_INTERCEPT(EnumerateDeviceExtensionProperties),
    HVK_INTERCEPT(GetPhysicalDeviceMemoryProperties),
    HVK_INTERCEPT(GetPhysicalDeviceMemoryProperties2),
    HVK_INTERCEPT(GetPhysicalDeviceMemoryProperties2KHR),
};

static const hvk_intercept hvk_device_intercepts[] = {
    HVK_INTERCEPT(GetDeviceProcAddr),
    HVK_INTERCEPT(DestroyDevice),
    HVK_INTERCEPT(AllocateMemory),
    HVK_INTERCEPT(FreeMemory),
};

static PFN_vkVoidFunction hvk_find_intercept(const hvk_intercept *table, size_t count, const char *name)
{
    for (size_t i = 0; i < count; i++)
        if (strcmp(table[i].name, name) == 0)
            return table[i].function;
    return NULL;
}

#define HVK_COUNT(table) (sizeof(table) / sizeof((table)[0]))

static VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL hvk_GetInstanceProcAddr(VkInstance instance, const char *name)
{
    if (name == NULL)
        return NULL;
    if (strcmp(name, "vkCreateInstance") == 0 || strcmp(name, "vkGetInstanceProcAddr") == 0)
        return hvk_find_intercept(hvk_instance_intercepts, HVK_COUNT(hvk_instance_intercepts), name);
    hvk_instance *record = hvk_instance_lookup(instance);
    if (record == NULL)
        return NULL;
    /* An entry point the instance does not have stays absent: never hand out a hook with no next. */
    if (strcmp(name, "vkGetPhysicalDeviceMemoryProperties2") == 0 && record->next_get_memory_properties2 == NULL)
        return NULL;
    if (strcmp(name, "vkGetPhysicalDeviceMemoryProperties2KHR") == 0 &&
        record->next_get_memory_properties2_khr == NULL)
        return NULL;
    PFN_vkVoidFunction ours = hvk_find_intercept(hvk_instance_intercepts, HVK_COUNT(hvk_instance_intercepts), name);
    if (ours == NULL)
        ours = hvk_find_intercept(hvk_device_intercepts, HVK_COUNT(hvk_device_intercepts), name);
    return ours ? ours : record->next_get_instance_proc_addr(instance, name);
}

static VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL hvk_GetDeviceProcAddr(VkDevice device, const char *name)
{
    if (name == NULL)
        return NULL;
    PFN_vkVoidFunction ours = hvk_find_intercept(hvk_device_intercepts, HVK_COUNT(hvk_device_intercepts), name);
    if (ours != NULL)
        return ours;
    hvk_device *record = hvk_device_lookup(device);
    return record ? record->next_get_device_proc_addr(device, name) : NULL;
}

/* ---- exports ----------------------------------------------------------------------------------- */

HVK_EXPORT VKAPI_ATTR VkResult VKAPI_CALL vkNegotiateLoaderLayerInterfaceVersion(VkNegotiateLayerInterface *version)
{
    if (version == NULL || version->sType != LAYER_NEGOTIATE_INTERFACE_STRUCT)
        return VK_ERROR_INITIALIZATION_FAILED;
    if (version->loaderLayerInterfaceVersion < 2)
        return VK_ERROR_INITIALIZATION_FAILED; /* interface 2 is what hands us the link chain this way */
    version->loaderLayerInterfaceVersion = 2;
    version->pfnGetInstanceProcAddr = hvk_GetInstanceProcAddr;
    version->pfnGetDeviceProcAddr = hvk_GetDeviceProcAddr;
    version->pfnGetPhysicalDeviceProcAddr = NULL; /* we add no physical-device commands of our own */
    return VK_SUCCESS;
}

HVK_EXPORT VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL vkGetInstanceProcAddr(VkInstance instance, const char *name);
HVK_EXPORT VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL vkGetInstanceProcAddr(VkInstance instance, const char *name)
{
    return hvk_GetInstanceProcAddr(instance, name);
}

HVK_EXPORT VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL vkGetDeviceProcAddr(VkDevice device, const char *name);
HVK_EXPORT VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL vkGetDeviceProcAddr(VkDevice device, const char *name)
{
    return hvk_GetDeviceProcAddr(device, name);
}

/* hvk_dispatch: the layer's record maps, one mutex for instances, devices and physical devices.
 *
 * The lock is held only for map operations, never across a call into the next layer or the accounting
 * client (those may be slow or re-enter the loader). Records are created at vkCreate* and freed at
 * vkDestroy*; Vulkan's external-synchronisation rules forbid using a handle while it is destroyed, so a
 * looked-up record stays valid for the duration of the call that looked it up. */
#include "hvk_records.h"

#include "hvk_log.h"

#include <stdlib.h>
#include <string.h>

static pthread_mutex_t hvk_records_lock = PTHREAD_MUTEX_INITIALIZER;
static hvk_map hvk_instances; /* dispatch key -> hvk_instance* */
static hvk_map hvk_devices;   /* dispatch key -> hvk_device* */

static int hvk_put(hvk_map *map, uint64_t key, void *record)
{
    pthread_mutex_lock(&hvk_records_lock);
    int ok = hvk_map_put(map, key, (uint64_t)(uintptr_t)record);
    pthread_mutex_unlock(&hvk_records_lock);
    return ok ? 0 : -1;
}

static void *hvk_get(const hvk_map *map, uint64_t key)
{
    uint64_t value = 0;
    pthread_mutex_lock(&hvk_records_lock);
    bool found = hvk_map_get(map, key, &value);
    pthread_mutex_unlock(&hvk_records_lock);
    return found ? (void *)(uintptr_t)value : NULL;
}

static void *hvk_take(hvk_map *map, uint64_t key)
{
    uint64_t value = 0;
    pthread_mutex_lock(&hvk_records_lock);
    bool found = hvk_map_remove(map, key, &value);
    if (map->count == 0)
        hvk_map_clear(map); /* nothing left behind once the last instance or device is gone */
    pthread_mutex_unlock(&hvk_records_lock);
    return found ? (void *)(uintptr_t)value : NULL;
}

int hvk_instance_insert(hvk_instance *instance)
{
    return hvk_put(&hvk_instances, hvk_dispatch_key(instance->handle), instance);
}

hvk_instance *hvk_instance_lookup(const void *dispatchable)
{
    return dispatchable ? hvk_get(&hvk_instances, hvk_dispatch_key(dispatchable)) : NULL;
}

hvk_instance *hvk_instance_remove(VkInstance instance)
{
    return instance ? hvk_take(&hvk_instances, hvk_dispatch_key(instance)) : NULL;
}

int hvk_device_insert(hvk_device *device)
{
    return hvk_put(&hvk_devices, hvk_dispatch_key(device->handle), device);
}

hvk_device *hvk_device_lookup(VkDevice device)
{
    return device ? hvk_get(&hvk_devices, hvk_dispatch_key(device)) : NULL;
}

hvk_device *hvk_device_remove(VkDevice device)
{
    return device ? hvk_take(&hvk_devices, hvk_dispatch_key(device)) : NULL;
}

static void hvk_read_uuid(hvk_instance *instance, VkPhysicalDevice physical_device, unsigned char uuid[16])
{
    memset(uuid, 0, VK_UUID_SIZE);
    if (instance->next_get_properties2 == NULL)
        return;
    VkPhysicalDeviceIDProperties id = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES};
    VkPhysicalDeviceProperties2 properties = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                              .pNext = &id};
    instance->next_get_properties2(physical_device, &properties);
    memcpy(uuid, id.deviceUUID, VK_UUID_SIZE);
}

static bool hvk_uuid_is_zero(const unsigned char uuid[16])
{
    for (unsigned i = 0; i < VK_UUID_SIZE; i++)
        if (uuid[i] != 0)
            return false;
    return true;
}

hvk_physical_device *hvk_physical_device_get(VkPhysicalDevice physical_device)
{
    hvk_instance *instance = hvk_instance_lookup(physical_device);
    if (instance == NULL)
        return NULL;
    uint64_t key = (uint64_t)(uintptr_t)physical_device;
    hvk_physical_device *known = NULL;
    pthread_mutex_lock(&hvk_records_lock);
    uint64_t value;
    if (hvk_map_get(&instance->physical_devices, key, &value))
        known = (hvk_physical_device *)(uintptr_t)value;
    pthread_mutex_unlock(&hvk_records_lock);
    if (known != NULL)
        return known;

    /* Resolve outside the lock: it calls down the chain and into the accounting client. */
    hvk_physical_device *fresh = calloc(1, sizeof *fresh);
    if (fresh == NULL)
        return NULL;
    fresh->handle = physical_device;
    hvk_read_uuid(instance, physical_device, fresh->uuid);
    instance->next_get_memory_properties(physical_device, &fresh->driver_memory);
    fresh->limit_index = hvk_uuid_is_zero(fresh->uuid) ? -1 : instance->budget->device_by_uuid(fresh->uuid);
    if (hvk_log_enabled(HVK_LOG_INFO)) {
        const unsigned char *u = fresh->uuid;
        hvk_log(HVK_LOG_INFO,
                "physical device uuid %02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x -> %s %d",
                u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
                u[15], fresh->limit_index >= 0 ? "limit index" : "not a budgeted GPU of this container, not charged:",
                fresh->limit_index);
    }

    pthread_mutex_lock(&hvk_records_lock);
    if (hvk_map_get(&instance->physical_devices, key, &value)) {
        known = (hvk_physical_device *)(uintptr_t)value; /* another thread won the race */
    } else if (hvk_map_put(&instance->physical_devices, key, (uint64_t)(uintptr_t)fresh)) {
        known = fresh;
        fresh = NULL;
    }
    pthread_mutex_unlock(&hvk_records_lock);
    free(fresh);
    return known;
}

void hvk_instance_free(hvk_instance *instance)
{
    if (instance == NULL)
        return;
    for (size_t i = 0; i < instance->physical_devices.capacity; i++)
        if (instance->physical_devices.slots[i].key != 0)
            free((void *)(uintptr_t)instance->physical_devices.slots[i].value);
    hvk_map_clear(&instance->physical_devices);
    free(instance);
}

hvk_slice hvk_slice_read(const hvk_instance *instance, const hvk_physical_device *physical)
{
    hvk_slice slice = {.mapped = false};
    if (physical == NULL || physical->limit_index < 0)
        return slice;
    unsigned long long limit = 0, used_total = 0, used_self = 0;
    if (instance->budget->query(physical->limit_index, &limit, &used_total, &used_self) != 0)
        return slice;
    slice.mapped = true;
    slice.limit = limit;
    slice.used_total = used_total;
    return slice;
}

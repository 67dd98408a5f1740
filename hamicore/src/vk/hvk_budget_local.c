/* hvk_budget_local: the "local" accounting backend, used only when libvgpu_vk.so is built without the
 * accounting core and libvgpu.so is not loaded. Limits come from CUDA_DEVICE_MEMORY_LIMIT[_i], the UUID
 * table from NVIDIA_VISIBLE_DEVICES (GPU-<uuid>,... in limit-index order); counters live in this process
 * only, so it caps one process, not a container. The environment is read once, at first use. */
#include "hvk_budget.h"

#include "hvk_log.h"
#include "hvk_policy.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HVK_LOCAL_MAX_DEVICES 16

static struct {
    pthread_once_t once;
    int device_count;
    unsigned char uuids[HVK_LOCAL_MAX_DEVICES][16];
    uint64_t limits[HVK_LOCAL_MAX_DEVICES];
    _Atomic uint64_t used[HVK_LOCAL_MAX_DEVICES];
} hvk_local = {.once = PTHREAD_ONCE_INIT};

static uint64_t hvk_local_limit_from_env(const char *name, uint64_t fallback)
{
    const char *text = getenv(name);
    uint64_t bytes;
    if (text == NULL || *text == '\0')
        return fallback;
    if (!hvk_size_parse(text, &bytes)) {
        hvk_log(HVK_LOG_ERROR, "%s=%s is not a size (bytes, or a number with suffix k, m or g); ignoring it",
                name, text);
        return fallback;
    }
    return bytes;
}

static void hvk_local_read_env(void)
{
    const char *visible = getenv("NVIDIA_VISIBLE_DEVICES");
    if (visible != NULL) {
        char copy[4096];
        snprintf(copy, sizeof copy, "%s", visible);
        char *save = NULL;
        for (char *item = strtok_r(copy, ",", &save); item && hvk_local.device_count < HVK_LOCAL_MAX_DEVICES;
             item = strtok_r(NULL, ",", &save)) {
            if (hvk_uuid_parse(item, hvk_local.uuids[hvk_local.device_count]))
                hvk_local.device_count++;
        }
    }
    uint64_t common = hvk_local_limit_from_env("CUDA_DEVICE_MEMORY_LIMIT", 0);
    for (int i = 0; i < HVK_LOCAL_MAX_DEVICES; i++) {
        char name[64];
        snprintf(name, sizeof name, "CUDA_DEVICE_MEMORY_LIMIT_%d", i);
        hvk_local.limits[i] = hvk_local_limit_from_env(name, common);
    }
}

static void hvk_local_init(void)
{
    pthread_once(&hvk_local.once, hvk_local_read_env);
}

static int hvk_local_valid(int dev)
{
    return dev >= 0 && dev < hvk_local.device_count;
}

static int hvk_local_device_by_uuid(const unsigned char uuid[16])
{
    hvk_local_init();
    for (int i = 0; i < hvk_local.device_count; i++)
        if (memcmp(hvk_local.uuids[i], uuid, 16) == 0)
            return i;
    return -1;
}

static int hvk_local_reserve(int dev, unsigned long long bytes)
{
    hvk_local_init();
    if (!hvk_local_valid(dev))
        return -1;
    uint64_t limit = hvk_local.limits[dev];
    uint64_t used = atomic_load_explicit(&hvk_local.used[dev], memory_order_relaxed);
    for (;;) {
        if (limit != 0 && (bytes > limit || used > limit - bytes))
            return 1;
        if (atomic_compare_exchange_weak_explicit(&hvk_local.used[dev], &used, used + bytes,
                                                  memory_order_acq_rel, memory_order_relaxed))
            return 0;
    }
}

static void hvk_local_release(int dev, unsigned long long bytes)
{
    if (!hvk_local_valid(dev))
        return;
    uint64_t used = atomic_load_explicit(&hvk_local.used[dev], memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&hvk_local.used[dev], &used, used > bytes ? used - bytes : 0,
                                                  memory_order_acq_rel, memory_order_relaxed)) {
    }
}

static int hvk_local_query(int dev, unsigned long long *limit, unsigned long long *used_total,
                           unsigned long long *used_self)
{
    hvk_local_init();
    if (!hvk_local_valid(dev))
        return -1;
    uint64_t used = atomic_load_explicit(&hvk_local.used[dev], memory_order_relaxed);
    *limit = hvk_local.limits[dev];
    *used_total = used;
    *used_self = used;
    return 0;
}

const hvk_budget_ops hvk_budget_local_ops = {
    .name = "local",
    .device_by_uuid = hvk_local_device_by_uuid,
    .reserve = hvk_local_reserve,
    .release = hvk_local_release,
    .query = hvk_local_query,
};

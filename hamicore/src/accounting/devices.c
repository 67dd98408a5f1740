/* devices.c - see devices.h. NVML is loaded through nvml_lib.h, so that libvgpu's own (virtualised)
 * NVML hooks are never in the way. */
#define _GNU_SOURCE
#include "devices.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "nvml_lib.h"
#include "prim.h"

void hami_devices_record(struct hami_region *r, int idx, const uint8_t uuid[HAMI_UUID_BYTES], uint64_t total) {
    if (!r || idx < 0 || idx >= HAMI_MAX_DEVICES || !uuid) return;
    struct hami_device_record *d = &r->devices[idx];
    uint32_t expected = HAMI_UUID_UNKNOWN;
    if (atomic_compare_exchange_strong(&d->uuid_state, &expected, HAMI_UUID_WRITING)) {
        memcpy(d->uuid, uuid, HAMI_UUID_BYTES);
        atomic_store_explicit(&d->uuid_state, HAMI_UUID_VALID, memory_order_release);
    }
    if (total) {
        uint64_t zero = 0;
        atomic_compare_exchange_strong(&d->total_bytes, &zero, total);
    }
    uint32_t count = atomic_load(&r->header.device_count);
    while (count < (uint32_t)idx + 1 &&
           !atomic_compare_exchange_weak(&r->header.device_count, &count, (uint32_t)idx + 1)) {
    }
}

int hami_devices_find_uuid(const struct hami_region *r, const uint8_t uuid[HAMI_UUID_BYTES]) {
    if (!r || !uuid) return -1;
    /* With a spec its GPU set decides (the region's table is container-writable); the region's table is
     * consulted only for the spec's GPUs without a GPU UUID (MIG). */
    const struct hami_config *c = hami_config_get();
    int all_named = c->from_spec;
    for (int i = 0; c->from_spec && i < c->explicit_devices; i++) {
        if (c->uuid_valid[i] && memcmp(c->uuid[i], uuid, HAMI_UUID_BYTES) == 0) return i;
        all_named &= c->uuid_valid[i];
    }
    /* A GPU outside the spec's set (a pod that overrode NVIDIA_VISIBLE_DEVICES): the first index past the
     * container's GPUs, where every allocation is refused (budget.c). */
    if (all_named && c->explicit_devices < HAMI_MAX_DEVICES) return c->explicit_devices;
    for (int i = 0; i < HAMI_MAX_DEVICES; i++) {
        if (c->from_spec && (i >= c->explicit_devices || c->uuid_valid[i])) continue;
        const struct hami_device_record *d = &r->devices[i];
        if (atomic_load_explicit(&d->uuid_state, memory_order_acquire) != HAMI_UUID_VALID) continue;
        if (memcmp(d->uuid, uuid, HAMI_UUID_BYTES) == 0) return i;
    }
    return -1;
}

/* NVML ABI subset (stable since NVML 3; declared locally so this file needs no nvml.h). */
typedef struct nvml_device_st *nvml_device;
typedef struct {
    unsigned long long total, free, used;
} nvml_memory;
typedef int (*nvml_count_fn)(unsigned int *);
typedef int (*nvml_handle_fn)(unsigned int, nvml_device *);
typedef int (*nvml_uuid_fn)(nvml_device, char *, unsigned int);
typedef int (*nvml_mem_fn)(nvml_device, nvml_memory *);

static int g_discovered = -2;
static pthread_mutex_t g_discover_lock = PTHREAD_MUTEX_INITIALIZER;

/* fork() must never copy g_discover_lock while another thread holds it. */
static void discover_prepare(void) { pthread_mutex_lock(&g_discover_lock); }
static void discover_release(void) { pthread_mutex_unlock(&g_discover_lock); }
__attribute__((constructor)) static void discover_register_atfork(void) {
    pthread_atfork(discover_prepare, discover_release, discover_release);
}

static int discover(struct hami_region *r) {
    const char *why = "";
    void *lib = hami_nvml_open(&why);
    if (!lib) {
        HAMI_DEBUG("NVML not available (%s); UUIDs come from CUDA only", why);
        return -1;
    }
    nvml_count_fn count_fn = (nvml_count_fn)hami_real_dlsym(lib, "nvmlDeviceGetCount_v2");
    nvml_handle_fn handle_fn = (nvml_handle_fn)hami_real_dlsym(lib, "nvmlDeviceGetHandleByIndex_v2");
    nvml_uuid_fn uuid_fn = (nvml_uuid_fn)hami_real_dlsym(lib, "nvmlDeviceGetUUID");
    nvml_mem_fn mem_fn = (nvml_mem_fn)hami_real_dlsym(lib, "nvmlDeviceGetMemoryInfo");
    unsigned int count = 0;
    int result = -1;
    if (count_fn && handle_fn && uuid_fn && count_fn(&count) == 0) {
        result = (int)count;
        for (unsigned int i = 0; i < count && i < HAMI_MAX_DEVICES; i++) {
            nvml_device dev = NULL;
            char text[96] = "";
            uint8_t uuid[HAMI_UUID_BYTES];
            if (handle_fn(i, &dev) != 0 || uuid_fn(dev, text, sizeof text) != 0) continue;
            if (hami_parse_uuid(text, uuid) != 0) continue;
            nvml_memory mem = {0, 0, 0};
            if (!mem_fn || mem_fn(dev, &mem) != 0) mem.total = 0;
            hami_devices_record(r, (int)i, uuid, mem.total);
        }
    }
    hami_nvml_close(lib);
    return result;
}

/* Once per region: the first process enumerates, the others wait for its result (up to 500 ms,
 * then enumerate themselves: enumeration is idempotent, so a discoverer that died costs only time). */
static int discover_once_per_region(struct hami_region *r) {
    _Atomic uint32_t *state = &r->header.discovery_state;
    uint32_t s = atomic_load_explicit(state, memory_order_acquire);
    if (s == HAMI_DISCOVERY_DONE) return (int)atomic_load(&r->header.device_count);
    if (s == HAMI_DISCOVERY_NO_NVML) return -1;
    uint32_t expected = HAMI_DISCOVERY_NONE;
    if (!atomic_compare_exchange_strong(state, &expected, HAMI_DISCOVERY_RUNNING)) {
        for (int waited_us = 0; waited_us < 500000; waited_us += 200) {
            struct timespec ts = {0, 200 * 1000};
            nanosleep(&ts, NULL);
            s = atomic_load_explicit(state, memory_order_acquire);
            if (s == HAMI_DISCOVERY_DONE) return (int)atomic_load(&r->header.device_count);
            if (s == HAMI_DISCOVERY_NO_NVML) return -1;
        }
    }
    int result = discover(r);
    atomic_store_explicit(state, result >= 0 ? HAMI_DISCOVERY_DONE : HAMI_DISCOVERY_NO_NVML, memory_order_release);
    return result;
}

int hami_devices_discover_nvml(struct hami_region *r) {
    if (!r) return -1;
    pthread_mutex_lock(&g_discover_lock);
    if (g_discovered == -2) g_discovered = discover_once_per_region(r);
    int result = g_discovered;
    pthread_mutex_unlock(&g_discover_lock);
    return result;
}

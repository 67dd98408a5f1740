/* devmap.c - see devmap.h. The ordinal table is built once (after cuInit
 * succeeded) and read lock-free afterwards. */
#define _GNU_SOURCE
#include "devmap.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "config.h"
#include "devices.h"
#include "log.h"
#include "region_layout.h"
#include "real.h"

#define MAX_ORDINALS HAMI_MAX_DEVICES

static _Atomic int g_map_ready;
static int g_ordinal_index[MAX_ORDINALS];
static int g_ordinal_count;
static pthread_mutex_t g_map_lock = PTHREAD_MUTEX_INITIALIZER;

/* fork() must never copy g_map_lock while another thread holds it. */
static void map_prepare(void) { pthread_mutex_lock(&g_map_lock); }
static void map_release(void) { pthread_mutex_unlock(&g_map_lock); }
__attribute__((constructor)) static void map_register_atfork(void) {
    pthread_atfork(map_prepare, map_release, map_release);
}

/* Position-based answer when UUIDs cannot be matched (no NVML in the process). */
static int fallback_index(int ordinal) {
    const struct hami_config *c = hami_config_get();
    if (!c->visible_set) return ordinal;
    if (ordinal >= c->visible_count) return -1;
    if (c->visible[ordinal].index >= 0) return c->visible[ordinal].index;
    return ordinal;
}

static int uuid_of_ordinal(int ordinal, uint8_t out[HAMI_UUID_BYTES]) {
    pfn_cuDeviceGet get = REAL(cuDeviceGet, pfn_cuDeviceGet);
    pfn_cuDeviceGetUuid get_uuid = REAL(cuDeviceGetUuid_v2, pfn_cuDeviceGetUuid);
    if (!get_uuid) get_uuid = REAL(cuDeviceGetUuid, pfn_cuDeviceGetUuid);
    CUdevice dev;
    CUuuid uuid;
    if (!get || !get_uuid || get(&dev, ordinal) != CUDA_SUCCESS || get_uuid(&uuid, dev) != CUDA_SUCCESS)
        return -1;
    memcpy(out, uuid.bytes, HAMI_UUID_BYTES);
    return 0;
}

static void build_map(struct hami_region *r) {
    pfn_cuDeviceGetCount count_fn = REAL(cuDeviceGetCount, pfn_cuDeviceGetCount);
    int count = 0;
    if (!count_fn || count_fn(&count) != CUDA_SUCCESS) return; /* not initialised yet: try later */
    if (count > MAX_ORDINALS) count = MAX_ORDINALS;
    int nvml_tried = 0;
    for (int k = 0; k < count; k++) {
        uint8_t uuid[HAMI_UUID_BYTES];
        int idx = -1;
        int have_uuid = uuid_of_ordinal(k, uuid) == 0;
        if (have_uuid) {
            idx = hami_devices_find_uuid(r, uuid);
            if (idx < 0 && !nvml_tried) {
                nvml_tried = 1;
                hami_devices_discover_nvml(r);
                idx = hami_devices_find_uuid(r, uuid);
            }
        }
        if (idx < 0) {
            idx = fallback_index(k);
            if (idx >= HAMI_MAX_DEVICES) idx = -1;
            if (idx >= 0 && have_uuid) hami_devices_record(r, idx, uuid, 0);
            HAMI_DEBUG("CUDA device %d: UUID not known to NVML, using limit index %d", k, idx);
        }
        g_ordinal_index[k] = idx;
    }
    g_ordinal_count = count;
    atomic_store_explicit(&g_map_ready, 1, memory_order_release);
}

int hami_index_of_cuda_device(struct hami_region *r, CUdevice dev) {
    if (!r) return -1;
    if (HAMI_UNLIKELY(!atomic_load_explicit(&g_map_ready, memory_order_acquire))) {
        pthread_mutex_lock(&g_map_lock);
        if (!atomic_load_explicit(&g_map_ready, memory_order_relaxed)) build_map(r);
        pthread_mutex_unlock(&g_map_lock);
        if (!atomic_load_explicit(&g_map_ready, memory_order_acquire)) return -1;
    }
    if (dev < 0 || dev >= g_ordinal_count) return -1;
    return g_ordinal_index[dev];
}

int hami_index_of_current(struct hami_region *r) {
    pfn_cuCtxGetDevice get = REAL(cuCtxGetDevice, pfn_cuCtxGetDevice);
    CUdevice dev;
    if (!r || !get || get(&dev) != CUDA_SUCCESS) return -1;
    return hami_index_of_cuda_device(r, dev);
}

int hami_index_of_stream(struct hami_region *r, CUstream stream) {
    pfn_cuStreamGetDevice get = REAL(cuStreamGetDevice, pfn_cuStreamGetDevice);
    CUdevice dev;
    if (r && stream && get && get(stream, &dev) == CUDA_SUCCESS) return hami_index_of_cuda_device(r, dev);
    return hami_index_of_current(r);
}

/* NVML handles are stable pointers for the life of the library: cache them. */
#define NVML_CACHE 32
static _Atomic(nvmlDevice_t) g_nvml_handles[NVML_CACHE];
static _Atomic int g_nvml_index[NVML_CACHE];

int hami_index_of_nvml(struct hami_region *r, nvmlDevice_t device) {
    if (!r || !device) return -1;
    for (int i = 0; i < NVML_CACHE; i++) {
        nvmlDevice_t h = atomic_load_explicit(&g_nvml_handles[i], memory_order_acquire);
        if (!h) break;
        if (h == device) return atomic_load_explicit(&g_nvml_index[i], memory_order_relaxed);
    }
    pfn_nvmlDeviceGetUUID get_uuid = REAL(nvmlDeviceGetUUID, pfn_nvmlDeviceGetUUID);
    char text[96];
    uint8_t uuid[HAMI_UUID_BYTES];
    if (!get_uuid || get_uuid(device, text, sizeof text) != NVML_SUCCESS || hami_parse_uuid(text, uuid) != 0)
        return -1;
    int idx = hami_devices_find_uuid(r, uuid);
    if (idx < 0) {
        hami_devices_discover_nvml(r);
        idx = hami_devices_find_uuid(r, uuid);
    }
    if (idx < 0) return -1;
    pthread_mutex_lock(&g_map_lock);
    for (int i = 0; i < NVML_CACHE; i++) {
        nvmlDevice_t h = atomic_load_explicit(&g_nvml_handles[i], memory_order_relaxed);
        if (h == device) break;
        if (h) continue;
        atomic_store_explicit(&g_nvml_index[i], idx, memory_order_relaxed);
        atomic_store_explicit(&g_nvml_handles[i], device, memory_order_release); /* publish after index */
        break;
    }
    pthread_mutex_unlock(&g_map_lock);
    return idx;
}

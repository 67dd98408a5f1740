/* limiter_nvml.c - see limiter_nvml.h. Used by the controller thread only (one per process), so the
 * handle cache and the sample buffer need no lock. */
#define _GNU_SOURCE
#include "limiter_nvml.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "nvml_lib.h"
#include "prim.h"
#include "driver_api.h"

typedef nvmlReturn_t (*by_uuid_fn)(const char *, nvmlDevice_t *);
typedef nvmlReturn_t (*proc_util_fn)(nvmlDevice_t, nvmlProcessUtilizationSample_t *, unsigned int *,
                                     unsigned long long);
typedef nvmlReturn_t (*util_fn)(nvmlDevice_t, nvmlUtilization_t *);

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static by_uuid_fn g_by_uuid;
static proc_util_fn g_proc_util;
static util_fn g_util;

static void open_nvml(void) {
    const char *why = "";
    void *lib = hami_nvml_open(&why);
    if (!lib) {
        HAMI_WARN("compute limiter: NVML not available (%s); the SM limit runs without measurement", why);
        return;
    }
    by_uuid_fn by_uuid = (by_uuid_fn)hami_real_dlsym(lib, "nvmlDeviceGetHandleByUUID");
    proc_util_fn proc_util = (proc_util_fn)hami_real_dlsym(lib, "nvmlDeviceGetProcessUtilization");
    if (!by_uuid || !proc_util) {
        HAMI_WARN("compute limiter: this NVML lacks per-process utilisation; the SM limit runs without measurement");
        hami_nvml_close(lib);
        return;
    }
    g_util = (util_fn)hami_real_dlsym(lib, "nvmlDeviceGetUtilizationRates");
    g_by_uuid = by_uuid;
    g_proc_util = proc_util; /* kept open and initialised for the life of the process */
}

#define HANDLE_CACHE 16
static struct {
    uint8_t uuid[HAMI_UUID_BYTES];
    nvmlDevice_t handle;
} g_handles[HANDLE_CACHE];
static int g_handle_count;

static nvmlDevice_t handle_of(const uint8_t uuid[HAMI_UUID_BYTES]) {
    for (int i = 0; i < g_handle_count; i++)
        if (memcmp(g_handles[i].uuid, uuid, HAMI_UUID_BYTES) == 0) return g_handles[i].handle;
    char text[96];
    nvmlDevice_t h = NULL;
    hami_format_uuid(uuid, text, sizeof text);
    if (g_by_uuid(text, &h) != NVML_SUCCESS) return NULL;
    if (g_handle_count < HANDLE_CACHE) {
        memcpy(g_handles[g_handle_count].uuid, uuid, HAMI_UUID_BYTES);
        g_handles[g_handle_count++].handle = h;
    }
    return h;
}

static nvmlProcessUtilizationSample_t g_fixed[512];
static nvmlProcessUtilizationSample_t *g_samples = g_fixed;
static unsigned int g_capacity = 512;

/* NVML's samples since last_seen; on success *count is how many. */
static nvmlReturn_t fetch(nvmlDevice_t h, unsigned int *count, unsigned long long last_seen) {
    *count = g_capacity;
    nvmlReturn_t rc = g_proc_util(h, g_samples, count, last_seen);
    if (rc != NVML_ERROR_INSUFFICIENT_SIZE || *count <= g_capacity) return rc;
    nvmlProcessUtilizationSample_t *bigger = malloc(sizeof *bigger * (*count + 64));
    if (!bigger) return rc;
    if (g_samples != g_fixed) free(g_samples);
    g_samples = bigger;
    g_capacity = *count + 64;
    *count = g_capacity;
    return g_proc_util(h, g_samples, count, last_seen);
}

/* Per-process utilisation NOT_SUPPORTED (some products, vGPU guests): the GPU's utilisation over NVML's last
 * sample period stands for the container's while it launched, as when its processes are not in NVML's list (it
 * may get less than its share where others use the GPU too, never more); 0 while it did not. */
static int device_fallback(nvmlDevice_t h, int launched, double *util_pct) {
    static _Atomic int warned;
    nvmlUtilization_t device;
    if (!g_util || g_util(h, &device) != NVML_SUCCESS) return HAMI_UTIL_UNAVAILABLE;
    if (!atomic_exchange(&warned, 1))
        HAMI_INFO("compute limiter: NVML has no per-process utilisation here; measuring the GPU's utilisation");
    *util_pct = launched ? (device.gpu > 100 ? 100.0 : (double)device.gpu) : 0.0;
    return HAMI_UTIL_MEASURED;
}

int hami_limiter_nvml_utilization(const uint8_t uuid[HAMI_UUID_BYTES], const int32_t *pids, int npids, int launched,
                                  uint64_t *last_seen_us, double *util_pct) {
    pthread_once(&g_once, open_nvml);
    nvmlDevice_t h;
    if (!g_proc_util || !(h = handle_of(uuid))) return HAMI_UTIL_UNAVAILABLE;
    unsigned int count = 0;
    nvmlReturn_t rc = fetch(h, &count, *last_seen_us);
    if (rc == NVML_ERROR_NOT_FOUND) return HAMI_UTIL_NO_SAMPLE;
    if (rc == NVML_ERROR_NOT_SUPPORTED) return device_fallback(h, launched, util_pct);
    if (rc != NVML_SUCCESS) return HAMI_UTIL_UNAVAILABLE;
    /* A process may have several samples in the span: average them, then add the processes up. */
    double total = 0;
    int matched = 0;
    uint64_t newest = *last_seen_us;
    for (int k = 0; k < npids; k++) {
        double sum = 0;
        int n = 0;
        for (unsigned int i = 0; i < count; i++) {
            if ((int32_t)g_samples[i].pid != pids[k]) continue;
            sum += g_samples[i].smUtil;
            n++;
        }
        if (n) {
            total += sum / n;
            matched = 1;
        }
    }
    for (unsigned int i = 0; i < count; i++)
        if (g_samples[i].timeStamp > newest) newest = g_samples[i].timeStamp;
    if (newest == *last_seen_us) return HAMI_UTIL_NO_SAMPLE;
    *last_seen_us = newest;
    nvmlUtilization_t device;
    if (!matched && launched && g_util && g_util(h, &device) == NVML_SUCCESS) total = device.gpu;
    *util_pct = total > 100 ? 100 : total;
    return HAMI_UTIL_MEASURED;
}

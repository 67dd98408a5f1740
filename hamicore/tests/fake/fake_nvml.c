/* fake_nvml.c - TEST DOUBLE of NVML (libnvidia-ml.so.1), for pynvml and libvgpu.
 *
 * Devices come from fake_config.h (NVML ignores CUDA_VISIBLE_DEVICES, like the
 * real one). Memory use, process lists and utilisation are derived from the
 * shared fake state (FAKE_GPU_STATE_FILE) that the fake libcuda.so.1 writes.
 * Health is scripted through FAKE_NVML_EVENTS_FILE, one command per line:
 *   xid <gpu> <code>   deliver an XID critical error event (eventData = code)
 *   lost <gpu>         the GPU stops answering (data queries return GPU_IS_LOST)
 *   recover <gpu>      the GPU answers again
 *   reset <gpu>        the GPU is reset: a pending MIG mode takes effect (fake_mig.c)
 * where <gpu> is an index, a UUID or a UUID prefix. Lines are read as they are appended.
 * MIG (modes, GPU and compute instances, MIG device handles) lives in fake_mig.c; the interconnect
 * (PCIe common ancestors, P2P, NVLink, CPU affinity) in fake_topology.c. */
#define _GNU_SOURCE
#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fake_config.h"
#include "fake_nvml.h"
#include "fake_state.h"

#define EXPORT FAKE_EXPORT

static struct nvmlDevice_st g_handles[FAKE_MAX_GPUS];
static _Atomic int g_init_count;
static _Atomic int g_lost[FAKE_MAX_GPUS];
static pthread_mutex_t g_health_lock = PTHREAD_MUTEX_INITIALIZER;
static long g_health_offset;

#define REQUIRE_INIT()                                                                  \
    do {                                                                                \
        if (atomic_load(&g_init_count) <= 0) return NVML_ERROR_UNINITIALIZED;           \
    } while (0)

static const struct fake_gpu *gpu_of(nvmlDevice_t d) {
    const struct fake_config *c = fake_config_get();
    if (!d || d < g_handles || d >= g_handles + FAKE_MAX_GPUS || d->index >= c->count) return NULL;
    return &c->gpus[d->index];
}

int fake_nvml_initialised(void) { return atomic_load(&g_init_count) > 0; }
const struct fake_gpu *fake_nvml_gpu(nvmlDevice_t d) { return gpu_of(d); }
nvmlDevice_t fake_nvml_device(int index) { return &g_handles[index]; }

/* Apply "lost"/"recover"/"reset" lines appended since the last look. */
void fake_nvml_refresh_health(void) {
    const struct fake_config *c = fake_config_get();
    if (!c->events_file[0]) return;
    pthread_mutex_lock(&g_health_lock);
    FILE *f = fopen(c->events_file, "re");
    if (f && fseek(f, g_health_offset, SEEK_SET) == 0) {
        char line[256];
        while (fgets(line, sizeof line, f)) {
            if (!strchr(line, '\n')) break; /* partial line: read it next time */
            g_health_offset += (long)strlen(line);
            char cmd[32], who[128];
            if (sscanf(line, "%31s %127s", cmd, who) != 2) continue;
            int idx = fake_config_find(who);
            if (idx < 0) continue;
            if (strcmp(cmd, "lost") == 0) atomic_store(&g_lost[idx], 1);
            else if (strcmp(cmd, "recover") == 0) atomic_store(&g_lost[idx], 0);
            else if (strcmp(cmd, "reset") == 0) fake_mig_reset(idx, g_health_offset);
        }
    }
    if (f) fclose(f);
    pthread_mutex_unlock(&g_health_lock);
}

#define REQUIRE_DEVICE(d, g)                                                            \
    REQUIRE_INIT();                                                                     \
    const struct fake_gpu *g = gpu_of(d);                                               \
    if (!g) return NVML_ERROR_INVALID_ARGUMENT
#define REQUIRE_ALIVE(d)                                                                \
    do {                                                                                \
        fake_nvml_refresh_health();                                                     \
        if (atomic_load(&g_lost[(d)->index])) return NVML_ERROR_GPU_IS_LOST;            \
    } while (0)

/* ---------------------------------------------------------------- init */
static nvmlReturn_t init(void) {
    const struct fake_config *c = fake_config_get();
    for (int i = 0; i < FAKE_MAX_GPUS; i++) g_handles[i] = (struct nvmlDevice_st){.index = i};
    atomic_fetch_add(&g_init_count, 1);
    return c->count >= 0 ? NVML_SUCCESS : NVML_ERROR_DRIVER_NOT_LOADED;
}
FAKE(nvmlInit, (void)) { return init(); }
FAKE(nvmlInit_v2, (void)) { return init(); }
FAKE(nvmlInitWithFlags, (unsigned int flags)) {
    (void)flags;
    return init();
}
FAKE(nvmlShutdown, (void)) {
    int n = atomic_load(&g_init_count);
    while (n > 0 && !atomic_compare_exchange_weak(&g_init_count, &n, n - 1)) {
    }
    return n > 0 ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
}

EXPORT const char *fake_nvmlErrorString(nvmlReturn_t r) __asm__("nvmlErrorString");
const char *fake_nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_INSUFFICIENT_RESOURCES: return "Insufficient resources";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires reset";
    default: return "Unknown Error (fake NVML)";
    }
}

nvmlReturn_t fake_nvml_copy_string(char *out, unsigned int len, const char *value) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

FAKE(nvmlSystemGetDriverVersion, (char *version, unsigned int len)) {
    REQUIRE_INIT();
    return fake_nvml_copy_string(version, len, fake_config_get()->driver_version);
}
FAKE(nvmlSystemGetNVMLVersion, (char *version, unsigned int len)) {
    REQUIRE_INIT();
    char v[64];
    snprintf(v, sizeof v, "13.%s", fake_config_get()->driver_version);
    return fake_nvml_copy_string(version, len, v);
}
FAKE(nvmlSystemGetCudaDriverVersion, (int *v)) {
    REQUIRE_INIT();
    if (!v) return NVML_ERROR_INVALID_ARGUMENT;
    *v = fake_config_get()->cuda_version;
    return NVML_SUCCESS;
}
FAKE(nvmlSystemGetCudaDriverVersion_v2, (int *v)) { return fake_nvmlSystemGetCudaDriverVersion(v); }

/* ---------------------------------------------------------------- identity */
static nvmlReturn_t get_count(unsigned int *count) {
    REQUIRE_INIT();
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned int)fake_config_get()->count;
    return NVML_SUCCESS;
}
FAKE(nvmlDeviceGetCount, (unsigned int *count)) { return get_count(count); }
FAKE(nvmlDeviceGetCount_v2, (unsigned int *count)) { return get_count(count); }

static nvmlReturn_t by_index(unsigned int i, nvmlDevice_t *d) {
    REQUIRE_INIT();
    if (!d || i >= (unsigned int)fake_config_get()->count) return NVML_ERROR_INVALID_ARGUMENT;
    *d = &g_handles[i];
    return NVML_SUCCESS;
}
FAKE(nvmlDeviceGetHandleByIndex, (unsigned int i, nvmlDevice_t *d)) { return by_index(i, d); }
FAKE(nvmlDeviceGetHandleByIndex_v2, (unsigned int i, nvmlDevice_t *d)) { return by_index(i, d); }

FAKE(nvmlDeviceGetHandleByUUID, (const char *uuid, nvmlDevice_t *d)) {
    REQUIRE_INIT();
    if (!uuid || !d) return NVML_ERROR_INVALID_ARGUMENT;
    const struct fake_config *c = fake_config_get();
    for (int i = 0; i < c->count; i++) {
        if (strcasecmp(c->gpus[i].uuid, uuid) == 0) {
            *d = &g_handles[i];
            return NVML_SUCCESS;
        }
    }
    nvmlDevice_t mig = fake_mig_find_uuid(uuid);
    if (mig) {
        *d = mig;
        return NVML_SUCCESS;
    }
    return NVML_ERROR_NOT_FOUND;
}

static nvmlReturn_t by_pci(const char *bus, nvmlDevice_t *d) {
    REQUIRE_INIT();
    if (!bus || !d) return NVML_ERROR_INVALID_ARGUMENT;
    const struct fake_config *c = fake_config_get();
    for (int i = 0; i < c->count; i++) {
        const char *id = c->gpus[i].pci_bus_id;
        /* accept the 8-digit and the 4-digit domain forms */
        if (strcasecmp(id, bus) == 0 || (strlen(bus) + 4 == strlen(id) && strcasecmp(id + 4, bus) == 0)) {
            *d = &g_handles[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}
FAKE(nvmlDeviceGetHandleByPciBusId, (const char *bus, nvmlDevice_t *d)) { return by_pci(bus, d); }
FAKE(nvmlDeviceGetHandleByPciBusId_v2, (const char *bus, nvmlDevice_t *d)) { return by_pci(bus, d); }

/* A MIG device answers its own UUID, name and memory; the other queries take the whole GPU's handle. */
#define MIG_DEVICE(d, mem, uuid_buf, name_buf)                                                         \
    int mig_gpu_;                                                                                      \
    unsigned long long mem;                                                                            \
    char uuid_buf[96], name_buf[160];                                                                  \
    int mig_ = fake_mig_device_info(d, &mig_gpu_, &mem, uuid_buf, sizeof uuid_buf, name_buf, sizeof name_buf)

FAKE(nvmlDeviceGetUUID, (nvmlDevice_t d, char *uuid, unsigned int len)) {
    REQUIRE_INIT();
    MIG_DEVICE(d, mig_mem, mig_uuid, mig_name);
    (void)mig_mem;
    (void)mig_name;
    if (mig_) return mig_ > 0 ? fake_nvml_copy_string(uuid, len, mig_uuid) : NVML_ERROR_INVALID_ARGUMENT;
    REQUIRE_DEVICE(d, g);
    return fake_nvml_copy_string(uuid, len, g->uuid);
}
FAKE(nvmlDeviceGetName, (nvmlDevice_t d, char *name, unsigned int len)) {
    REQUIRE_INIT();
    MIG_DEVICE(d, mig_mem, mig_uuid, mig_name);
    (void)mig_mem;
    (void)mig_uuid;
    if (mig_) return mig_ > 0 ? fake_nvml_copy_string(name, len, mig_name) : NVML_ERROR_INVALID_ARGUMENT;
    REQUIRE_DEVICE(d, g);
    return fake_nvml_copy_string(name, len, g->name);
}
FAKE(nvmlDeviceGetSerial, (nvmlDevice_t d, char *serial, unsigned int len)) {
    REQUIRE_DEVICE(d, g);
    return fake_nvml_copy_string(serial, len, g->serial);
}
FAKE(nvmlDeviceGetIndex, (nvmlDevice_t d, unsigned int *index)) {
    REQUIRE_DEVICE(d, g);
    (void)g;
    if (!index) return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned int)d->index;
    return NVML_SUCCESS;
}
FAKE(nvmlDeviceGetMinorNumber, (nvmlDevice_t d, unsigned int *minor)) {
    REQUIRE_DEVICE(d, g);
    if (!minor) return NVML_ERROR_INVALID_ARGUMENT;
    *minor = g->minor;
    return NVML_SUCCESS;
}
FAKE(nvmlDeviceGetBrand, (nvmlDevice_t d, nvmlBrandType_t *brand)) {
    REQUIRE_DEVICE(d, g);
    (void)g;
    if (!brand) return NVML_ERROR_INVALID_ARGUMENT;
    *brand = NVML_BRAND_NVIDIA;
    return NVML_SUCCESS;
}
FAKE(nvmlDeviceGetArchitecture, (nvmlDevice_t d, nvmlDeviceArchitecture_t *arch)) {
    REQUIRE_DEVICE(d, g);
    if (!arch) return NVML_ERROR_INVALID_ARGUMENT;
    *arch = g->architecture;
    return NVML_SUCCESS;
}
FAKE(nvmlDeviceGetCudaComputeCapability, (nvmlDevice_t d, int *major, int *minor)) {
    REQUIRE_DEVICE(d, g);
    if (!major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    *major = g->cc_major;
    *minor = g->cc_minor;
    return NVML_SUCCESS;
}
FAKE(nvmlDeviceGetNumaNodeId, (nvmlDevice_t d, unsigned int *node)) {
    REQUIRE_DEVICE(d, g);
    if (!node) return NVML_ERROR_INVALID_ARGUMENT;
    if (g->numa_node < 0) return NVML_ERROR_NOT_SUPPORTED;
    *node = (unsigned int)g->numa_node;
    return NVML_SUCCESS;
}
FAKE(nvmlDeviceGetNumGpuCores, (nvmlDevice_t d, unsigned int *cores)) {
    REQUIRE_DEVICE(d, g);
    if (!cores) return NVML_ERROR_INVALID_ARGUMENT;
    *cores = g->sm_count * 64u;
    return NVML_SUCCESS;
}
FAKE(nvmlDeviceGetAttributes_v2, (nvmlDevice_t d, nvmlDeviceAttributes_t *a)) {
    REQUIRE_DEVICE(d, g);
    if (!a) return NVML_ERROR_INVALID_ARGUMENT;
    memset(a, 0, sizeof *a);
    a->multiprocessorCount = g->sm_count;
    a->memorySizeMB = g->memory_bytes >> 20;
    return NVML_SUCCESS;
}

static nvmlReturn_t pci_info(nvmlDevice_t d, nvmlPciInfo_t *p) {
    REQUIRE_DEVICE(d, g);
    if (!p) return NVML_ERROR_INVALID_ARGUMENT;
    fake_nvml_fill_pci(g, p);
    return NVML_SUCCESS;
}
void fake_nvml_fill_pci(const struct fake_gpu *g, nvmlPciInfo_t *p) {
    memset(p, 0, sizeof *p);
    snprintf(p->busIdLegacy, sizeof p->busIdLegacy, "%04X:%02X:%02X.0", g->pci_domain, g->pci_bus, g->pci_device);
    snprintf(p->busId, sizeof p->busId, "%s", g->pci_bus_id);
    p->domain = g->pci_domain;
    p->bus = g->pci_bus;
    p->device = g->pci_device;
    p->pciDeviceId = g->pci_device_id;
    p->pciSubSystemId = 0x145f10deu;
}
FAKE(nvmlDeviceGetPciInfo, (nvmlDevice_t d, nvmlPciInfo_t *p)) { return pci_info(d, p); }
FAKE(nvmlDeviceGetPciInfo_v2, (nvmlDevice_t d, nvmlPciInfo_t *p)) { return pci_info(d, p); }
FAKE(nvmlDeviceGetPciInfo_v3, (nvmlDevice_t d, nvmlPciInfo_t *p)) { return pci_info(d, p); }

/* ---------------------------------------------------------------- memory, processes, utilisation */
/* A MIG device's memory is its GPU instance's; no process use is attributed to instances. */
static nvmlReturn_t mig_memory(nvmlDevice_t d, unsigned long long *total) {
    MIG_DEVICE(d, mig_mem, mig_uuid, mig_name);
    (void)mig_uuid;
    (void)mig_name;
    if (mig_ < 0) return NVML_ERROR_INVALID_ARGUMENT;
    *total = mig_mem;
    return mig_ > 0 ? NVML_SUCCESS : NVML_ERROR_NOT_FOUND;
}

FAKE(nvmlDeviceGetMemoryInfo, (nvmlDevice_t d, nvmlMemory_t *m)) {
    REQUIRE_INIT();
    unsigned long long mig_total;
    nvmlReturn_t mig_rc = mig_memory(d, &mig_total);
    if (mig_rc != NVML_ERROR_NOT_FOUND) {
        if (mig_rc == NVML_SUCCESS && !m) return NVML_ERROR_INVALID_ARGUMENT;
        if (mig_rc == NVML_SUCCESS) *m = (nvmlMemory_t){.total = mig_total, .free = mig_total, .used = 0};
        return mig_rc;
    }
    REQUIRE_DEVICE(d, g);
    REQUIRE_ALIVE(d);
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    uint64_t used = fake_state_used(d->index);
    m->total = g->memory_bytes;
    m->used = used < g->memory_bytes ? used : g->memory_bytes;
    m->free = m->total - m->used;
    return NVML_SUCCESS;
}
FAKE(nvmlDeviceGetMemoryInfo_v2, (nvmlDevice_t d, nvmlMemory_v2_t *m)) {
    REQUIRE_INIT();
    unsigned long long mig_total;
    nvmlReturn_t mig_rc = mig_memory(d, &mig_total);
    if (mig_rc != NVML_ERROR_NOT_FOUND) {
        if (mig_rc == NVML_SUCCESS && (!m || m->version != nvmlMemory_v2))
            return m ? NVML_ERROR_ARGUMENT_VERSION_MISMATCH : NVML_ERROR_INVALID_ARGUMENT;
        if (mig_rc == NVML_SUCCESS)
            *m = (nvmlMemory_v2_t){.version = nvmlMemory_v2, .total = mig_total, .free = mig_total};
        return mig_rc;
    }
    REQUIRE_DEVICE(d, g);
    REQUIRE_ALIVE(d);
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    if (m->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    uint64_t used = fake_state_used(d->index);
    m->total = g->memory_bytes;
    m->reserved = 0;
    m->used = used < g->memory_bytes ? used : g->memory_bytes;
    m->free = m->total - m->used;
    return NVML_SUCCESS;
}

static nvmlReturn_t running_processes(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos) {
    REQUIRE_DEVICE(d, g);
    (void)g;
    REQUIRE_ALIVE(d);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    struct fake_state *s = fake_state_get();
    unsigned int n = 0, cap = infos ? *count : 0;
    for (int i = 0; s && i < FAKE_MAX_PROCS; i++) {
        struct fake_proc_state *p = &s->procs[i];
        int pid = atomic_load(&p->pid);
        int slot = fake_state_slot((int)d->index);
        if (pid <= 0 || !(atomic_load(&p->has_context) & (1u << slot)) || !fake_pid_alive(pid)) continue;
        if (n < cap) {
            infos[n].pid = (unsigned int)pid;
            infos[n].usedGpuMemory = atomic_load(&p->used_bytes[slot]);
            infos[n].gpuInstanceId = 0xFFFFFFFFu;
            infos[n].computeInstanceId = 0xFFFFFFFFu;
        }
        n++;
    }
    *count = n;
    return n > cap ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
}
FAKE(nvmlDeviceGetComputeRunningProcesses_v3, (nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos)) {
    return running_processes(d, count, infos);
}
FAKE(nvmlDeviceGetComputeRunningProcesses_v2, (nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos)) {
    return running_processes(d, count, infos);
}

static unsigned percent(uint64_t busy, uint64_t window) {
    unsigned p = (unsigned)((busy * 100 + window / 2) / window);
    return p > 100 ? 100 : p;
}

/* Utilisation as real NVML reports it: the driver samples each GPU once per period (FAKE_NVML_SAMPLE_PERIOD_MS,
 * 1/6 s by default; nvml.h: "between 1 second and 1/6 second depending on the product"), a sample k covering
 * [k P, (k + 1) P) and stamped (k + 1) P, and publishes it FAKE_NVML_SAMPLE_LAG_MS after its period ends; each
 * reading carries up to FAKE_NVML_UTIL_NOISE_PCT points of noise (a fixed function of GPU, process and period,
 * so every reader sees the same sample). FAKE_NVML_SAMPLE_PERIOD_MS=0 gives the exact, instantaneous busy share
 * of the last FAKE_NVML_UTIL_WINDOW_MS instead (no real NVML does that). */
static unsigned noisy(unsigned pct, int dev, int pid, uint64_t k) {
    int noise = fake_config_get()->util_noise_pct;
    if (noise <= 0 || pct == 0) return pct;
    uint64_t h = (uint64_t)(dev + 1) * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uint32_t)pid * 0xbf58476d1ce4e5b9ull ^
                 k * 0x94d049bb133111ebull;
    h ^= h >> 31;
    int v = (int)pct + (int)(h % (uint64_t)(2 * noise + 1)) - noise;
    return v < 0 ? 0 : v > 100 ? 100 : (unsigned)v;
}

/* Period length and the newest published sample (-1 = none yet); 0 when sampling is off. */
static uint64_t sample_period_ns(uint64_t now, int64_t *newest) {
    const struct fake_config *c = fake_config_get();
    uint64_t period = (uint64_t)c->sample_period_ms * 1000000ull, lag = (uint64_t)c->sample_lag_ms * 1000000ull;
    if (period == 0) return 0;
    *newest = now > lag ? (int64_t)((now - lag) / period) - 1 : -1;
    return period;
}

FAKE(nvmlDeviceGetUtilizationRates, (nvmlDevice_t d, nvmlUtilization_t *u)) {
    REQUIRE_DEVICE(d, g);
    (void)g;
    REQUIRE_ALIVE(d);
    if (!u) return NVML_ERROR_INVALID_ARGUMENT;
    if (!fake_config_get()->device_util_supported) return NVML_ERROR_NOT_SUPPORTED;
    uint64_t now = fake_now_ns();
    int64_t k = -1;
    uint64_t period = sample_period_ns(now, &k);
    if (period == 0) {
        uint64_t window = (uint64_t)fake_config_get()->util_window_ms * 1000000ull;
        uint64_t from = now > window ? now - window : 0;
        u->gpu = percent(fake_timeline_busy(d->index, from, now, 0), window);
    } else if (k < 0) {
        u->gpu = 0;
    } else {
        uint64_t from = (uint64_t)k * period;
        u->gpu = noisy(percent(fake_timeline_busy(d->index, from, from + period, 0), period), d->index, 0, (uint64_t)k);
    }
    u->memory = u->gpu / 2;
    return NVML_SUCCESS;
}

/* One sample per process and published period with timestamps after lastSeen (microseconds), kept for
 * FAKE_NVML_UTIL_WINDOW_MS before the newest published one; processes idle in a period have no sample for it.
 * NOT_FOUND when there is none. */
FAKE(nvmlDeviceGetProcessUtilization,
     (nvmlDevice_t d, nvmlProcessUtilizationSample_t *samples, unsigned int *count, unsigned long long last_seen)) {
    REQUIRE_DEVICE(d, g);
    (void)g;
    REQUIRE_ALIVE(d);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (!fake_config_get()->process_util_supported) return NVML_ERROR_NOT_SUPPORTED;
    uint64_t window = (uint64_t)fake_config_get()->util_window_ms * 1000000ull, now = fake_now_ns();
    struct fake_state *s = fake_state_get();
    int pids[FAKE_MAX_PROCS], npids = 0;
    uint64_t busy_of[FAKE_MAX_PROCS];
    for (int i = 0; s && i < FAKE_MAX_PROCS; i++) {
        int pid = atomic_load(&s->procs[i].pid);
        if (pid > 0) pids[npids++] = pid;
    }
    int64_t newest = -1;
    uint64_t period = sample_period_ns(now, &newest);
    /* Spans to report: [from, to) stamped `to`; without sampling, one span up to now. */
    int64_t first = 0, last = 0;
    if (period) {
        uint64_t lag = (uint64_t)fake_config_get()->sample_lag_ms * 1000000ull;
        uint64_t oldest_end = now > window + lag ? now - window - lag : 0; /* kept: the window before the newest */
        first = (int64_t)(oldest_end / period); /* periods ending at or after now - window */
        if (first > 0) first--;
        int64_t seen = (int64_t)(last_seen * 1000ull / period) ; /* sample k is stamped (k + 1) P: seen ones k < seen */
        if (first < seen) first = seen;
        last = newest;
    }
    unsigned int n = 0, cap = samples ? *count : 0;
    for (int64_t k = first; k <= last; k++) {
        uint64_t from, to;
        if (period) {
            from = (uint64_t)k * period;
            to = from + period;
            if (to + window + (uint64_t)fake_config_get()->sample_lag_ms * 1000000ull < now) continue;
        } else {
            from = now > window ? now - window : 0;
            if (last_seen * 1000ull > from && last_seen * 1000ull < now) from = last_seen * 1000ull;
            to = now;
        }
        fake_timeline_busy_pids(d->index, from, to, pids, busy_of, npids);
        for (int i = 0; i < npids; i++) {
            if (busy_of[i] == 0) continue;
            if (n < cap) {
                unsigned pct = percent(busy_of[i], to - from);
                if (period) pct = noisy(pct, d->index, pids[i], (uint64_t)k);
                samples[n] = (nvmlProcessUtilizationSample_t){(unsigned int)pids[i], to / 1000ull, pct, 0, 0, 0};
            }
            n++;
        }
    }
    if (n == 0) {
        *count = 0;
        return NVML_ERROR_NOT_FOUND;
    }
    nvmlReturn_t rc = (samples && n <= cap) ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
    *count = n;
    return rc;
}

/* ---------------------------------------------------------------- events */
struct nvmlEventSet_st {
    unsigned long long mask[FAKE_MAX_GPUS];
    long offset;
};

FAKE(nvmlEventSetCreate, (nvmlEventSet_t * set)) {
    REQUIRE_INIT();
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    struct nvmlEventSet_st *s = calloc(1, sizeof *s);
    if (!s) return NVML_ERROR_MEMORY;
    /* Events that happened before the set existed are not delivered. */
    const char *path = fake_config_get()->events_file;
    FILE *f = path[0] ? fopen(path, "re") : NULL;
    if (f) {
        fseek(f, 0, SEEK_END);
        s->offset = ftell(f);
        fclose(f);
    }
    *set = s;
    return NVML_SUCCESS;
}

FAKE(nvmlEventSetFree, (nvmlEventSet_t set)) {
    REQUIRE_INIT();
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    free(set);
    return NVML_SUCCESS;
}

#define SUPPORTED_EVENTS (nvmlEventTypeXidCriticalError | nvmlEventTypeSingleBitEccError | nvmlEventTypeDoubleBitEccError)

FAKE(nvmlDeviceGetSupportedEventTypes, (nvmlDevice_t d, unsigned long long *types)) {
    REQUIRE_DEVICE(d, g);
    (void)g;
    if (!types) return NVML_ERROR_INVALID_ARGUMENT;
    *types = SUPPORTED_EVENTS;
    return NVML_SUCCESS;
}

FAKE(nvmlDeviceRegisterEvents, (nvmlDevice_t d, unsigned long long types, nvmlEventSet_t set)) {
    REQUIRE_DEVICE(d, g);
    (void)g;
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    if (types & ~(unsigned long long)SUPPORTED_EVENTS) return NVML_ERROR_NOT_SUPPORTED;
    set->mask[d->index] |= types;
    return NVML_SUCCESS;
}

static int next_event(nvmlEventSet_t set, nvmlEventData_t *data) {
    const char *path = fake_config_get()->events_file;
    if (!path[0]) return 0;
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    int found = 0;
    if (fseek(f, set->offset, SEEK_SET) == 0) {
        char line[256];
        while (!found && fgets(line, sizeof line, f)) {
            if (!strchr(line, '\n')) break;
            set->offset += (long)strlen(line);
            char cmd[32], who[128];
            unsigned long long code = 0;
            if (sscanf(line, "%31s %127s %llu", cmd, who, &code) < 2 || strcmp(cmd, "xid") != 0) continue;
            int idx = fake_config_find(who);
            if (idx < 0 || !(set->mask[idx] & nvmlEventTypeXidCriticalError)) continue;
            data->device = &g_handles[idx];
            data->eventType = nvmlEventTypeXidCriticalError;
            data->eventData = code;
            data->gpuInstanceId = 0xFFFFFFFFu;
            data->computeInstanceId = 0xFFFFFFFFu;
            found = 1;
        }
    }
    fclose(f);
    return found;
}

static nvmlReturn_t wait_event(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeout_ms) {
    REQUIRE_INIT();
    if (!set || !data) return NVML_ERROR_INVALID_ARGUMENT;
    uint64_t deadline = fake_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        if (next_event(set, data)) return NVML_SUCCESS;
        if (fake_now_ns() >= deadline) return NVML_ERROR_TIMEOUT;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
}
FAKE(nvmlEventSetWait, (nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeout_ms)) {
    return wait_event(set, data, timeout_ms);
}
FAKE(nvmlEventSetWait_v2, (nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeout_ms)) {
    return wait_event(set, data, timeout_ms);
}

/* fake_config.c - TEST DOUBLE configuration parser (see fake_config.h). */
#define _GNU_SOURCE
#include "fake_config.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct fake_config g_cfg;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

#define MAX_KEYS 64
static char g_file_keys[MAX_KEYS][64];
static char g_file_values[MAX_KEYS][1024];
static int g_file_count;

static void load_file(void) {
    const char *path = getenv("FAKE_NVML_CONFIG");
    if (!path || !*path) return;
    FILE *f = fopen(path, "re");
    if (!f) {
        fprintf(stderr, "fake-gpu (test double): cannot read FAKE_NVML_CONFIG=%s\n", path);
        return;
    }
    char line[1200];
    while (fgets(line, sizeof line, f) && g_file_count < MAX_KEYS) {
        char *p = line;
        while (isspace((unsigned char)*p)) p++;
        if (*p == '#' || *p == '\0') continue;
        char *eq = strchr(p, '=');
        if (!eq) continue;
        *eq = '\0';
        char *v = eq + 1;
        size_t n = strlen(v);
        while (n && (v[n - 1] == '\n' || v[n - 1] == '\r' || v[n - 1] == ' ')) v[--n] = '\0';
        n = strlen(p);
        while (n && p[n - 1] == ' ') p[--n] = '\0';
        snprintf(g_file_keys[g_file_count], sizeof g_file_keys[0], "%s", p);
        snprintf(g_file_values[g_file_count], sizeof g_file_values[0], "%s", v);
        g_file_count++;
    }
    fclose(f);
}

static const char *setting(const char *key) {
    const char *v = getenv(key);
    if (v && *v) return v;
    for (int i = 0; i < g_file_count; i++)
        if (strcmp(g_file_keys[i], key) == 0) return g_file_values[i];
    return NULL;
}

/* The i-th comma-separated item of a list; with broadcast, a one-item list applies to every GPU. */
static int list_item_ex(const char *list, int i, char *out, size_t size, int broadcast) {
    if (!list) return 0;
    int items = 1;
    for (const char *p = list; *p; p++) items += *p == ',';
    if (items == 1 && broadcast) i = 0;
    if (i >= items) return 0;
    const char *p = list;
    for (int k = 0; k < i; k++) p = strchr(p, ',') + 1;
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    while (len && isspace((unsigned char)*p)) p++, len--;
    while (len && isspace((unsigned char)p[len - 1])) len--;
    if (len >= size) len = size - 1;
    memcpy(out, p, len);
    out[len] = '\0';
    return len > 0;
}

static int list_item(const char *list, int i, char *out, size_t size) { return list_item_ex(list, i, out, size, 1); }

static int parse_uuid(const char *text, uint8_t out[16]) {
    const char *p = text;
    if (strncmp(p, "GPU-", 4) == 0) p += 4;
    int n = 0;
    memset(out, 0, 16);
    for (; *p; p++) {
        if (*p == '-') continue;
        if (!isxdigit((unsigned char)*p) || n >= 32) return -1;
        int v = isdigit((unsigned char)*p) ? *p - '0' : tolower((unsigned char)*p) - 'a' + 10;
        out[n / 2] = (uint8_t)(out[n / 2] | (v << (n % 2 ? 0 : 4)));
        n++;
    }
    return n == 32 ? 0 : -1;
}

static void load(void) {
    load_file();
    struct fake_config *c = &g_cfg;
    const char *v = setting("FAKE_GPU_COUNT");
    c->count = v ? atoi(v) : 1;
    if (c->count < 0) c->count = 0;
    if (c->count > FAKE_MAX_GPUS) c->count = FAKE_MAX_GPUS;
    const char *uuids = setting("FAKE_GPU_UUIDS"), *names = setting("FAKE_GPU_NAMES");
    const char *mems = setting("FAKE_GPU_MEMORY_MIB"), *sms = setting("FAKE_GPU_SM_COUNT");
    const char *numas = setting("FAKE_GPU_NUMA_NODES"), *buses = setting("FAKE_GPU_PCI_BUS_IDS");
    const char *minors = setting("FAKE_GPU_MINOR_NUMBERS"), *ccs = setting("FAKE_GPU_COMPUTE_CAPABILITY");
    const char *serials = setting("FAKE_GPU_SERIALS"), *slots = setting("FAKE_GPU_STATE_SLOTS");
    const char *ctxs = setting("FAKE_GPU_CONTEXT_MIB");
    const char *migs = setting("FAKE_GPU_MIG_MODE"), *resets = setting("FAKE_NVML_MIG_NEEDS_RESET");
    v = setting("FAKE_GPU_TOPOLOGY");
    c->topology = !v                          ? FAKE_TOPOLOGY_NONE
                  : strcmp(v, "nvswitch") == 0 ? FAKE_TOPOLOGY_NVSWITCH
                  : strcmp(v, "ring") == 0     ? FAKE_TOPOLOGY_RING
                  : strcmp(v, "pcie") == 0     ? FAKE_TOPOLOGY_PCIE
                                               : FAKE_TOPOLOGY_NONE;
    if (v && c->topology == FAKE_TOPOLOGY_NONE && strcmp(v, "none") != 0)
        fprintf(stderr, "fake-gpu (test double): unknown FAKE_GPU_TOPOLOGY '%s', modelling none\n", v);
    v = setting("FAKE_GPU_NVLINKS");
    c->ring_nvlinks = v ? (unsigned)atoi(v) : 4u;
    for (int i = 0; i < c->count; i++) {
        struct fake_gpu *g = &c->gpus[i];
        char item[256];
        if (!list_item_ex(uuids, i, g->uuid, sizeof g->uuid, 0))
            snprintf(g->uuid, sizeof g->uuid, "GPU-fa4e0000-0000-4000-8000-%012x", i);
        if (parse_uuid(g->uuid, g->uuid_bytes) != 0) {
            fprintf(stderr, "fake-gpu (test double): bad UUID '%s' for GPU %d, using a default\n", g->uuid, i);
            snprintf(g->uuid, sizeof g->uuid, "GPU-fa4e0000-0000-4000-8000-%012x", i);
            parse_uuid(g->uuid, g->uuid_bytes);
        }
        if (!list_item(names, i, g->name, sizeof g->name))
            snprintf(g->name, sizeof g->name, "NVIDIA Fake GPU (test double)");
        g->memory_bytes = (list_item(mems, i, item, sizeof item) ? strtoull(item, NULL, 10) : 16384ull) << 20;
        g->context_bytes = (list_item(ctxs, i, item, sizeof item) ? strtoull(item, NULL, 10) : 300ull) << 20;
        g->sm_count = list_item(sms, i, item, sizeof item) ? (unsigned)atoi(item) : 108u;
        /* A modelled topology puts the first half of the GPUs on NUMA node 0, the second half on node 1. */
        g->numa_node = list_item(numas, i, item, sizeof item) ? atoi(item)
                       : c->topology != FAKE_TOPOLOGY_NONE ? (i >= (c->count + 1) / 2)
                                                           : 0;
        g->minor = list_item(minors, i, item, sizeof item) ? (unsigned)atoi(item) : (unsigned)i;
        if (!list_item(serials, i, g->serial, sizeof g->serial))
            snprintf(g->serial, sizeof g->serial, "FAKE%08d", i);
        g->cc_major = 8;
        g->cc_minor = 0;
        if (list_item(ccs, i, item, sizeof item)) sscanf(item, "%d.%d", &g->cc_major, &g->cc_minor);
        g->architecture = g->cc_major >= 9 ? 9u /* Hopper */ : 7u /* Ampere */;
        g->pci_domain = 0;
        g->pci_bus = 0x10u + (unsigned)i;
        g->pci_device = 0;
        if (list_item(buses, i, item, sizeof item))
            sscanf(item, "%x:%x:%x", &g->pci_domain, &g->pci_bus, &g->pci_device);
        snprintf(g->pci_bus_id, sizeof g->pci_bus_id, "%08X:%02X:%02X.0", g->pci_domain, g->pci_bus,
                 g->pci_device);
        g->pci_device_id = (0x20B0u << 16) | 0x10DEu;
        g->mig_mode = list_item(migs, i, item, sizeof item) ? atoi(item) != 0 : 0;
        g->mig_needs_reset = list_item(resets, i, item, sizeof item) ? atoi(item) != 0 : 0;
        /* A process shown a subset of a node's GPUs (a container) keeps the node's devices in the shared state. */
        g->state_slot = i;
        if (list_item_ex(slots, i, item, sizeof item, 0)) {
            int slot = atoi(item);
            if (slot >= 0 && slot < FAKE_MAX_GPUS) g->state_slot = slot;
            else fprintf(stderr, "fake-gpu (test double): bad state slot '%s' for GPU %d, using %d\n", item, i, i);
        }
    }
    v = setting("FAKE_GPU_DRIVER_VERSION");
    snprintf(c->driver_version, sizeof c->driver_version, "%s", v ? v : "580.65.06");
    v = setting("FAKE_CUDA_DRIVER_VERSION");
    c->cuda_version = v ? atoi(v) : 13000;
    v = setting("FAKE_NVML_EVENTS_FILE");
    snprintf(c->events_file, sizeof c->events_file, "%s", v ? v : "");
    v = setting("FAKE_GPU_STATE_FILE");
    snprintf(c->state_file, sizeof c->state_file, "%s", v ? v : "");
    v = setting("FAKE_GPU_HOST_PROC");
    snprintf(c->host_proc, sizeof c->host_proc, "%s", v ? v : "");
    v = setting("FAKE_KERNEL_NS_PER_THREAD");
    c->ns_per_thread = v ? strtod(v, NULL) : 1.0;
    v = setting("FAKE_KERNEL_NS_PER_WAVE");
    c->ns_per_wave = v ? strtod(v, NULL) : 0.0;
    v = setting("FAKE_GRAPH_LAUNCH_NS");
    c->graph_ns = v ? strtod(v, NULL) : 0.0;
    v = setting("FAKE_GPU_MAX_THREADS_PER_SM");
    c->max_threads_per_sm = v ? (unsigned)atoi(v) : 2048u;
    v = setting("FAKE_NVML_UTIL_WINDOW_MS");
    c->util_window_ms = v ? (unsigned)atoi(v) : 1000u;
    if (c->util_window_ms == 0) c->util_window_ms = 1000u;
    v = setting("FAKE_NVML_SAMPLE_PERIOD_MS");
    c->sample_period_ms = v ? (unsigned)atoi(v) : 167u;
    v = setting("FAKE_NVML_SAMPLE_LAG_MS");
    c->sample_lag_ms = v ? (unsigned)atoi(v) : 100u;
    v = setting("FAKE_NVML_UTIL_NOISE_PCT");
    c->util_noise_pct = v ? atoi(v) : 2;
    v = setting("FAKE_NVML_PROCESS_UTILIZATION");
    c->process_util_supported = !(v && strcmp(v, "not_supported") == 0);
    v = setting("FAKE_NVML_DEVICE_UTILIZATION");
    c->device_util_supported = !(v && strcmp(v, "not_supported") == 0);
    v = setting("FAKE_PROCADDR_INTERNAL_PERCENT");
    c->procaddr_internal_percent = v ? atoi(v) : 100;
    v = setting("FAKE_MODULE_KIB");
    c->module_bytes = (v ? strtoull(v, NULL, 10) : 2048ull) << 10;
    v = setting("FAKE_GPU_PITCH_ALIGNMENT");
    c->pitch_alignment = v ? (unsigned)atoi(v) : 2048u;
    if (c->pitch_alignment == 0 || (c->pitch_alignment & (c->pitch_alignment - 1)) != 0) c->pitch_alignment = 2048u;
}

const struct fake_config *fake_config_get(void) {
    pthread_once(&g_once, load);
    return &g_cfg;
}

int fake_config_find(const char *text) {
    const struct fake_config *c = fake_config_get();
    if (!text || !*text) return -1;
    if (isdigit((unsigned char)text[0])) {
        char *end;
        long i = strtol(text, &end, 10);
        return (*end == '\0' && i >= 0 && i < c->count) ? (int)i : -1;
    }
    int found = -1;
    size_t len = strlen(text);
    for (int i = 0; i < c->count; i++) {
        if (strncasecmp(c->gpus[i].uuid, text, len) == 0) {
            if (found >= 0) return -1; /* ambiguous prefix */
            found = i;
        }
    }
    return found;
}

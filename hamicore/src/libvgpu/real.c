/* real.c - the hook table and lazy resolution of the driver's own functions. */
#define _GNU_SOURCE
#include "real.h"

#include <dlfcn.h>
#include <pthread.h>
#include <string.h>

#include "log.h"
#include "prim.h"
#include "hooks.h"

const struct hami_hook_entry hami_hook_table[HAMI_HOOK_COUNT] = {
#define HAMI_ENTRY(name, lib) [HOOK_##name] = {#name, (void *)hami_##name, lib},
#define HAMI_HELPER_ENTRY(name, lib) [HOOK_##name] = {#name, NULL, lib},
    HAMI_HOOKS(HAMI_ENTRY) HAMI_HELPERS(HAMI_HELPER_ENTRY)
#undef HAMI_ENTRY
#undef HAMI_HELPER_ENTRY
};

_Atomic(void *) hami_real_table[HAMI_HOOK_COUNT];

static pthread_once_t g_cuda_once = PTHREAD_ONCE_INIT;
static pthread_once_t g_nvml_once = PTHREAD_ONCE_INIT;

static void *open_library(const char *soname) {
    /* Prefer the copy the application already loaded (it may have used a full path). */
    void *h = dlopen(soname, RTLD_NOW | RTLD_NOLOAD);
    if (!h) h = dlopen(soname, RTLD_NOW | RTLD_GLOBAL);
    return h;
}

/* Set while this thread loads the driver: a dlsym from the driver's own initialisation must not
 * come back into the (not yet finished) one-time resolution. */
__thread int hami_resolving;

static void resolve_library(int lib, const char *soname) {
    hami_resolving = 1;
    void *h = open_library(soname);
    if (!h) {
        hami_resolving = 0;
        HAMI_DEBUG("%s not loadable: %s", soname, dlerror());
        return;
    }
    for (int i = 0; i < HAMI_HOOK_COUNT; i++) {
        if (hami_hook_table[i].lib != lib) continue;
        void *p = hami_real_dlsym(h, hami_hook_table[i].name);
        /* Never call ourselves: if the lookup came back with our own hook, the driver lacks it. */
        if (p && p == hami_hook_table[i].hook) p = NULL;
        atomic_store_explicit(&hami_real_table[i], p, memory_order_release);
    }
    hami_resolving = 0;
}

static void resolve_cuda(void) { resolve_library(HAMI_LIB_CUDA, "libcuda.so.1"); }
static void resolve_nvml(void) { resolve_library(HAMI_LIB_NVML, "libnvidia-ml.so.1"); }

void *hami_real_slow(int id) {
    if (id < 0 || id >= HAMI_HOOK_COUNT) return NULL;
    if (hami_hook_table[id].lib == HAMI_LIB_CUDA) pthread_once(&g_cuda_once, resolve_cuda);
    else pthread_once(&g_nvml_once, resolve_nvml);
    return atomic_load_explicit(&hami_real_table[id], memory_order_acquire);
}

const struct hami_hook_entry *hami_hook_find(const char *name) {
    if (!name) return NULL;
    for (int i = 0; i < HAMI_FIRST_HELPER; i++)
        if (strcmp(hami_hook_table[i].name, name) == 0) return &hami_hook_table[i];
    return NULL;
}

const struct hami_hook_entry *hami_hook_by_real(void *fn) {
    if (!fn) return NULL;
    for (int i = 0; i < HAMI_FIRST_HELPER; i++)
        if (hami_real(i) == fn) return &hami_hook_table[i];
    return NULL;
}

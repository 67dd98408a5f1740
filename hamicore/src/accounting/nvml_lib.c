/* nvml_lib.c - see nvml_lib.h. */
#define _GNU_SOURCE
#include "nvml_lib.h"

#include <dlfcn.h>
#include <stddef.h>

#include "prim.h"

typedef int (*nvml_void_fn)(void);

void *hami_nvml_open(const char **why) {
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        *why = dlerror();
        return NULL;
    }
    nvml_void_fn init = (nvml_void_fn)hami_real_dlsym(lib, "nvmlInit_v2");
    if (!init || init() != 0) {
        *why = init ? "nvmlInit_v2 failed" : "libnvidia-ml.so.1 has no nvmlInit_v2";
        dlclose(lib);
        return NULL;
    }
    return lib;
}

void hami_nvml_close(void *lib) {
    if (!lib) return;
    nvml_void_fn shutdown = (nvml_void_fn)hami_real_dlsym(lib, "nvmlShutdown");
    if (shutdown) shutdown();
    dlclose(lib);
}

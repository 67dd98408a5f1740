/* nvml_lib.h - loading NVML for hamicore's own use (GPU discovery, the compute limiter's measurement).
 * libnvidia-ml.so.1 is opened RTLD_LOCAL and its functions are resolved through glibc's dlsym, so that
 * libvgpu's own (virtualised) NVML hooks are never in the way. */
#ifndef HAMI_NVML_LIB_H
#define HAMI_NVML_LIB_H

/* Opens NVML and calls nvmlInit_v2. Returns the library handle (resolve functions with
 * hami_real_dlsym), or NULL with *why saying what failed. */
void *hami_nvml_open(const char **why);

/* nvmlShutdown (NVML counts its initialisations) and dlclose. */
void hami_nvml_close(void *lib);

#endif

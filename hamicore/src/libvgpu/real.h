/* real.h - the table of hooked names and the driver's own functions behind them.
 *
 * HAMI_HOOKS lists every exported hook: (name, library). Real pointers are
 * resolved once, lazily, from libcuda.so.1 / libnvidia-ml.so.1 with glibc's
 * dlsym; afterwards a lookup is one relaxed load (no lock, no syscall). */
#ifndef HAMI_REAL_H
#define HAMI_REAL_H

#include <stdatomic.h>

#include "driver_api.h"

#define HAMI_LIB_CUDA 0
#define HAMI_LIB_NVML 1

#define HAMI_HOOKS(X)                                                          \
    X(cuInit, HAMI_LIB_CUDA)                                                   \
    X(cuMemAlloc_v2, HAMI_LIB_CUDA)                                            \
    X(cuMemAllocPitch_v2, HAMI_LIB_CUDA)                                       \
    X(cuMemAllocManaged, HAMI_LIB_CUDA)                                        \
    X(cuMemFree_v2, HAMI_LIB_CUDA)                                             \
    X(cuMemAllocAsync, HAMI_LIB_CUDA)                                          \
    X(cuMemAllocAsync_ptsz, HAMI_LIB_CUDA)                                     \
    X(cuMemAllocFromPoolAsync, HAMI_LIB_CUDA)                                  \
    X(cuMemAllocFromPoolAsync_ptsz, HAMI_LIB_CUDA)                             \
    X(cuMemFreeAsync, HAMI_LIB_CUDA)                                           \
    X(cuMemFreeAsync_ptsz, HAMI_LIB_CUDA)                                      \
    X(cuMemCreate, HAMI_LIB_CUDA)                                              \
    X(cuMemPoolCreate, HAMI_LIB_CUDA)                                          \
    X(cuMemPoolDestroy, HAMI_LIB_CUDA)                                         \
    X(cuDeviceGetDefaultMemPool, HAMI_LIB_CUDA)                                \
    X(cuDeviceGetMemPool, HAMI_LIB_CUDA)                                       \
    X(cuMemRelease, HAMI_LIB_CUDA)                                             \
    X(cuDevicePrimaryCtxRetain, HAMI_LIB_CUDA)                                 \
    X(cuDevicePrimaryCtxRelease_v2, HAMI_LIB_CUDA)                             \
    X(cuDevicePrimaryCtxReset_v2, HAMI_LIB_CUDA)                               \
    X(cuCtxCreate_v2, HAMI_LIB_CUDA)                                           \
    X(cuCtxCreate_v3, HAMI_LIB_CUDA)                                           \
    X(cuCtxCreate_v4, HAMI_LIB_CUDA)                                           \
    X(cuCtxDestroy_v2, HAMI_LIB_CUDA)                                          \
    X(cuModuleLoad, HAMI_LIB_CUDA)                                             \
    X(cuModuleLoadData, HAMI_LIB_CUDA)                                         \
    X(cuModuleLoadFatBinary, HAMI_LIB_CUDA)                                    \
    X(cuModuleLoadDataEx, HAMI_LIB_CUDA)                                       \
    X(cuModuleUnload, HAMI_LIB_CUDA)                                           \
    X(cuLibraryLoadData, HAMI_LIB_CUDA)                                        \
    X(cuLibraryLoadFromFile, HAMI_LIB_CUDA)                                    \
    X(cuLibraryUnload, HAMI_LIB_CUDA)                                          \
    X(cuArrayCreate_v2, HAMI_LIB_CUDA)                                         \
    X(cuArray3DCreate_v2, HAMI_LIB_CUDA)                                       \
    X(cuArrayDestroy, HAMI_LIB_CUDA)                                           \
    X(cuMipmappedArrayCreate, HAMI_LIB_CUDA)                                   \
    X(cuMipmappedArrayDestroy, HAMI_LIB_CUDA)                                  \
    X(cuMemPoolTrimTo, HAMI_LIB_CUDA)                                          \
    X(cuMemPoolSetAttribute, HAMI_LIB_CUDA)                                    \
    X(cuGraphAddMemAllocNode, HAMI_LIB_CUDA)                                   \
    X(cuGraphDestroy, HAMI_LIB_CUDA)                                           \
    X(cuGraphInstantiateWithFlags, HAMI_LIB_CUDA)                              \
    X(cuGraphInstantiateWithParams, HAMI_LIB_CUDA)                             \
    X(cuGraphExecDestroy, HAMI_LIB_CUDA)                                       \
    X(cuMemAlloc, HAMI_LIB_CUDA)                                               \
    X(cuMemAllocPitch, HAMI_LIB_CUDA)                                          \
    X(cuMemFree, HAMI_LIB_CUDA)                                                \
    X(cuMemGetInfo, HAMI_LIB_CUDA)                                             \
    X(cuDeviceTotalMem, HAMI_LIB_CUDA)                                         \
    X(cuDeviceGraphMemTrim, HAMI_LIB_CUDA)                                     \
    X(cuMemGetInfo_v2, HAMI_LIB_CUDA)                                          \
    X(cuDeviceTotalMem_v2, HAMI_LIB_CUDA)                                      \
    X(cuLaunchKernel, HAMI_LIB_CUDA)                                           \
    X(cuLaunchKernel_ptsz, HAMI_LIB_CUDA)                                      \
    X(cuLaunchKernelEx, HAMI_LIB_CUDA)                                         \
    X(cuLaunchKernelEx_ptsz, HAMI_LIB_CUDA)                                    \
    X(cuLaunchCooperativeKernel, HAMI_LIB_CUDA)                                \
    X(cuLaunchCooperativeKernel_ptsz, HAMI_LIB_CUDA)                           \
    X(cuGraphLaunch, HAMI_LIB_CUDA)                                            \
    X(cuGraphLaunch_ptsz, HAMI_LIB_CUDA)                                       \
    X(cuGetProcAddress, HAMI_LIB_CUDA)                                         \
    X(cuGetProcAddress_v2, HAMI_LIB_CUDA)                                      \
    X(nvmlDeviceGetMemoryInfo, HAMI_LIB_NVML)                                  \
    X(nvmlDeviceGetMemoryInfo_v2, HAMI_LIB_NVML)

/* Driver functions libvgpu calls but does not hook. */
#define HAMI_HELPERS(X)                                                        \
    X(cuCtxGetDevice, HAMI_LIB_CUDA)                                           \
    X(cuDeviceGetCount, HAMI_LIB_CUDA)                                         \
    X(cuDeviceGet, HAMI_LIB_CUDA)                                              \
    X(cuDeviceGetUuid_v2, HAMI_LIB_CUDA)                                       \
    X(cuDeviceGetUuid, HAMI_LIB_CUDA)                                          \
    X(cuDeviceGetAttribute, HAMI_LIB_CUDA)                                     \
    X(cuStreamGetDevice, HAMI_LIB_CUDA)                                        \
    X(cuArrayGetMemoryRequirements, HAMI_LIB_CUDA)                             \
    X(cuMipmappedArrayGetMemoryRequirements, HAMI_LIB_CUDA)                    \
    X(cuMemPoolGetAttribute, HAMI_LIB_CUDA)                                    \
    X(cuDeviceGetGraphMemAttribute, HAMI_LIB_CUDA)                             \
    X(nvmlDeviceGetUUID, HAMI_LIB_NVML)

enum hami_hook_id {
#define HAMI_ENUM(name, lib) HOOK_##name,
    HAMI_HOOKS(HAMI_ENUM) HAMI_HELPERS(HAMI_ENUM)
#undef HAMI_ENUM
    HAMI_HOOK_COUNT
};

#define HAMI_FIRST_HELPER HOOK_cuCtxGetDevice

struct hami_hook_entry {
    const char *name;
    void *hook;     /* our exported function (NULL for helpers) */
    int lib;
};

extern const struct hami_hook_entry hami_hook_table[HAMI_HOOK_COUNT];
extern _Atomic(void *) hami_real_table[HAMI_HOOK_COUNT];

/* Resolves the driver's pointers (once) and returns the one for id (may be NULL). */
void *hami_real_slow(int id);

static inline void *hami_real(int id) {
    void *p = atomic_load_explicit(&hami_real_table[id], memory_order_relaxed);
    if (HAMI_LIKELY(p != NULL)) return p;
    return hami_real_slow(id);
}
#define REAL(name, type) ((type)hami_real(HOOK_##name))

/* Hook entry for an exported driver name, or NULL. */
const struct hami_hook_entry *hami_hook_find(const char *name);
/* Hook whose driver pointer is fn, or NULL. */
const struct hami_hook_entry *hami_hook_by_real(void *fn);

/* Non-zero while this thread resolves the driver's functions (re-entrancy guard for dlsym). */
extern __thread int hami_resolving;

/* glibc's dlsym, for the dlsym trampoline. */
extern void *(*hami_glibc_dlsym)(void *, const char *);

#endif

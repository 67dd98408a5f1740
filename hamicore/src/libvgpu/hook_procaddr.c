/* hook_procaddr.c - cuGetProcAddress and cuGetProcAddress_v2.
 *
 * The driver is asked first, with the caller's version and flags, so its answer
 * (and symbolStatus) is authoritative. If the pointer it returns is one of the
 * functions we hook, the caller gets our hook for exactly that variant instead:
 * matched by pointer, or else by the driver's naming rules for the requested
 * version (_v2 since CUDA 3.2, cuGetProcAddress_v2 since 12.0) and the
 * per-thread default stream flag (_ptsz). Anything else keeps the driver's pointer. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include "hooks.h"
#include "real.h"

struct versioned_name {
    const char *base;
    int since;           /* first CUDA version (1000*major + 10*minor) of the suffixed variant */
    const char *suffix;
    int per_thread;      /* has a _ptsz variant */
};

static const struct versioned_name g_rules[] = {
    {"cuMemAlloc", 3020, "_v2", 0},         {"cuMemAllocPitch", 3020, "_v2", 0},
    {"cuMemFree", 3020, "_v2", 0},          {"cuMemGetInfo", 3020, "_v2", 0},
    {"cuDeviceTotalMem", 3020, "_v2", 0},   {"cuGetProcAddress", 12000, "_v2", 0},
    {"cuMemAllocAsync", 0, "", 1},          {"cuMemAllocFromPoolAsync", 0, "", 1},
    {"cuMemFreeAsync", 0, "", 1},           {"cuLaunchKernel", 0, "", 1},
    {"cuLaunchKernelEx", 0, "", 1},         {"cuLaunchCooperativeKernel", 0, "", 1},
    {"cuGraphLaunch", 0, "", 1},            {"cuMemAllocManaged", 0, "", 0},
    {"cuMemCreate", 0, "", 0},              {"cuMemRelease", 0, "", 0},
    {"cuInit", 0, "", 0},                   {"cuMemPoolCreate", 0, "", 0},
    {"cuMemPoolDestroy", 0, "", 0},         {"cuDeviceGetDefaultMemPool", 0, "", 0},
    {"cuDeviceGetMemPool", 0, "", 0},       {"cuDevicePrimaryCtxRetain", 0, "", 0},
    {"cuDevicePrimaryCtxRelease", 11000, "_v2", 0}, {"cuCtxCreate", 12050, "_v4", 0},
    {"cuCtxCreate", 11040, "_v3", 0},       {"cuCtxCreate", 3020, "_v2", 0},
    {"cuDevicePrimaryCtxReset", 11000, "_v2", 0}, {"cuModuleLoad", 0, "", 0},
    {"cuModuleLoadData", 0, "", 0},         {"cuModuleLoadDataEx", 0, "", 0},
    {"cuModuleLoadFatBinary", 0, "", 0},    {"cuLibraryLoadFromFile", 0, "", 0},
    {"cuModuleUnload", 0, "", 0},           {"cuLibraryLoadData", 0, "", 0},
    {"cuLibraryUnload", 0, "", 0},          {"cuArrayCreate", 3020, "_v2", 0},
    {"cuArray3DCreate", 3020, "_v2", 0},    {"cuArrayDestroy", 0, "", 0},
    {"cuMipmappedArrayCreate", 0, "", 0},   {"cuMipmappedArrayDestroy", 0, "", 0},
    {"cuMemPoolTrimTo", 0, "", 0},          {"cuMemPoolSetAttribute", 0, "", 0},
    {"cuGraphAddMemAllocNode", 0, "", 0},   {"cuGraphDestroy", 0, "", 0},
    {"cuGraphInstantiateWithFlags", 0, "", 0}, {"cuGraphInstantiateWithParams", 0, "", 0},
    {"cuGraphExecDestroy", 0, "", 0},       {"cuDeviceGraphMemTrim", 0, "", 0},        {"cuCtxDestroy", 4000, "_v2", 0},
};

static const struct hami_hook_entry *hook_by_rules(const char *symbol, int version, cuuint64_t flags) {
    for (size_t i = 0; i < sizeof g_rules / sizeof g_rules[0]; i++) {
        const struct versioned_name *v = &g_rules[i];
        if (strcmp(symbol, v->base) != 0 || (version < v->since && v->suffix[0] && i + 1 < sizeof g_rules / sizeof g_rules[0] &&
                                              strcmp(g_rules[i + 1].base, v->base) == 0))
            continue; /* an older suffixed variant of the same name follows (cuCtxCreate: _v4, then _v2) */
        char name[96];
        const char *suffix = version >= v->since ? v->suffix : "";
        const char *pt = (v->per_thread && (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM)) ? "_ptsz" : "";
        snprintf(name, sizeof name, "%s%s%s", v->base, suffix, pt);
        return hami_hook_find(name); /* legacy (pre-3.2) variants are not hooked: NULL */
    }
    return NULL;
}

static void substitute(const char *symbol, void **pfn, int version, cuuint64_t flags) {
    if (!symbol || !pfn || !*pfn) return;
    const struct hami_hook_entry *h = hami_hook_by_real(*pfn);
    if (!h) h = hook_by_rules(symbol, version, flags);
    if (h && h->hook) *pfn = h->hook;
}

CUresult hami_cuGetProcAddress_v2(const char *symbol, void **pfn, int cuda_version, cuuint64_t flags,
                                  CUdriverProcAddressQueryResult *status) {
    pfn_cuGetProcAddress_v2 real = REAL(cuGetProcAddress_v2, pfn_cuGetProcAddress_v2);
    if (!real) return CUDA_ERROR_NOT_FOUND;
    CUresult rc = real(symbol, pfn, cuda_version, flags, status);
    if (rc == CUDA_SUCCESS) substitute(symbol, pfn, cuda_version, flags);
    return rc;
}

CUresult hami_cuGetProcAddress(const char *symbol, void **pfn, int cuda_version, cuuint64_t flags) {
    pfn_cuGetProcAddress real = REAL(cuGetProcAddress, pfn_cuGetProcAddress);
    if (!real) return CUDA_ERROR_NOT_FOUND;
    CUresult rc = real(symbol, pfn, cuda_version, flags);
    if (rc == CUDA_SUCCESS) substitute(symbol, pfn, cuda_version, flags);
    return rc;
}

/* hook_memory.c - accounted device allocations. Every allocation reserves its
 * bytes against the container budget BEFORE the driver is called and gives
 * them back if the driver fails; every free of a tracked pointer returns them
 * after the driver succeeded. NULL or unknown arguments go to the driver
 * untouched, and a free of an untracked pointer still reaches the driver. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "config.h"
#include "log.h"
#include "region.h"
#include "alloc_table.h"
#include "devmap.h"
#include "hooks.h"
#include "pools.h"
#include "real.h"

/* Reserve, call the driver through `call`, roll back on failure, remember the result. */
#define ACCOUNTED_ALLOC(idx, bytes, table, key_expr, call)                                   \
    do {                                                                                     \
        if (hami_reserve(r, (idx), (bytes)) == HAMI_OVER_LIMIT) return CUDA_ERROR_OUT_OF_MEMORY; \
        CUresult rc_ = (call);                                                               \
        if (rc_ != CUDA_SUCCESS) {                                                           \
            hami_release(r, (idx), (bytes));                                                 \
            return rc_;                                                                      \
        }                                                                                    \
        if (hami_table_insert((table), (uint64_t)(key_expr), (bytes), (idx)) != 0) {        \
            HAMI_WARN("allocation table full: %llu bytes on device %d stay counted",          \
                      (unsigned long long)(bytes), (idx));                                   \
        }                                                                                    \
        return rc_;                                                                          \
    } while (0)

static CUresult not_in_driver(const char *name) {
    HAMI_ERROR("the CUDA driver has no %s", name);
    return CUDA_ERROR_NOT_FOUND;
}

/* cuMemAlloc_v2 as the driver does it, except that with oversubscription an allocation the card cannot hold (the
 * budget, larger than the card's share, admitted it) is served from managed memory, which the driver pages between
 * host and device: it spills to host memory instead of failing, at the price of page migration. */
static CUresult device_or_managed(pfn_cuMemAlloc real, CUdeviceptr *dptr, size_t bytesize) {
    CUresult rc = real(dptr, bytesize);
    if (rc != CUDA_ERROR_OUT_OF_MEMORY) return rc;
    /* Oversubscription is the spec's (HAMI_SPEC_OVERSUBSCRIBE, set by the device plugin when memory-scaling > 1),
     * or CUDA_OVERSUBSCRIBE's where there is no spec: read once per process, with the rest of the configuration. */
    pfn_cuMemAllocManaged managed = REAL(cuMemAllocManaged, pfn_cuMemAllocManaged);
    if (!hami_config_get()->oversubscribe || !managed) return rc;
    rc = managed(dptr, bytesize, CU_MEM_ATTACH_GLOBAL);
    if (rc == CUDA_SUCCESS)
        HAMI_INFO("oversubscription: %llu bytes served from managed memory (the GPU is full)",
                  (unsigned long long)bytesize);
    return rc;
}

CUresult hami_cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    pfn_cuMemAlloc real = REAL(cuMemAlloc_v2, pfn_cuMemAlloc);
    if (!real) return not_in_driver("cuMemAlloc_v2");
    struct hami_region *r = hami_region_get();
    int idx;
    if (!r || !dptr || bytesize == 0 || (idx = hami_index_of_current(r)) < 0) return real(dptr, bytesize);
    ACCOUNTED_ALLOC(idx, bytesize, HAMI_TABLE_POINTERS, *dptr, device_or_managed(real, dptr, bytesize));
}

CUresult hami_cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
    pfn_cuMemAllocManaged real = REAL(cuMemAllocManaged, pfn_cuMemAllocManaged);
    if (!real) return not_in_driver("cuMemAllocManaged");
    struct hami_region *r = hami_region_get();
    int idx;
    if (!r || !dptr || bytesize == 0 || (idx = hami_index_of_current(r)) < 0) return real(dptr, bytesize, flags);
    ACCOUNTED_ALLOC(idx, bytesize, HAMI_TABLE_POINTERS, *dptr, real(dptr, bytesize, flags));
}

/* The driver picks the pitch; reserve a 512-byte-aligned estimate, then settle on pitch * height. */
CUresult hami_cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                                 unsigned int elem) {
    pfn_cuMemAllocPitch real = REAL(cuMemAllocPitch_v2, pfn_cuMemAllocPitch);
    if (!real) return not_in_driver("cuMemAllocPitch_v2");
    struct hami_region *r = hami_region_get();
    int idx;
    if (!r || !dptr || !pitch || width == 0 || height == 0 || width > (SIZE_MAX - 511) ||
        (idx = hami_index_of_current(r)) < 0)
        return real(dptr, pitch, width, height, elem);
    size_t row = (width + 511) & ~(size_t)511;
    if (row > SIZE_MAX / height) return real(dptr, pitch, width, height, elem);
    uint64_t estimate = (uint64_t)row * height;
    if (hami_reserve(r, idx, estimate) == HAMI_OVER_LIMIT) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = real(dptr, pitch, width, height, elem);
    if (rc != CUDA_SUCCESS) {
        hami_release(r, idx, estimate);
        return rc;
    }
    uint64_t actual = (uint64_t)*pitch * height;
    if (actual > estimate) {
        if (hami_reserve(r, idx, actual - estimate) == HAMI_OVER_LIMIT) {
            pfn_cuMemFree free_fn = REAL(cuMemFree_v2, pfn_cuMemFree);
            if (free_fn) free_fn(*dptr);
            hami_release(r, idx, estimate);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
    } else if (actual < estimate) {
        hami_release(r, idx, estimate - actual);
    }
    if (hami_table_insert(HAMI_TABLE_POINTERS, (uint64_t)*dptr, actual, idx) != 0)
        HAMI_WARN("allocation table full: %llu bytes on device %d stay counted", (unsigned long long)actual, idx);
    return rc;
}

static CUresult free_tracked(CUdeviceptr dptr, CUresult (*call)(CUdeviceptr, CUstream, void *), CUstream s,
                             void *fn) {
    struct hami_alloc_info info;
    int tracked = hami_table_take(HAMI_TABLE_POINTERS, (uint64_t)dptr, &info);
    CUresult rc = call(dptr, s, fn);
    if (!tracked) return rc;
    if (rc != CUDA_SUCCESS) hami_table_insert(HAMI_TABLE_POINTERS, (uint64_t)dptr, info.bytes, info.dev); /* still allocated */
    else if (info.bytes == HAMI_POOL_ALLOCATION) hami_pools_settle(hami_region_get(), info.dev); /* the pool keeps it */
    else hami_release(hami_region_get(), info.dev, info.bytes);
    return rc;
}

static CUresult call_free(CUdeviceptr p, CUstream s, void *fn) {
    (void)s;
    return ((pfn_cuMemFree)fn)(p);
}
static CUresult call_free_async(CUdeviceptr p, CUstream s, void *fn) { return ((pfn_cuMemFreeAsync)fn)(p, s); }

CUresult hami_cuMemFree_v2(CUdeviceptr dptr) {
    pfn_cuMemFree real = REAL(cuMemFree_v2, pfn_cuMemFree);
    if (!real) return not_in_driver("cuMemFree_v2");
    if (!dptr) return real(dptr);
    return free_tracked(dptr, call_free, NULL, (void *)real);
}

CUresult hami_cuMemFreeAsync(CUdeviceptr dptr, CUstream stream) {
    pfn_cuMemFreeAsync real = REAL(cuMemFreeAsync, pfn_cuMemFreeAsync);
    if (!real) return not_in_driver("cuMemFreeAsync");
    if (!dptr) return real(dptr, stream);
    return free_tracked(dptr, call_free_async, stream, (void *)real);
}

CUresult hami_cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream) {
    pfn_cuMemFreeAsync real = REAL(cuMemFreeAsync_ptsz, pfn_cuMemFreeAsync);
    if (!real) return not_in_driver("cuMemFreeAsync_ptsz");
    if (!dptr) return real(dptr, stream);
    return free_tracked(dptr, call_free_async, stream, (void *)real);
}

/* VMM: only physical memory on a device counts; host/NUMA locations pass through. */
CUresult hami_cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                          unsigned long long flags) {
    pfn_cuMemCreate real = REAL(cuMemCreate, pfn_cuMemCreate);
    if (!real) return not_in_driver("cuMemCreate");
    struct hami_region *r = hami_region_get();
    int idx;
    if (!r || !handle || !prop || size == 0 || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
        (idx = hami_index_of_cuda_device(r, (CUdevice)prop->location.id)) < 0)
        return real(handle, size, prop, flags);
    ACCOUNTED_ALLOC(idx, size, HAMI_TABLE_HANDLES, *handle, real(handle, size, prop, flags));
}

CUresult hami_cuMemRelease(CUmemGenericAllocationHandle handle) {
    pfn_cuMemRelease real = REAL(cuMemRelease, pfn_cuMemRelease);
    if (!real) return not_in_driver("cuMemRelease");
    struct hami_alloc_info info;
    int tracked = hami_table_take(HAMI_TABLE_HANDLES, (uint64_t)handle, &info);
    CUresult rc = real(handle);
    if (!tracked) return rc;
    if (rc == CUDA_SUCCESS) hami_release(hami_region_get(), info.dev, info.bytes);
    else hami_table_insert(HAMI_TABLE_HANDLES, (uint64_t)handle, info.bytes, info.dev);
    return rc;
}

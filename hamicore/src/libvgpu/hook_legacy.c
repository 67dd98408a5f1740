/* hook_legacy.c - the driver's pre-3.2 entry points with 32-bit sizes and pointers (cuMemAlloc, cuMemAllocPitch,
 * cuMemFree, cuMemGetInfo, cuDeviceTotalMem without _v2). No header newer than CUDA 3.1 calls them, but the driver
 * still exports them, and dlsym or cuGetProcAddress with a version below 3020 reaches them: without these hooks they
 * would be a way around the budget. Accounted and virtualised like their _v2 counterparts. */
#define _GNU_SOURCE
#include <stdint.h>

#include "alloc_table.h"
#include "budget.h"
#include "devmap.h"
#include "hooks.h"
#include "log.h"
#include "real.h"
#include "region.h"

static CUresult not_in_driver(const char *name) {
    HAMI_ERROR("the CUDA driver has no %s", name);
    return CUDA_ERROR_NOT_FOUND;
}

CUresult hami_cuMemAlloc(hami_deviceptr_v1 *dptr, unsigned int bytesize) {
    pfn_cuMemAlloc_v1 real = REAL(cuMemAlloc, pfn_cuMemAlloc_v1);
    if (!real) return not_in_driver("cuMemAlloc");
    struct hami_region *r = hami_region_get();
    int idx;
    if (!r || !dptr || bytesize == 0 || (idx = hami_index_of_current(r)) < 0) return real(dptr, bytesize);
    if (hami_reserve(r, idx, bytesize) == HAMI_OVER_LIMIT) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = real(dptr, bytesize);
    if (rc != CUDA_SUCCESS) hami_release(r, idx, bytesize);
    else if (hami_table_insert(HAMI_TABLE_POINTERS, (uint64_t)*dptr, bytesize, idx) != 0)
        HAMI_WARN("allocation table full: %u bytes on device %d stay counted", bytesize, idx);
    return rc;
}

CUresult hami_cuMemAllocPitch(hami_deviceptr_v1 *dptr, unsigned int *pitch, unsigned int width, unsigned int height,
                              unsigned int elem) {
    pfn_cuMemAllocPitch_v1 real = REAL(cuMemAllocPitch, pfn_cuMemAllocPitch_v1);
    if (!real) return not_in_driver("cuMemAllocPitch");
    struct hami_region *r = hami_region_get();
    int idx;
    if (!r || !dptr || !pitch || width == 0 || height == 0 || (idx = hami_index_of_current(r)) < 0)
        return real(dptr, pitch, width, height, elem);
    uint64_t estimate = (((uint64_t)width + 511) & ~511ull) * height;
    if (hami_reserve(r, idx, estimate) == HAMI_OVER_LIMIT) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = real(dptr, pitch, width, height, elem);
    if (rc != CUDA_SUCCESS) {
        hami_release(r, idx, estimate);
        return rc;
    }
    uint64_t actual = (uint64_t)*pitch * height;
    if (actual > estimate && hami_reserve(r, idx, actual - estimate) == HAMI_OVER_LIMIT) {
        pfn_cuMemFree_v1 free_fn = REAL(cuMemFree, pfn_cuMemFree_v1);
        if (free_fn) free_fn(*dptr);
        hami_release(r, idx, estimate);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (actual < estimate) hami_release(r, idx, estimate - actual);
    if (hami_table_insert(HAMI_TABLE_POINTERS, (uint64_t)*dptr, actual, idx) != 0)
        HAMI_WARN("allocation table full: %llu bytes on device %d stay counted", (unsigned long long)actual, idx);
    return rc;
}

CUresult hami_cuMemFree(hami_deviceptr_v1 dptr) {
    pfn_cuMemFree_v1 real = REAL(cuMemFree, pfn_cuMemFree_v1);
    if (!real) return not_in_driver("cuMemFree");
    struct hami_alloc_info info;
    int tracked = dptr && hami_table_take(HAMI_TABLE_POINTERS, (uint64_t)dptr, &info);
    CUresult rc = real(dptr);
    if (!tracked) return rc;
    if (rc == CUDA_SUCCESS) hami_release(hami_region_get(), info.dev, info.bytes);
    else hami_table_insert(HAMI_TABLE_POINTERS, (uint64_t)dptr, info.bytes, info.dev);
    return rc;
}

/* The 32-bit views: the _v2 hooks' answers, clamped to 4 GiB - 1 as the driver clamps. */
CUresult hami_cuMemGetInfo(unsigned int *free_bytes, unsigned int *total_bytes) {
    size_t f = 0, t = 0;
    CUresult rc = hami_cuMemGetInfo_v2(&f, &t);
    if (rc != CUDA_SUCCESS) return rc;
    if (!free_bytes || !total_bytes) return CUDA_ERROR_INVALID_VALUE;
    *free_bytes = f > UINT32_MAX ? UINT32_MAX : (unsigned int)f;
    *total_bytes = t > UINT32_MAX ? UINT32_MAX : (unsigned int)t;
    return rc;
}

CUresult hami_cuDeviceTotalMem(unsigned int *bytes, CUdevice dev) {
    size_t t = 0;
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = hami_cuDeviceTotalMem_v2(&t, dev);
    if (rc == CUDA_SUCCESS) *bytes = t > UINT32_MAX ? UINT32_MAX : (unsigned int)t;
    return rc;
}

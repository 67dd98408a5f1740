/* hook_info.c - cuInit (attaches early so the first allocation is cheap) and the
 * virtualised memory views: total = min(limit, physical), free = total - used,
 * clamped at zero and never above what the driver reports free. */
#define _GNU_SOURCE
#include "log.h"
#include "region.h"
#include "devmap.h"
#include "limiter.h"
#include "hooks.h"
#include "pools.h"
#include "real.h"

CUresult hami_cuInit(unsigned int flags) {
    pfn_cuInit real = REAL(cuInit, pfn_cuInit);
    if (!real) return CUDA_ERROR_NO_DEVICE;
    CUresult rc = real(flags);
    if (rc == CUDA_SUCCESS) {
        struct hami_region *r = hami_region_get();
        if (r) {
            hami_region_self_slot(r);
            hami_index_of_cuda_device(r, 0); /* builds the ordinal map once */
            hami_limiter_start(r);
        }
    }
    return rc;
}

static void clamp_view(struct hami_region *r, int idx, uint64_t *free_bytes, uint64_t *total_bytes) {
    hami_pools_settle(r, idx); /* what pools gave back at synchronisations */
    const struct hami_device_record *d = &r->devices[idx];
    uint64_t limit = hami_enforced_limit(r, idx);
    uint64_t used = atomic_load_explicit(&d->used_bytes, memory_order_relaxed);
    uint64_t total = *total_bytes < limit ? *total_bytes : limit;
    uint64_t free_view = total > used ? total - used : 0;
    if (free_view > *free_bytes) free_view = *free_bytes;
    *total_bytes = total;
    *free_bytes = free_view;
}

CUresult hami_cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    pfn_cuMemGetInfo real = REAL(cuMemGetInfo_v2, pfn_cuMemGetInfo);
    if (!real) return CUDA_ERROR_NOT_FOUND;
    CUresult rc = real(free_bytes, total_bytes);
    struct hami_region *r;
    int idx;
    if (rc != CUDA_SUCCESS || (!free_bytes && !total_bytes) || !(r = hami_region_get()) ||
        (idx = hami_index_of_current(r)) < 0 || hami_enforced_limit(r, idx) == 0)
        return rc;
    uint64_t f = free_bytes ? *free_bytes : UINT64_MAX;
    uint64_t t = total_bytes ? *total_bytes : UINT64_MAX;
    clamp_view(r, idx, &f, &t);
    if (free_bytes) *free_bytes = (size_t)f;
    if (total_bytes) *total_bytes = (size_t)t;
    return rc;
}

CUresult hami_cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    pfn_cuDeviceTotalMem real = REAL(cuDeviceTotalMem_v2, pfn_cuDeviceTotalMem);
    if (!real) return CUDA_ERROR_NOT_FOUND;
    CUresult rc = real(bytes, dev);
    struct hami_region *r;
    int idx;
    if (rc != CUDA_SUCCESS || !bytes || !(r = hami_region_get()) || (idx = hami_index_of_cuda_device(r, dev)) < 0)
        return rc;
    uint64_t limit = hami_enforced_limit(r, idx);
    if (limit && limit < *bytes) *bytes = (size_t)limit;
    return rc;
}

nvmlReturn_t hami_nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    pfn_nvmlDeviceGetMemoryInfo real = REAL(nvmlDeviceGetMemoryInfo, pfn_nvmlDeviceGetMemoryInfo);
    if (!real) return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t rc = real(device, memory);
    struct hami_region *r;
    int idx;
    if (rc != NVML_SUCCESS || !memory || !(r = hami_region_get()) || (idx = hami_index_of_nvml(r, device)) < 0 ||
        hami_enforced_limit(r, idx) == 0)
        return rc;
    uint64_t f = UINT64_MAX, t = memory->total;
    clamp_view(r, idx, &f, &t);
    memory->total = t;
    memory->free = f;
    memory->used = t - f;
    return rc;
}

nvmlReturn_t hami_nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    pfn_nvmlDeviceGetMemoryInfo_v2 real = REAL(nvmlDeviceGetMemoryInfo_v2, pfn_nvmlDeviceGetMemoryInfo_v2);
    if (!real) return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t rc = real(device, memory);
    struct hami_region *r;
    int idx;
    if (rc != NVML_SUCCESS || !memory || !(r = hami_region_get()) || (idx = hami_index_of_nvml(r, device)) < 0 ||
        hami_enforced_limit(r, idx) == 0)
        return rc;
    uint64_t f = UINT64_MAX, t = memory->total;
    clamp_view(r, idx, &f, &t);
    memory->total = t;
    memory->reserved = 0;
    memory->free = f;
    memory->used = t - f;
    return rc;
}

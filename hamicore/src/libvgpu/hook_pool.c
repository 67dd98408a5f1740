/* hook_pool.c - stream-ordered allocations (cuMemAllocAsync, cuMemAllocFromPoolAsync) and their pools.
 *
 * A pool holds device memory beyond what is allocated from it: cuMemFreeAsync returns a block to the pool, which
 * keeps it for reuse until a synchronisation trims the pool to its release threshold (default 0; frameworks set it
 * high to keep memory) or cuMemPoolTrimTo does. So the budget charges each pool what it *reserves*
 * (CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), not what is allocated from it: an allocation reserves the part the pool
 * cannot serve from its free memory before the driver is called, and the pool's charge is then settled on what the
 * driver says it reserves; a free settles the pool again (usually nothing changes: the pool keeps the memory).
 * Settling is an exchange on the pool's recorded charge and a budget adjustment by the difference: no lock; two
 * racing settles may apply a stale reading, which the next settle corrects. Synchronisations are not hooked, so
 * memory a pool gives back there is returned at the next settle: an allocation that would be refused, cuMemGetInfo
 * and NVML's memory view settle first (hami_before_refusal). Host-located pools are not charged; a pool never seen (created before
 * libvgpu, or by another library without the hooked calls) counts on the stream's device. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>

#include "alloc_table.h"
#include "budget.h"
#include "devmap.h"
#include "hooks.h"
#include "log.h"
#include "pools.h"
#include "real.h"
#include "region.h"

/* Where a pool lives: recorded when pools are created or looked up (HAMI_POOL_HOST = not device memory). */
#define HAMI_POOL_HOST (-2)

/* The pools this process has seen on a device, for settling them all (at most HAMI_KNOWN_POOLS; more are still
 * charged, settled only by their own allocations and frees). */
#define HAMI_KNOWN_POOLS 64
static _Atomic(CUmemoryPool) g_known[HAMI_KNOWN_POOLS];

static CUresult not_in_driver(const char *name) {
    HAMI_ERROR("the CUDA driver has no %s", name);
    return CUDA_ERROR_NOT_FOUND;
}

static pthread_once_t g_install_once = PTHREAD_ONCE_INIT;

static void install_settle_before_refusal(void);

static void remember_pool(CUmemoryPool pool, int idx) {
    struct hami_alloc_info info;
    if (!pool || hami_table_find(HAMI_TABLE_POOLS, (uint64_t)(uintptr_t)pool, &info)) return;
    hami_pools_watch();
    if (hami_table_insert(HAMI_TABLE_POOLS, (uint64_t)(uintptr_t)pool, 0, idx) != 0) return;
    for (int i = 0; i < HAMI_KNOWN_POOLS; i++) {
        CUmemoryPool empty = NULL;
        if (atomic_compare_exchange_strong(&g_known[i], &empty, pool)) return;
    }
}

static void forget_pool(CUmemoryPool pool) {
    for (int i = 0; i < HAMI_KNOWN_POOLS; i++) {
        CUmemoryPool cur = pool;
        if (atomic_compare_exchange_strong(&g_known[i], &cur, NULL)) return;
    }
}

static int pool_attribute(CUmemoryPool pool, CUmemPool_attribute attr, uint64_t *value) {
    pfn_cuMemPoolGetAttribute get = REAL(cuMemPoolGetAttribute, pfn_cuMemPoolGetAttribute);
    cuuint64_t v = 0;
    if (!get || get(pool, attr, &v) != CUDA_SUCCESS) return -1;
    *value = v;
    return 0;
}

/* Settles one pool's charge on what it reserves now; `prepaid` bytes were reserved for it outside its record. */
static void settle(struct hami_region *r, CUmemoryPool pool, int idx, uint64_t prepaid) {
    uint64_t reserved;
    if (pool_attribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved) != 0) {
        /* A driver that cannot say: the prepaid bytes stay with the pool. */
        reserved = 0;
        struct hami_alloc_info info;
        if (!hami_table_find(HAMI_TABLE_POOLS, (uint64_t)(uintptr_t)pool, &info)) return;
        reserved = info.bytes + prepaid;
    }
    uint64_t before;
    if (!hami_table_exchange_bytes(HAMI_TABLE_POOLS, (uint64_t)(uintptr_t)pool, reserved, &before)) {
        hami_release(r, idx, prepaid);
        return;
    }
    uint64_t charged = before + prepaid;
    if (reserved > charged && hami_reserve(r, idx, reserved - charged) == HAMI_OVER_LIMIT) {
        /* The pool grew past the budget between our reservation and the driver's answer (racing allocations):
         * record what is charged; the next settle tries again. */
        hami_table_exchange_bytes(HAMI_TABLE_POOLS, (uint64_t)(uintptr_t)pool, charged, &before);
    } else if (reserved < charged) {
        hami_release(r, idx, charged - reserved);
    }
}

static _Thread_local int t_settling; /* settle may reserve, whose refusal would settle again */

void hami_pools_settle(struct hami_region *r, int idx) {
    if (!r || idx < 0 || t_settling) return;
    t_settling = 1;
    hami_graph_pool_settle(r, idx);
    for (int i = 0; i < HAMI_KNOWN_POOLS; i++) {
        CUmemoryPool pool = atomic_load_explicit(&g_known[i], memory_order_acquire);
        struct hami_alloc_info info;
        if (pool && hami_table_find(HAMI_TABLE_POOLS, (uint64_t)(uintptr_t)pool, &info) && info.dev == idx)
            settle(r, pool, idx, 0);
    }
    t_settling = 0;
}

/* Installed once the process has a pool to settle (a pool cannot give back what it never held). */
static void install_settle_before_refusal(void) { atomic_store(&hami_before_refusal, hami_pools_settle); }

void hami_pools_watch(void) { pthread_once(&g_install_once, install_settle_before_refusal); }

/* An allocation from `pool` on limit index idx: reserve what the pool cannot serve from its free memory, call the
 * driver, settle the pool. The pointer is recorded as a pool allocation (its bytes stay the pool's when freed). */
static CUresult pool_allocation(struct hami_region *r, int idx, CUmemoryPool pool, size_t bytesize,
                                CUdeviceptr *dptr, CUresult (*call)(void *), void *args) {
    uint64_t reserved = 0, used = 0, need = bytesize;
    if (pool_attribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved) == 0 &&
        pool_attribute(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used) == 0 && reserved > used)
        need = reserved - used >= bytesize ? 0 : bytesize - (reserved - used);
    if (need && hami_reserve(r, idx, need) == HAMI_OVER_LIMIT) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = call(args);
    settle(r, pool, idx, need);
    if (rc == CUDA_SUCCESS &&
        hami_table_insert(HAMI_TABLE_POINTERS, (uint64_t)*dptr, HAMI_POOL_ALLOCATION, idx) != 0)
        HAMI_WARN("allocation table full: a pool allocation on device %d is not tracked", idx);
    return rc;
}

struct async_args {
    pfn_cuMemAllocAsync real;
    CUdeviceptr *dptr;
    size_t bytesize;
    CUstream stream;
};
static CUresult run_async(void *p) {
    struct async_args *a = p;
    return a->real(a->dptr, a->bytesize, a->stream);
}

/* The pool cuMemAllocAsync draws from: the current pool of the stream's device. */
static CUmemoryPool stream_pool(CUstream stream) {
    typedef CUresult (*stream_device_fn)(CUstream, CUdevice *);
    typedef CUresult (*ctx_device_fn)(CUdevice *);
    stream_device_fn stream_device = REAL(cuStreamGetDevice, stream_device_fn);
    ctx_device_fn ctx_device = REAL(cuCtxGetDevice, ctx_device_fn);
    pfn_cuDeviceGetMemPool current = REAL(cuDeviceGetMemPool, pfn_cuDeviceGetMemPool);
    CUdevice dev;
    CUmemoryPool pool = NULL;
    if (!current || !((stream_device && stream_device(stream, &dev) == CUDA_SUCCESS) ||
                      (ctx_device && ctx_device(&dev) == CUDA_SUCCESS)))
        return NULL;
    return current(&pool, dev) == CUDA_SUCCESS ? pool : NULL;
}

static CUresult alloc_async(pfn_cuMemAllocAsync real, CUdeviceptr *dptr, size_t bytesize, CUstream stream) {
    struct hami_region *r = hami_region_get();
    int idx;
    if (!r || !dptr || bytesize == 0 || (idx = hami_index_of_stream(r, stream)) < 0)
        return real(dptr, bytesize, stream);
    CUmemoryPool pool = stream_pool(stream);
    if (!pool) { /* no pool to follow: charge the allocation itself */
        if (hami_reserve(r, idx, bytesize) == HAMI_OVER_LIMIT) return CUDA_ERROR_OUT_OF_MEMORY;
        CUresult rc = real(dptr, bytesize, stream);
        if (rc != CUDA_SUCCESS) hami_release(r, idx, bytesize);
        else hami_table_insert(HAMI_TABLE_POINTERS, (uint64_t)*dptr, bytesize, idx);
        return rc;
    }
    remember_pool(pool, idx);
    struct async_args a = {real, dptr, bytesize, stream};
    return pool_allocation(r, idx, pool, bytesize, dptr, run_async, &a);
}

CUresult hami_cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream stream) {
    pfn_cuMemAllocAsync real = REAL(cuMemAllocAsync, pfn_cuMemAllocAsync);
    return real ? alloc_async(real, dptr, bytesize, stream) : not_in_driver("cuMemAllocAsync");
}

CUresult hami_cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream stream) {
    pfn_cuMemAllocAsync real = REAL(cuMemAllocAsync_ptsz, pfn_cuMemAllocAsync);
    return real ? alloc_async(real, dptr, bytesize, stream) : not_in_driver("cuMemAllocAsync_ptsz");
}

struct from_pool_args {
    pfn_cuMemAllocFromPoolAsync real;
    CUdeviceptr *dptr;
    size_t bytesize;
    CUmemoryPool pool;
    CUstream stream;
};
static CUresult run_from_pool(void *p) {
    struct from_pool_args *a = p;
    return a->real(a->dptr, a->bytesize, a->pool, a->stream);
}

static CUresult alloc_pool(pfn_cuMemAllocFromPoolAsync real, CUdeviceptr *dptr, size_t bytesize,
                           CUmemoryPool pool, CUstream stream) {
    struct hami_region *r = hami_region_get();
    struct hami_alloc_info pool_info;
    int idx;
    if (!r || !dptr || !pool || bytesize == 0) return real(dptr, bytesize, pool, stream);
    if (hami_table_find(HAMI_TABLE_POOLS, (uint64_t)(uintptr_t)pool, &pool_info)) {
        idx = pool_info.dev;
    } else {
        idx = hami_index_of_stream(r, stream); /* a pool we never saw: assume the stream's device */
        if (idx >= 0) remember_pool(pool, idx);
    }
    if (idx < 0) return real(dptr, bytesize, pool, stream); /* host pool or unknown device */
    struct from_pool_args a = {real, dptr, bytesize, pool, stream};
    return pool_allocation(r, idx, pool, bytesize, dptr, run_from_pool, &a);
}

CUresult hami_cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props) {
    pfn_cuMemPoolCreate real = REAL(cuMemPoolCreate, pfn_cuMemPoolCreate);
    if (!real) return not_in_driver("cuMemPoolCreate");
    CUresult rc = real(pool, props);
    struct hami_region *r = hami_region_get();
    if (rc != CUDA_SUCCESS || !r || !pool || !props) return rc;
    int idx = props->location.type == CU_MEM_LOCATION_TYPE_DEVICE
                  ? hami_index_of_cuda_device(r, (CUdevice)props->location.id)
                  : HAMI_POOL_HOST;
    remember_pool(*pool, idx);
    return rc;
}

CUresult hami_cuMemPoolDestroy(CUmemoryPool pool) {
    pfn_cuMemPoolDestroy real = REAL(cuMemPoolDestroy, pfn_cuMemPoolDestroy);
    if (!real) return not_in_driver("cuMemPoolDestroy");
    struct hami_alloc_info info;
    int tracked = pool && hami_table_take(HAMI_TABLE_POOLS, (uint64_t)(uintptr_t)pool, &info);
    CUresult rc = real(pool);
    if (!tracked) return rc;
    if (rc != CUDA_SUCCESS) {
        hami_table_insert(HAMI_TABLE_POOLS, (uint64_t)(uintptr_t)pool, info.bytes, info.dev);
        return rc;
    }
    forget_pool(pool);
    if (info.dev >= 0) hami_release(hami_region_get(), info.dev, info.bytes);
    return rc;
}

static CUresult device_pool(pfn_cuDeviceGetMemPool real, CUmemoryPool *pool, CUdevice dev) {
    CUresult rc = real(pool, dev);
    struct hami_region *r = hami_region_get();
    if (rc == CUDA_SUCCESS && r && pool) remember_pool(*pool, hami_index_of_cuda_device(r, dev));
    return rc;
}

CUresult hami_cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice dev) {
    pfn_cuDeviceGetMemPool real = REAL(cuDeviceGetDefaultMemPool, pfn_cuDeviceGetMemPool);
    return real ? device_pool(real, pool, dev) : not_in_driver("cuDeviceGetDefaultMemPool");
}

CUresult hami_cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev) {
    pfn_cuDeviceGetMemPool real = REAL(cuDeviceGetMemPool, pfn_cuDeviceGetMemPool);
    return real ? device_pool(real, pool, dev) : not_in_driver("cuDeviceGetMemPool");
}

CUresult hami_cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream stream) {
    pfn_cuMemAllocFromPoolAsync real = REAL(cuMemAllocFromPoolAsync, pfn_cuMemAllocFromPoolAsync);
    return real ? alloc_pool(real, dptr, bytesize, pool, stream) : not_in_driver("cuMemAllocFromPoolAsync");
}

CUresult hami_cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                           CUstream stream) {
    pfn_cuMemAllocFromPoolAsync real = REAL(cuMemAllocFromPoolAsync_ptsz, pfn_cuMemAllocFromPoolAsync);
    return real ? alloc_pool(real, dptr, bytesize, pool, stream)
                : not_in_driver("cuMemAllocFromPoolAsync_ptsz");
}

/* Trimming and the release threshold change what a pool holds: settle it after the driver did. */
static void settle_pool(CUmemoryPool pool) {
    struct hami_alloc_info info;
    struct hami_region *r = hami_region_get();
    if (r && pool && hami_table_find(HAMI_TABLE_POOLS, (uint64_t)(uintptr_t)pool, &info) && info.dev >= 0)
        settle(r, pool, info.dev, 0);
}

CUresult hami_cuMemPoolTrimTo(CUmemoryPool pool, size_t keep) {
    pfn_cuMemPoolTrimTo real = REAL(cuMemPoolTrimTo, pfn_cuMemPoolTrimTo);
    if (!real) return not_in_driver("cuMemPoolTrimTo");
    CUresult rc = real(pool, keep);
    if (rc == CUDA_SUCCESS) settle_pool(pool);
    return rc;
}

CUresult hami_cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value) {
    pfn_cuMemPoolSetAttribute real = REAL(cuMemPoolSetAttribute, pfn_cuMemPoolSetAttribute);
    if (!real) return not_in_driver("cuMemPoolSetAttribute");
    CUresult rc = real(pool, attr, value);
    if (rc == CUDA_SUCCESS) settle_pool(pool);
    return rc;
}

/* fake_cuda.c - TEST DOUBLE of the NVIDIA CUDA driver (libcuda.so.1).
 *
 * Simulates the devices of fake_config.h: contexts (primary and created),
 * streams, a device-memory pool per GPU (addresses only, no backing store),
 * managed/async/pool/VMM allocations, modules and kernels on a virtual
 * timeline (fake_state.h), CUDA_VISIBLE_DEVICES in index and UUID form, and
 * cuGetProcAddress with the driver's versioning and per-thread-stream rules.
 * It exists because no GPU is available to the tests; it is not a driver.
 * Extra test-only entry points are prefixed fakecuda_. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cuda.h>

#include "fake_config.h"
#include "fake_state.h"

#define EXPORT __attribute__((visibility("default")))

/* Exported entry points are stubs that jump to hidden implementations, as in the real libcuda.so.1, whose
 * exported symbols are not the addresses cuGetProcAddress hands out: fake_<name> (hidden) does the work and
 * <name> (exported, a jump in assembly) leads to it. A client resolving through cuGetProcAddress therefore gets an
 * address that no dlsym of an exported name returns, and an interposer cannot match it by pointer. */
#if defined(__x86_64__)
#define FAKE_JUMP(target) "endbr64\n\tjmp " target
#elif defined(__aarch64__)
#define FAKE_JUMP(target) "b " target
#else
#error "the fake driver's exported stubs are written for x86-64 and aarch64"
#endif
/* One macro (no nested expansion: cuda.h #defines some names, e.g. cuDeviceGetUuid, to their versions). */
#define FAKE(ret, name, params)                                                                           \
    __asm__(".text\n\t.globl " #name "\n\t.type " #name ", %function\n\t.p2align 4\n" #name ":\n\t"       \
            FAKE_JUMP("fake_" #name) "\n\t.size " #name ", .-" #name "\n\t.previous");                   \
    void fake_exported_##name(void) __asm__(#name);                                                       \
    __attribute__((used)) ret fake_##name params;                                                         \
    ret fake_##name params

/* ---------------------------------------------------------------- counters */
enum {
    C_cuMemAlloc_v2, C_cuMemFree_v2, C_cuMemFreeAsync, C_cuMemFreeAsync_ptsz, C_cuMemAllocAsync,
    C_cuMemAllocAsync_ptsz, C_cuLaunchKernel, C_cuLaunchKernel_ptsz, C_cuLaunchKernelEx,
    C_cuLaunchKernelEx_ptsz, C_cuLaunchCooperativeKernel, C_cuLaunchCooperativeKernel_ptsz, C_cuGraphLaunch,
    C_cuGraphLaunch_ptsz, C_cuMemGetInfo_v2, C_cuMemRelease, C_COUNT
};
static const char *const g_counter_names[C_COUNT] = {
    "cuMemAlloc_v2", "cuMemFree_v2", "cuMemFreeAsync", "cuMemFreeAsync_ptsz", "cuMemAllocAsync",
    "cuMemAllocAsync_ptsz", "cuLaunchKernel", "cuLaunchKernel_ptsz", "cuLaunchKernelEx",
    "cuLaunchKernelEx_ptsz", "cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel_ptsz", "cuGraphLaunch",
    "cuGraphLaunch_ptsz", "cuMemGetInfo_v2", "cuMemRelease"};
static _Atomic unsigned long long g_counters[C_COUNT];
#define COUNT(name) atomic_fetch_add_explicit(&g_counters[C_##name], 1, memory_order_relaxed)

EXPORT unsigned long long fakecuda_counter(const char *name);
EXPORT CUresult fakecuda_alloc_untracked(CUdeviceptr *dptr, size_t bytes);
EXPORT const char *fakecuda_entry_name(const void *fn);

/* Test-only: how often the driver entry point `name` was called in this process. */
unsigned long long fakecuda_counter(const char *name) {
    for (int i = 0; i < C_COUNT; i++)
        if (name && strcmp(g_counter_names[i], name) == 0) return atomic_load(&g_counters[i]);
    return ~0ull;
}

/* ---------------------------------------------------------------- devices */
static _Atomic int g_initialized;
static int g_visible[FAKE_MAX_GPUS]; /* ordinal -> fake GPU index */
static int g_visible_count;
static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;

static void parse_visible(void) {
    const struct fake_config *c = fake_config_get();
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    g_visible_count = 0;
    if (!cvd) {
        for (int i = 0; i < c->count; i++) g_visible[g_visible_count++] = i;
        return;
    }
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", cvd);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && g_visible_count < FAKE_MAX_GPUS;
         tok = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*tok)) tok++;
        int idx = fake_config_find(tok);
        if (idx < 0) break; /* like CUDA: an invalid entry hides it and everything after it */
        g_visible[g_visible_count++] = idx;
    }
}

#define REQUIRE_INIT()                                                                  \
    do {                                                                                \
        if (!atomic_load_explicit(&g_initialized, memory_order_acquire))                \
            return CUDA_ERROR_NOT_INITIALIZED;                                          \
    } while (0)

static const struct fake_gpu *gpu_of(CUdevice dev) {
    if (dev < 0 || dev >= g_visible_count) return NULL;
    return &fake_config_get()->gpus[g_visible[dev]];
}

/* ---------------------------------------------------------------- contexts and streams */
#define CTX_MAGIC 0xc0c0c0c0u
#define STREAM_MAGIC 0x57573333u
struct CUstream_st {
    uint32_t magic;
    struct CUctx_st *ctx;
    _Atomic uint64_t last_end_ns;
};
struct CUctx_st {
    uint32_t magic;
    int device;           /* ordinal */
    int primary;
    _Atomic int refs;
    _Atomic uint64_t last_end_ns;
    struct CUstream_st default_stream;
};
struct CUmod_st {
    uint32_t magic;
    int gpu; /* where its code and data live (charged FAKE_MODULE_KIB) */
};
struct CUfunc_st {
    uint32_t magic;
    char name[64];
};
/* A stream-ordered memory pool. It holds `reserved` bytes of the card, of which `used` are allocated: memory freed
 * by cuMemFreeAsync stays reserved (reused by the pool's next allocations) until a synchronisation trims the pool to
 * its release threshold (default 0) or cuMemPoolTrimTo does, as the real driver does. */
struct CUmemPoolHandle_st {
    uint32_t magic;
    int device; /* ordinal; -1: a host pool (no device memory) */
    uint64_t reserved, used, threshold; /* under g_pool_lock */
    struct CUmemPoolHandle_st *next; /* created pools, for the synchronisation trims */
};

static struct CUctx_st g_primary[FAKE_MAX_GPUS];
static struct CUmemPoolHandle_st g_default_pool[FAKE_MAX_GPUS];
static struct CUmemPoolHandle_st *g_created_pools;
static pthread_mutex_t g_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread struct CUctx_st *t_stack[16];
static __thread int t_depth;

static struct CUctx_st *current_ctx(void) { return t_depth > 0 ? t_stack[t_depth - 1] : NULL; }
static void set_current(struct CUctx_st *ctx) {
    if (t_depth == 0) t_depth = 1;
    t_stack[t_depth - 1] = ctx;
}

static void mark_context(int ordinal) {
    struct fake_proc_state *self = fake_state_self();
    if (self) atomic_fetch_or(&self->has_context, 1u << fake_state_slot(g_visible[ordinal]));
}

static void atomic_max_u64(_Atomic uint64_t *v, uint64_t x) {
    uint64_t cur = atomic_load(v);
    while (x > cur && !atomic_compare_exchange_weak(v, &cur, x)) {
    }
}

static int valid_stream(CUstream s) {
    return s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD || s->magic == STREAM_MAGIC;
}

/* The stream object a handle denotes (default streams belong to the current context). */
static struct CUstream_st *resolve_stream(CUstream s) {
    if (s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD) {
        struct CUctx_st *ctx = current_ctx();
        return ctx ? &ctx->default_stream : NULL;
    }
    return s->magic == STREAM_MAGIC ? s : NULL;
}

/* ---------------------------------------------------------------- allocations */
enum { KIND_DEVICE = 1, KIND_HOST = 2, KIND_VMM = 3, KIND_POOL = 4 };
struct alloc {
    uint64_t key;
    uint64_t bytes;
    int gpu;     /* physical fake GPU index */
    int kind;
    struct alloc *next;
    struct CUmemPoolHandle_st *pool; /* KIND_POOL: the pool it came from */
};
#define BUCKETS 4096
static struct alloc *g_allocs[BUCKETS];
static pthread_mutex_t g_alloc_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t g_next_address = 0x7f0000000000ull;
static _Atomic uint64_t g_next_handle = 0x1000;

static void alloc_prepare(void) { pthread_mutex_lock(&g_alloc_lock); }
static void alloc_release(void) { pthread_mutex_unlock(&g_alloc_lock); }
__attribute__((constructor)) static void register_atfork(void) {
    pthread_atfork(alloc_prepare, alloc_release, alloc_release);
}

static uint64_t device_used_fast(int gpu) {
    struct fake_state *s = fake_state_get();
    uint64_t sum = 0;
    struct fake_proc_state *self = fake_state_self();
    if (!s) return 0;
    if (!fake_config_get()->state_file[0]) return self ? atomic_load(&self->used_bytes[fake_state_slot(gpu)]) : 0;
    sum = fake_state_used(gpu);
    return sum;
}

/* Allocation records come from the double's own pool, never from malloc, on the path a fork child takes. Why: a
 * child of a multithreaded parent may only rely on what is fork-safe. glibc's malloc is (a real libcuda may call
 * it), but ASan's allocator in GCC 12's libsanitizer installs no fork handlers: a parent thread inside malloc at
 * fork() leaves the child's allocator locked forever (seen in the ASan run of the threads-and-fork test). The pool
 * is guarded by g_alloc_lock, which the atfork handlers above hold across fork(). Records are carved in batches
 * from anonymous mappings and reused through a free list; a double's process lives only for one test. */
#define ALLOC_BATCH 1024
static struct alloc *g_free_records;

static struct alloc *record_get_locked(void) {
    if (!g_free_records) {
        struct alloc *batch = mmap(NULL, ALLOC_BATCH * sizeof *batch, PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (batch == MAP_FAILED) return NULL;
        for (int k = 0; k < ALLOC_BATCH; k++) batch[k].next = k + 1 < ALLOC_BATCH ? &batch[k + 1] : NULL;
        g_free_records = batch;
    }
    struct alloc *a = g_free_records;
    g_free_records = a->next;
    return a;
}

static void record_put(struct alloc *a) {
    pthread_mutex_lock(&g_alloc_lock);
    a->next = g_free_records;
    g_free_records = a;
    pthread_mutex_unlock(&g_alloc_lock);
}

static CUresult add_alloc(uint64_t key, uint64_t bytes, int gpu, int kind) {
    pthread_mutex_lock(&g_alloc_lock);
    struct alloc *a = record_get_locked();
    if (!a) {
        pthread_mutex_unlock(&g_alloc_lock);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *a = (struct alloc){key, bytes, gpu, kind, g_allocs[key % BUCKETS], NULL};
    g_allocs[key % BUCKETS] = a;
    pthread_mutex_unlock(&g_alloc_lock);
    return CUDA_SUCCESS;
}

static struct alloc *take_alloc(uint64_t key, int kind) {
    pthread_mutex_lock(&g_alloc_lock);
    struct alloc **pp = &g_allocs[key % BUCKETS];
    for (; *pp; pp = &(*pp)->next) {
        if ((*pp)->key == key && (*pp)->kind == kind) {
            struct alloc *a = *pp;
            *pp = a->next;
            pthread_mutex_unlock(&g_alloc_lock);
            return a;
        }
    }
    pthread_mutex_unlock(&g_alloc_lock);
    return NULL;
}

/* Device memory on fake GPU `gpu`: physical capacity is enforced like a real device. */
static CUresult device_alloc(uint64_t *out_key, uint64_t bytes, int gpu, int kind) {
    const struct fake_gpu *g = &fake_config_get()->gpus[gpu];
    struct fake_proc_state *self = fake_state_self();
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    if (bytes > g->memory_bytes || device_used_fast(gpu) > g->memory_bytes - bytes)
        return CUDA_ERROR_OUT_OF_MEMORY;
    uint64_t key;
    if (kind == KIND_VMM) key = atomic_fetch_add(&g_next_handle, 1);
    else key = atomic_fetch_add(&g_next_address, (bytes + 0xfffull) & ~0xfffull);
    CUresult rc = add_alloc(key, bytes, gpu, kind);
    if (rc != CUDA_SUCCESS) return rc;
    if (self) atomic_fetch_add(&self->used_bytes[fake_state_slot(gpu)], bytes);
    *out_key = key;
    return CUDA_SUCCESS;
}

static CUresult device_free(uint64_t key, int kind) {
    struct alloc *a = take_alloc(key, kind);
    if (!a) return CUDA_ERROR_INVALID_VALUE;
    struct fake_proc_state *self = fake_state_self();
    if (self && a->gpu >= 0) {
        _Atomic uint64_t *used = &self->used_bytes[fake_state_slot(a->gpu)];
        uint64_t cur = atomic_load(used);
        while (!atomic_compare_exchange_weak(used, &cur, cur > a->bytes ? cur - a->bytes : 0)) {
        }
    }
    record_put(a);
    return CUDA_SUCCESS;
}

/* Driver-internal device memory (a context's, a module's): counted against the GPU's capacity and in this
 * process's used memory (what NVML shows per process and cuMemGetInfo takes off free), like a real driver, but
 * not a pointer the application could free. */
static CUresult internal_charge(int gpu, uint64_t bytes) {
    if (bytes == 0) return CUDA_SUCCESS;
    const struct fake_gpu *g = &fake_config_get()->gpus[gpu];
    if (bytes > g->memory_bytes || device_used_fast(gpu) > g->memory_bytes - bytes) return CUDA_ERROR_OUT_OF_MEMORY;
    struct fake_proc_state *self = fake_state_self();
    if (self) atomic_fetch_add(&self->used_bytes[fake_state_slot(gpu)], bytes);
    return CUDA_SUCCESS;
}

static void internal_uncharge(int gpu, uint64_t bytes) {
    struct fake_proc_state *self = fake_state_self();
    if (!self || bytes == 0) return;
    _Atomic uint64_t *used = &self->used_bytes[fake_state_slot(gpu)];
    uint64_t cur = atomic_load(used);
    while (!atomic_compare_exchange_weak(used, &cur, cur > bytes ? cur - bytes : 0)) {
    }
}

static CUresult current_gpu(int *gpu) {
    struct CUctx_st *ctx = current_ctx();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    *gpu = g_visible[ctx->device];
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- pools */
/* Trims a device pool to max(used, keep) bytes, giving the rest back to the card. Caller holds g_pool_lock. */
static void pool_trim_locked(struct CUmemPoolHandle_st *pool, uint64_t keep) {
    if (pool->device < 0 || pool->device >= g_visible_count) return;
    uint64_t target = pool->used > keep ? pool->used : keep;
    if (pool->reserved <= target) return;
    internal_uncharge(g_visible[pool->device], pool->reserved - target);
    pool->reserved = target;
}

/* At a synchronisation the driver returns what each pool holds above its release threshold. */
static void pools_synchronised(void) {
    pthread_mutex_lock(&g_pool_lock);
    for (int i = 0; i < g_visible_count; i++) pool_trim_locked(&g_default_pool[i], g_default_pool[i].threshold);
    for (struct CUmemPoolHandle_st *p = g_created_pools; p; p = p->next) pool_trim_locked(p, p->threshold);
    pthread_mutex_unlock(&g_pool_lock);
}

/* An allocation from a device pool: reuses what the pool holds free, grows it (from the card) otherwise. */
static CUresult pool_alloc(struct CUmemPoolHandle_st *pool, uint64_t bytes, uint64_t *out_key) {
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_pool_lock);
    uint64_t free_bytes = pool->reserved - pool->used;
    if (free_bytes < bytes) {
        CUresult rc = internal_charge(g_visible[pool->device], bytes - free_bytes);
        if (rc != CUDA_SUCCESS) {
            pthread_mutex_unlock(&g_pool_lock);
            return rc;
        }
        pool->reserved += bytes - free_bytes;
    }
    pool->used += bytes;
    pthread_mutex_unlock(&g_pool_lock);
    uint64_t key = atomic_fetch_add(&g_next_address, (bytes + 0xfffull) & ~0xfffull);
    CUresult rc = add_alloc(key, bytes, g_visible[pool->device], KIND_POOL);
    if (rc != CUDA_SUCCESS) {
        pthread_mutex_lock(&g_pool_lock);
        pool->used -= bytes;
        pthread_mutex_unlock(&g_pool_lock);
        return rc;
    }
    pthread_mutex_lock(&g_alloc_lock);
    for (struct alloc *a = g_allocs[key % BUCKETS]; a; a = a->next)
        if (a->key == key && a->kind == KIND_POOL) a->pool = pool;
    pthread_mutex_unlock(&g_alloc_lock);
    *out_key = key;
    return CUDA_SUCCESS;
}

/* Frees a pointer of any kind but VMM: pool memory goes back to its pool (still reserved), the rest to the card. */
static CUresult free_pointer(uint64_t key) {
    struct alloc *a = take_alloc(key, KIND_POOL);
    if (!a) return device_free(key, KIND_DEVICE);
    pthread_mutex_lock(&g_pool_lock);
    a->pool->used -= a->bytes;
    pthread_mutex_unlock(&g_pool_lock);
    record_put(a);
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- init and devices */
FAKE(CUresult, cuInit, (unsigned int flags)) {
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_init_lock);
    if (!atomic_load(&g_initialized)) {
        parse_visible();
        for (int i = 0; i < FAKE_MAX_GPUS; i++) {
            g_primary[i] = (struct CUctx_st){.magic = CTX_MAGIC, .device = i, .primary = 1};
            g_primary[i].default_stream = (struct CUstream_st){STREAM_MAGIC, &g_primary[i], 0};
            g_default_pool[i] = (struct CUmemPoolHandle_st){0x9001u, i, 0, 0, 0, NULL};
        }
        atomic_store_explicit(&g_initialized, 1, memory_order_release);
    }
    pthread_mutex_unlock(&g_init_lock);
    return g_visible_count > 0 ? CUDA_SUCCESS : CUDA_ERROR_NO_DEVICE;
}

FAKE(CUresult, cuDriverGetVersion, (int *version)) {
    if (!version) return CUDA_ERROR_INVALID_VALUE;
    *version = fake_config_get()->cuda_version;
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuDeviceGetCount, (int *count)) {
    REQUIRE_INIT();
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    *count = g_visible_count;
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuDeviceGet, (CUdevice * dev, int ordinal)) {
    REQUIRE_INIT();
    if (!dev) return CUDA_ERROR_INVALID_VALUE;
    if (ordinal < 0 || ordinal >= g_visible_count) return CUDA_ERROR_INVALID_DEVICE;
    *dev = ordinal;
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuDeviceGetName, (char *name, int len, CUdevice dev)) {
    REQUIRE_INIT();
    const struct fake_gpu *g = gpu_of(dev);
    if (!g) return CUDA_ERROR_INVALID_DEVICE;
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "%s", g->name);
    return CUDA_SUCCESS;
}

static CUresult get_uuid(CUuuid *uuid, CUdevice dev) {
    REQUIRE_INIT();
    const struct fake_gpu *g = gpu_of(dev);
    if (!g) return CUDA_ERROR_INVALID_DEVICE;
    if (!uuid) return CUDA_ERROR_INVALID_VALUE;
    memcpy(uuid->bytes, g->uuid_bytes, 16);
    return CUDA_SUCCESS;
}
FAKE(CUresult, cuDeviceGetUuid, (CUuuid * uuid, CUdevice dev)) { return get_uuid(uuid, dev); }
FAKE(CUresult, cuDeviceGetUuid_v2, (CUuuid * uuid, CUdevice dev)) { return get_uuid(uuid, dev); }

FAKE(CUresult, cuDeviceTotalMem_v2, (size_t *bytes, CUdevice dev)) {
    REQUIRE_INIT();
    const struct fake_gpu *g = gpu_of(dev);
    if (!g) return CUDA_ERROR_INVALID_DEVICE;
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    *bytes = g->memory_bytes;
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuDeviceGetPCIBusId, (char *bus, int len, CUdevice dev)) {
    REQUIRE_INIT();
    const struct fake_gpu *g = gpu_of(dev);
    if (!g) return CUDA_ERROR_INVALID_DEVICE;
    if (!bus || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    snprintf(bus, (size_t)len, "%04X:%02X:%02X.0", g->pci_domain, g->pci_bus, g->pci_device);
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuDeviceGetAttribute, (int *value, CUdevice_attribute attr, CUdevice dev)) {
    REQUIRE_INIT();
    const struct fake_gpu *g = gpu_of(dev);
    if (!g) return CUDA_ERROR_INVALID_DEVICE;
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    switch (attr) {
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *value = (int)g->sm_count; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: *value = (int)fake_config_get()->max_threads_per_sm; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *value = g->cc_major; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *value = g->cc_minor; break;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: *value = (int)g->pci_bus; break;
    case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: *value = (int)g->pci_device; break;
    case CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: *value = (int)g->pci_domain; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *value = 32; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *value = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *value = 1; break;
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: *value = 1; break;
    case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY: *value = 1; break;
    default: *value = 0; break;
    }
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- contexts */
FAKE(CUresult, cuDevicePrimaryCtxRetain, (CUcontext * pctx, CUdevice dev)) {
    REQUIRE_INIT();
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    if (!gpu_of(dev)) return CUDA_ERROR_INVALID_DEVICE;
    /* The primary context is created by its first retain and costs the GPU's context memory until the last release. */
    pthread_mutex_lock(&g_init_lock);
    if (atomic_load(&g_primary[dev].refs) == 0) {
        CUresult rc = internal_charge(g_visible[dev], gpu_of(dev)->context_bytes);
        if (rc != CUDA_SUCCESS) {
            pthread_mutex_unlock(&g_init_lock);
            return rc;
        }
    }
    atomic_fetch_add(&g_primary[dev].refs, 1);
    pthread_mutex_unlock(&g_init_lock);
    mark_context(dev);
    *pctx = &g_primary[dev];
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuDevicePrimaryCtxRelease_v2, (CUdevice dev)) {
    REQUIRE_INIT();
    if (!gpu_of(dev)) return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_init_lock);
    int refs = atomic_load(&g_primary[dev].refs);
    if (refs > 0) atomic_store(&g_primary[dev].refs, refs - 1);
    if (refs == 1) internal_uncharge(g_visible[dev], gpu_of(dev)->context_bytes);
    pthread_mutex_unlock(&g_init_lock);
    return refs > 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

FAKE(CUresult, cuDevicePrimaryCtxGetState, (CUdevice dev, unsigned int *flags, int *active)) {
    REQUIRE_INIT();
    if (!gpu_of(dev)) return CUDA_ERROR_INVALID_DEVICE;
    if (!flags || !active) return CUDA_ERROR_INVALID_VALUE;
    *flags = 0;
    *active = atomic_load(&g_primary[dev].refs) > 0;
    return CUDA_SUCCESS;
}

/* Destroys the primary context whatever its retain count (cudaDeviceReset); the next retain creates it again. */
FAKE(CUresult, cuDevicePrimaryCtxReset_v2, (CUdevice dev)) {
    REQUIRE_INIT();
    if (!gpu_of(dev)) return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_init_lock);
    if (atomic_exchange(&g_primary[dev].refs, 0) > 0) internal_uncharge(g_visible[dev], gpu_of(dev)->context_bytes);
    pthread_mutex_unlock(&g_init_lock);
    return CUDA_SUCCESS;
}

static CUresult create_ctx(CUcontext *pctx, CUdevice dev) {
    REQUIRE_INIT();
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    if (!gpu_of(dev)) return CUDA_ERROR_INVALID_DEVICE;
    CUresult rc = internal_charge(g_visible[dev], gpu_of(dev)->context_bytes);
    if (rc != CUDA_SUCCESS) return rc;
    struct CUctx_st *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        internal_uncharge(g_visible[dev], gpu_of(dev)->context_bytes);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    ctx->magic = CTX_MAGIC;
    ctx->device = dev;
    ctx->default_stream = (struct CUstream_st){STREAM_MAGIC, ctx, 0};
    mark_context(dev);
    if (t_depth < 16) t_stack[t_depth++] = ctx;
    *pctx = ctx;
    return CUDA_SUCCESS;
}
FAKE(CUresult, cuCtxCreate_v2, (CUcontext * pctx, unsigned int flags, CUdevice dev)) {
    (void)flags;
    return create_ctx(pctx, dev);
}
FAKE(CUresult, cuCtxCreate_v3,
     (CUcontext * pctx, CUexecAffinityParam *params, int n, unsigned int flags, CUdevice dev)) {
    (void)flags;
    if (n < 0 || (n > 0 && !params)) return CUDA_ERROR_INVALID_VALUE;
    return create_ctx(pctx, dev);
}
FAKE(CUresult, cuCtxCreate_v4, (CUcontext * pctx, CUctxCreateParams *params, unsigned int flags, CUdevice dev)) {
    (void)params;
    (void)flags;
    return create_ctx(pctx, dev);
}

FAKE(CUresult, cuCtxDestroy_v2, (CUcontext ctx)) {
    REQUIRE_INIT();
    if (!ctx || ctx->magic != CTX_MAGIC || ctx->primary) return CUDA_ERROR_INVALID_CONTEXT;
    for (int i = 0; i < t_depth; i++)
        if (t_stack[i] == ctx) t_stack[i] = NULL;
    internal_uncharge(g_visible[ctx->device], gpu_of(ctx->device)->context_bytes);
    ctx->magic = 0;
    free(ctx);
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuCtxSetCurrent, (CUcontext ctx)) {
    REQUIRE_INIT();
    if (ctx && ctx->magic != CTX_MAGIC) return CUDA_ERROR_INVALID_CONTEXT;
    set_current(ctx);
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuCtxGetCurrent, (CUcontext * pctx)) {
    REQUIRE_INIT();
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    *pctx = current_ctx();
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuCtxPushCurrent_v2, (CUcontext ctx)) {
    REQUIRE_INIT();
    if (!ctx || ctx->magic != CTX_MAGIC) return CUDA_ERROR_INVALID_CONTEXT;
    if (t_depth >= 16) return CUDA_ERROR_INVALID_VALUE;
    t_stack[t_depth++] = ctx;
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuCtxPopCurrent_v2, (CUcontext * pctx)) {
    REQUIRE_INIT();
    if (t_depth == 0) return CUDA_ERROR_INVALID_CONTEXT;
    struct CUctx_st *ctx = t_stack[--t_depth];
    if (pctx) *pctx = ctx;
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuCtxGetDevice, (CUdevice * dev)) {
    REQUIRE_INIT();
    if (!dev) return CUDA_ERROR_INVALID_VALUE;
    struct CUctx_st *ctx = current_ctx();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    *dev = ctx->device;
    return CUDA_SUCCESS;
}

static void wait_until(uint64_t end_ns) {
    struct timespec ts = {(time_t)(end_ns / 1000000000ull), (long)(end_ns % 1000000000ull)};
    while (fake_now_ns() < end_ns && clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

FAKE(CUresult, cuCtxSynchronize, (void)) {
    REQUIRE_INIT();
    struct CUctx_st *ctx = current_ctx();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    wait_until(atomic_load(&ctx->last_end_ns));
    pools_synchronised();
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- streams */
FAKE(CUresult, cuStreamCreate, (CUstream * ps, unsigned int flags)) {
    REQUIRE_INIT();
    (void)flags;
    if (!ps) return CUDA_ERROR_INVALID_VALUE;
    struct CUctx_st *ctx = current_ctx();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    struct CUstream_st *s = calloc(1, sizeof *s);
    if (!s) return CUDA_ERROR_OUT_OF_MEMORY;
    s->magic = STREAM_MAGIC;
    s->ctx = ctx;
    *ps = s;
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuStreamDestroy_v2, (CUstream s)) {
    REQUIRE_INIT();
    if (!s || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD || s->magic != STREAM_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    s->magic = 0;
    free(s);
    return CUDA_SUCCESS;
}

static CUresult stream_sync(CUstream s) {
    REQUIRE_INIT();
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    struct CUstream_st *st = resolve_stream(s);
    if (!st) return CUDA_ERROR_INVALID_CONTEXT;
    wait_until(atomic_load(&st->last_end_ns));
    pools_synchronised();
    return CUDA_SUCCESS;
}
FAKE(CUresult, cuStreamSynchronize, (CUstream s)) { return stream_sync(s); }
FAKE(CUresult, cuStreamSynchronize_ptsz, (CUstream s)) { return stream_sync(s); }

static CUresult stream_device(CUstream s, CUdevice *dev) {
    REQUIRE_INIT();
    if (!dev || !valid_stream(s)) return CUDA_ERROR_INVALID_VALUE;
    struct CUstream_st *st = resolve_stream(s);
    if (!st) return CUDA_ERROR_INVALID_CONTEXT;
    *dev = st->ctx->device;
    return CUDA_SUCCESS;
}
FAKE(CUresult, cuStreamGetDevice, (CUstream s, CUdevice *dev)) { return stream_device(s, dev); }
FAKE(CUresult, cuStreamGetDevice_ptsz, (CUstream s, CUdevice *dev)) { return stream_device(s, dev); }

FAKE(CUresult, cuStreamGetCtx, (CUstream s, CUcontext *pctx)) {
    REQUIRE_INIT();
    if (!pctx || !valid_stream(s)) return CUDA_ERROR_INVALID_VALUE;
    struct CUstream_st *st = resolve_stream(s);
    if (!st) return CUDA_ERROR_INVALID_CONTEXT;
    *pctx = st->ctx;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- memory */
FAKE(CUresult, cuMemAlloc_v2, (CUdeviceptr * dptr, size_t bytes)) {
    REQUIRE_INIT();
    COUNT(cuMemAlloc_v2);
    if (!dptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    int gpu;
    CUresult rc = current_gpu(&gpu);
    if (rc != CUDA_SUCCESS) return rc;
    uint64_t key;
    rc = device_alloc(&key, bytes, gpu, KIND_DEVICE);
    if (rc == CUDA_SUCCESS) *dptr = (CUdeviceptr)key;
    return rc;
}

/* Test-only: device memory obtained outside any hooked entry point (like interop buffers). */
CUresult fakecuda_alloc_untracked(CUdeviceptr *dptr, size_t bytes) { return fake_cuMemAlloc_v2(dptr, bytes); }

FAKE(CUresult, cuMemAllocManaged, (CUdeviceptr * dptr, size_t bytes, unsigned int flags)) {
    REQUIRE_INIT();
    if (!dptr || bytes == 0 || (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST))
        return CUDA_ERROR_INVALID_VALUE;
    int gpu;
    CUresult rc = current_gpu(&gpu);
    if (rc != CUDA_SUCCESS) return rc;
    /* Managed memory lives on the host until the GPU touches it and migrates back under pressure (Linux, Pascal and
     * later): the device's capacity does not bound it and it is not device memory in use here. */
    uint64_t key = atomic_fetch_add(&g_next_address, (bytes + 0xfffull) & ~0xfffull);
    rc = add_alloc(key, bytes, -1, KIND_DEVICE);
    if (rc == CUDA_SUCCESS) *dptr = (CUdeviceptr)key;
    return rc;
}

FAKE(CUresult, cuMemAllocPitch_v2,
     (CUdeviceptr * dptr, size_t *pitch, size_t width, size_t height, unsigned int elem)) {
    REQUIRE_INIT();
    if (!dptr || !pitch || width == 0 || height == 0 || (elem != 4 && elem != 8 && elem != 16))
        return CUDA_ERROR_INVALID_VALUE;
    int gpu;
    CUresult rc = current_gpu(&gpu);
    if (rc != CUDA_SUCCESS) return rc;
    size_t align = fake_config_get()->pitch_alignment; /* FAKE_GPU_PITCH_ALIGNMENT, a power of two */
    if (width > SIZE_MAX - align) return CUDA_ERROR_INVALID_VALUE;
    size_t p = (width + align - 1) & ~(align - 1);
    uint64_t key;
    rc = device_alloc(&key, (uint64_t)p * height, gpu, KIND_DEVICE);
    if (rc == CUDA_SUCCESS) {
        *dptr = (CUdeviceptr)key;
        *pitch = p;
    }
    return rc;
}

FAKE(CUresult, cuMemFree_v2, (CUdeviceptr dptr)) {
    REQUIRE_INIT();
    COUNT(cuMemFree_v2);
    if (!dptr) return CUDA_SUCCESS;
    return free_pointer((uint64_t)dptr);
}

FAKE(CUresult, cuMemGetInfo_v2, (size_t *free_bytes, size_t *total_bytes)) {
    REQUIRE_INIT();
    COUNT(cuMemGetInfo_v2);
    if (!free_bytes || !total_bytes) return CUDA_ERROR_INVALID_VALUE;
    int gpu;
    CUresult rc = current_gpu(&gpu);
    if (rc != CUDA_SUCCESS) return rc;
    uint64_t total = fake_config_get()->gpus[gpu].memory_bytes, used = device_used_fast(gpu);
    *total_bytes = total;
    *free_bytes = used < total ? total - used : 0;
    return CUDA_SUCCESS;
}

/* The pre-3.2 entry points: 32-bit sizes and device pointers (the driver hands them addresses below 4 GiB). */
static _Atomic uint64_t g_next_low_address = 0x10000000ull;

FAKE(CUresult, cuMemAlloc, (unsigned int *dptr, unsigned int bytes)) {
    REQUIRE_INIT();
    if (!dptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    int gpu;
    CUresult rc = current_gpu(&gpu);
    if (rc != CUDA_SUCCESS) return rc;
    uint64_t key = atomic_fetch_add(&g_next_low_address, ((uint64_t)bytes + 0xfffull) & ~0xfffull);
    if (key + bytes > 0xffffffffull) return CUDA_ERROR_OUT_OF_MEMORY; /* the 32-bit window is used up */
    rc = internal_charge(gpu, bytes);
    if (rc != CUDA_SUCCESS) return rc;
    rc = add_alloc(key, bytes, gpu, KIND_DEVICE);
    if (rc != CUDA_SUCCESS) {
        internal_uncharge(gpu, bytes);
        return rc;
    }
    *dptr = (unsigned int)key;
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuMemAllocPitch, (unsigned int *dptr, unsigned int *pitch, unsigned int width, unsigned int height,
                                 unsigned int elem)) {
    REQUIRE_INIT();
    if (!dptr || !pitch || width == 0 || height == 0 || (elem != 4 && elem != 8 && elem != 16))
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t align = fake_config_get()->pitch_alignment, p = ((uint64_t)width + align - 1) & ~(align - 1);
    if (p * height > 0xffffffffull) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = fake_cuMemAlloc(dptr, (unsigned int)(p * height));
    if (rc == CUDA_SUCCESS) *pitch = (unsigned int)p;
    return rc;
}

FAKE(CUresult, cuMemFree, (unsigned int dptr)) {
    REQUIRE_INIT();
    if (!dptr) return CUDA_SUCCESS;
    return free_pointer(dptr);
}

FAKE(CUresult, cuMemGetInfo, (unsigned int *free_bytes, unsigned int *total_bytes)) {
    size_t f, t;
    if (!free_bytes || !total_bytes) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = fake_cuMemGetInfo_v2(&f, &t);
    if (rc != CUDA_SUCCESS) return rc;
    *free_bytes = f > 0xffffffffull ? 0xffffffffu : (unsigned int)f;
    *total_bytes = t > 0xffffffffull ? 0xffffffffu : (unsigned int)t;
    return rc;
}

FAKE(CUresult, cuDeviceTotalMem, (unsigned int *bytes, CUdevice dev)) {
    size_t t;
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = fake_cuDeviceTotalMem_v2(&t, dev);
    if (rc == CUDA_SUCCESS) *bytes = t > 0xffffffffull ? 0xffffffffu : (unsigned int)t;
    return rc;
}

FAKE(CUresult, cuMemAllocHost_v2, (void **pp, size_t bytes)) {
    REQUIRE_INIT();
    if (!pp || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    *pp = malloc(bytes);
    return *pp ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

FAKE(CUresult, cuMemFreeHost, (void *p)) {
    REQUIRE_INIT();
    free(p);
    return CUDA_SUCCESS;
}

static CUresult alloc_on_stream(CUdeviceptr *dptr, size_t bytes, CUstream s) {
    REQUIRE_INIT();
    if (!dptr || bytes == 0 || !valid_stream(s)) return CUDA_ERROR_INVALID_VALUE;
    struct CUstream_st *st = resolve_stream(s);
    if (!st) return CUDA_ERROR_INVALID_CONTEXT;
    uint64_t key;
    CUresult rc = pool_alloc(&g_default_pool[st->ctx->device], bytes, &key);
    if (rc == CUDA_SUCCESS) *dptr = (CUdeviceptr)key;
    return rc;
}
FAKE(CUresult, cuMemAllocAsync, (CUdeviceptr * dptr, size_t bytes, CUstream s)) {
    COUNT(cuMemAllocAsync);
    return alloc_on_stream(dptr, bytes, s);
}
FAKE(CUresult, cuMemAllocAsync_ptsz, (CUdeviceptr * dptr, size_t bytes, CUstream s)) {
    COUNT(cuMemAllocAsync_ptsz);
    return alloc_on_stream(dptr, bytes, s);
}

static CUresult alloc_from_pool(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool, CUstream s) {
    REQUIRE_INIT();
    if (!dptr || !pool || bytes == 0 || !valid_stream(s)) return CUDA_ERROR_INVALID_VALUE;
    if (pool->device >= g_visible_count) return CUDA_ERROR_INVALID_VALUE;
    uint64_t key;
    CUresult rc;
    if (pool->device < 0) { /* host pool: host memory, no device capacity used */
        key = atomic_fetch_add(&g_next_address, (bytes + 0xfffull) & ~0xfffull);
        rc = add_alloc(key, bytes, -1, KIND_DEVICE);
    } else {
        rc = pool_alloc(pool, bytes, &key);
    }
    if (rc == CUDA_SUCCESS) *dptr = (CUdeviceptr)key;
    return rc;
}
FAKE(CUresult, cuMemAllocFromPoolAsync, (CUdeviceptr * dptr, size_t bytes, CUmemoryPool pool, CUstream s)) {
    return alloc_from_pool(dptr, bytes, pool, s);
}
FAKE(CUresult, cuMemAllocFromPoolAsync_ptsz,
     (CUdeviceptr * dptr, size_t bytes, CUmemoryPool pool, CUstream s)) {
    return alloc_from_pool(dptr, bytes, pool, s);
}

FAKE(CUresult, cuMemFreeAsync, (CUdeviceptr dptr, CUstream s)) {
    REQUIRE_INIT();
    COUNT(cuMemFreeAsync);
    if (!dptr || !valid_stream(s)) return CUDA_ERROR_INVALID_VALUE;
    return free_pointer((uint64_t)dptr);
}
FAKE(CUresult, cuMemFreeAsync_ptsz, (CUdeviceptr dptr, CUstream s)) {
    REQUIRE_INIT();
    COUNT(cuMemFreeAsync_ptsz);
    if (!dptr || !valid_stream(s)) return CUDA_ERROR_INVALID_VALUE;
    return free_pointer((uint64_t)dptr);
}

FAKE(CUresult, cuDeviceGetDefaultMemPool, (CUmemoryPool * pool, CUdevice dev)) {
    REQUIRE_INIT();
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    if (!gpu_of(dev)) return CUDA_ERROR_INVALID_DEVICE;
    *pool = &g_default_pool[dev];
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuMemPoolCreate, (CUmemoryPool * pool, const CUmemPoolProps *props)) {
    REQUIRE_INIT();
    if (!pool || !props) return CUDA_ERROR_INVALID_VALUE;
    int device;
    if (props->location.type == CU_MEM_LOCATION_TYPE_DEVICE && gpu_of(props->location.id)) device = props->location.id;
    else if (props->location.type == CU_MEM_LOCATION_TYPE_HOST) device = -1; /* pinned host memory */
    else return CUDA_ERROR_INVALID_VALUE;
    struct CUmemPoolHandle_st *p = calloc(1, sizeof *p);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    p->magic = 0x9002u;
    p->device = device;
    pthread_mutex_lock(&g_pool_lock);
    p->next = g_created_pools;
    g_created_pools = p;
    pthread_mutex_unlock(&g_pool_lock);
    *pool = p;
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuDeviceGetMemPool, (CUmemoryPool * pool, CUdevice dev)) {
    REQUIRE_INIT();
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    if (!gpu_of(dev)) return CUDA_ERROR_INVALID_DEVICE;
    *pool = &g_default_pool[dev];
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuMemPoolDestroy, (CUmemoryPool pool)) {
    REQUIRE_INIT();
    if (!pool || pool->magic != 0x9002u) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_pool_lock);
    for (struct CUmemPoolHandle_st **pp = &g_created_pools; *pp; pp = &(*pp)->next) {
        if (*pp == pool) {
            *pp = pool->next;
            break;
        }
    }
    pool->used = 0; /* its allocations die with it */
    pool_trim_locked(pool, 0);
    pthread_mutex_unlock(&g_pool_lock);
    pool->magic = 0;
    free(pool);
    return CUDA_SUCCESS;
}

static int valid_pool(CUmemoryPool pool) { return pool && (pool->magic == 0x9001u || pool->magic == 0x9002u); }

FAKE(CUresult, cuMemPoolTrimTo, (CUmemoryPool pool, size_t keep)) {
    REQUIRE_INIT();
    if (!valid_pool(pool)) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_pool_lock);
    pool_trim_locked(pool, keep);
    pthread_mutex_unlock(&g_pool_lock);
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuMemPoolSetAttribute, (CUmemoryPool pool, CUmemPool_attribute attr, void *value)) {
    REQUIRE_INIT();
    if (!valid_pool(pool) || !value) return CUDA_ERROR_INVALID_VALUE;
    if (attr != CU_MEMPOOL_ATTR_RELEASE_THRESHOLD) return CUDA_ERROR_NOT_SUPPORTED;
    pthread_mutex_lock(&g_pool_lock);
    pool->threshold = *(const cuuint64_t *)value;
    pthread_mutex_unlock(&g_pool_lock);
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuMemPoolGetAttribute, (CUmemoryPool pool, CUmemPool_attribute attr, void *value)) {
    REQUIRE_INIT();
    if (!valid_pool(pool) || !value) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_pool_lock);
    cuuint64_t v = attr == CU_MEMPOOL_ATTR_RELEASE_THRESHOLD ? pool->threshold
                   : attr == CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT ? pool->reserved
                   : attr == CU_MEMPOOL_ATTR_USED_MEM_CURRENT     ? pool->used
                                                                  : ~(cuuint64_t)0;
    pthread_mutex_unlock(&g_pool_lock);
    if (v == ~(cuuint64_t)0) return CUDA_ERROR_NOT_SUPPORTED;
    *(cuuint64_t *)value = v;
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuMemGetAllocationGranularity,
     (size_t *granularity, const CUmemAllocationProp *prop, CUmemAllocationGranularity_flags option)) {
    REQUIRE_INIT();
    (void)option;
    if (!granularity || !prop) return CUDA_ERROR_INVALID_VALUE;
    *granularity = 2u << 20;
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuMemCreate,
     (CUmemGenericAllocationHandle * handle, size_t size, const CUmemAllocationProp *prop,
      unsigned long long flags)) {
    REQUIRE_INIT();
    if (!handle || !prop || size == 0 || flags != 0 || size % (2u << 20)) return CUDA_ERROR_INVALID_VALUE;
    uint64_t key;
    CUresult rc;
    if (prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE) {
        if (!gpu_of(prop->location.id)) return CUDA_ERROR_INVALID_DEVICE;
        rc = device_alloc(&key, size, g_visible[prop->location.id], KIND_VMM);
    } else {
        key = atomic_fetch_add(&g_next_handle, 1); /* host memory: not device memory */
        rc = add_alloc(key, size, -1, KIND_VMM);
    }
    if (rc == CUDA_SUCCESS) *handle = key;
    return rc;
}

FAKE(CUresult, cuMemRelease, (CUmemGenericAllocationHandle handle)) {
    REQUIRE_INIT();
    COUNT(cuMemRelease);
    struct alloc *a = take_alloc(handle, KIND_VMM);
    if (!a) return CUDA_ERROR_INVALID_VALUE;
    struct fake_proc_state *self = fake_state_self();
    if (self && a->gpu >= 0) atomic_fetch_sub(&self->used_bytes[fake_state_slot(a->gpu)], a->bytes);
    record_put(a);
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- modules and launches */
FAKE(CUresult, cuModuleLoadData, (CUmodule * mod, const void *image)) {
    REQUIRE_INIT();
    if (!mod || !image) return CUDA_ERROR_INVALID_VALUE;
    if (!current_ctx()) return CUDA_ERROR_INVALID_CONTEXT;
    int gpu = g_visible[current_ctx()->device];
    CUresult rc = internal_charge(gpu, fake_config_get()->module_bytes);
    if (rc != CUDA_SUCCESS) return rc;
    struct CUmod_st *m = calloc(1, sizeof *m);
    if (!m) {
        internal_uncharge(gpu, fake_config_get()->module_bytes);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    m->magic = 0x40d;
    m->gpu = gpu;
    *mod = m;
    return CUDA_SUCCESS;
}

/* A module from a file: the file must be there and readable (its content is not parsed, like any image here). */
static CUresult file_readable(const char *path) {
    if (!path) return CUDA_ERROR_INVALID_VALUE;
    FILE *f = fopen(path, "rb");
    if (!f) return CUDA_ERROR_FILE_NOT_FOUND;
    fclose(f);
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuModuleLoad, (CUmodule * mod, const char *fname)) {
    REQUIRE_INIT();
    CUresult rc = file_readable(fname);
    return rc == CUDA_SUCCESS ? fake_cuModuleLoadData(mod, fname) : rc;
}

FAKE(CUresult, cuModuleLoadFatBinary, (CUmodule * mod, const void *fatbin)) { return fake_cuModuleLoadData(mod, fatbin); }

FAKE(CUresult, cuModuleGetFunction, (CUfunction * f, CUmodule mod, const char *name)) {
    REQUIRE_INIT();
    if (!f || !mod || !name || mod->magic != 0x40d) return CUDA_ERROR_INVALID_VALUE;
    struct CUfunc_st *fn = calloc(1, sizeof *fn);
    if (!fn) return CUDA_ERROR_OUT_OF_MEMORY;
    fn->magic = 0xf00d;
    snprintf(fn->name, sizeof fn->name, "%s", name);
    *f = fn;
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuModuleUnload, (CUmodule mod)) {
    REQUIRE_INIT();
    if (!mod || mod->magic != 0x40d) return CUDA_ERROR_INVALID_VALUE;
    internal_uncharge(mod->gpu, fake_config_get()->module_bytes);
    mod->magic = 0;
    free(mod);
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuModuleLoadDataEx,
     (CUmodule * mod, const void *image, unsigned int n, CUjit_option *options, void **values)) {
    (void)n;
    (void)options;
    (void)values;
    return fake_cuModuleLoadData(mod, image);
}

/* Libraries (CUDA 12): loaded into the current context's device here (a real driver loads them into every
 * context, lazily); they cost FAKE_MODULE_KIB like a module. */
FAKE(CUresult, cuLibraryLoadData,
     (CUlibrary * library, const void *code, CUjit_option *jit_options, void **jit_values, unsigned int n_jit,
      CUlibraryOption *library_options, void **library_values, unsigned int n_library)) {
    (void)jit_options, (void)jit_values, (void)n_jit, (void)library_options, (void)library_values, (void)n_library;
    return fake_cuModuleLoadData((CUmodule *)library, code);
}

FAKE(CUresult, cuLibraryLoadFromFile,
     (CUlibrary * library, const char *file, CUjit_option *jit_options, void **jit_values, unsigned int n_jit,
      CUlibraryOption *library_options, void **library_values, unsigned int n_library)) {
    REQUIRE_INIT();
    CUresult rc = file_readable(file);
    if (rc != CUDA_SUCCESS) return rc;
    return fake_cuLibraryLoadData(library, file, jit_options, jit_values, n_jit, library_options, library_values,
                                  n_library);
}

FAKE(CUresult, cuLibraryUnload, (CUlibrary library)) { return fake_cuModuleUnload((CUmodule)library); }

/* ---------------------------------------------------------------- arrays */
/* Bytes of one element of an array format (block-compressed formats: per 4x4 block / 16, rounded up to 1). */
static unsigned format_bytes(CUarray_format f) {
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8: case CU_AD_FORMAT_SIGNED_INT8: case CU_AD_FORMAT_UNORM_INT8X1:
    case CU_AD_FORMAT_SNORM_INT8X1: case CU_AD_FORMAT_NV12: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16: case CU_AD_FORMAT_SIGNED_INT16: case CU_AD_FORMAT_HALF:
    case CU_AD_FORMAT_UNORM_INT8X2: case CU_AD_FORMAT_SNORM_INT8X2: case CU_AD_FORMAT_UNORM_INT16X1:
    case CU_AD_FORMAT_SNORM_INT16X1: return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32: case CU_AD_FORMAT_SIGNED_INT32: case CU_AD_FORMAT_FLOAT:
    case CU_AD_FORMAT_UNORM_INT8X4: case CU_AD_FORMAT_SNORM_INT8X4: case CU_AD_FORMAT_UNORM_INT16X2:
    case CU_AD_FORMAT_SNORM_INT16X2: return 4;
    case CU_AD_FORMAT_UNORM_INT16X4: case CU_AD_FORMAT_SNORM_INT16X4: return 8;
    default: return 4;
    }
}

/* Device memory of one level: rows padded to the pitch alignment, the whole rounded up to 64 KiB (the driver's
 * tiling and page granularity: never what width x height x depth x element suggests). 0 on overflow. */
static uint64_t array_level_bytes(uint64_t w, uint64_t h, uint64_t d, unsigned channels, CUarray_format f) {
    uint64_t align = fake_config_get()->pitch_alignment, elem = (uint64_t)format_bytes(f) * channels;
    if (w == 0 || elem == 0 || w > (UINT64_MAX / 4) / elem) return 0;
    uint64_t row = (w * elem + align - 1) / align * align;
    h = h ? h : 1;
    d = d ? d : 1;
    if (h > UINT64_MAX / 4 / row || d > UINT64_MAX / 4 / (row * h)) return 0;
    return (row * h * d + 0xffffull) & ~0xffffull;
}

#define ARRAY_MAGIC 0xa7a7a7a7u
struct CUarray_st {
    uint32_t magic;
    int gpu;
    uint64_t bytes;
};
struct CUmipmappedArray_st {
    uint32_t magic;
    int gpu;
    uint64_t bytes;
};

static CUresult array_create(void **out, size_t object, uint64_t bytes) {
    int gpu;
    CUresult rc = current_gpu(&gpu);
    if (rc != CUDA_SUCCESS) return rc;
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    rc = internal_charge(gpu, bytes);
    if (rc != CUDA_SUCCESS) return rc;
    struct CUarray_st *a = calloc(1, object);
    if (!a) {
        internal_uncharge(gpu, bytes);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *a = (struct CUarray_st){ARRAY_MAGIC, gpu, bytes};
    *out = a;
    return CUDA_SUCCESS;
}

static CUresult array_destroy(void *object) {
    struct CUarray_st *a = object;
    if (!a || a->magic != ARRAY_MAGIC) return CUDA_ERROR_INVALID_HANDLE;
    internal_uncharge(a->gpu, a->bytes);
    a->magic = 0;
    free(a);
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuArrayCreate_v2, (CUarray * array, const CUDA_ARRAY_DESCRIPTOR *desc)) {
    REQUIRE_INIT();
    if (!array || !desc || desc->NumChannels == 0 || desc->NumChannels > 4) return CUDA_ERROR_INVALID_VALUE;
    return array_create((void **)array, sizeof(struct CUarray_st),
                        array_level_bytes(desc->Width, desc->Height, 1, desc->NumChannels, desc->Format));
}

FAKE(CUresult, cuArray3DCreate_v2, (CUarray * array, const CUDA_ARRAY3D_DESCRIPTOR *desc)) {
    REQUIRE_INIT();
    if (!array || !desc || desc->NumChannels == 0 || desc->NumChannels > 4) return CUDA_ERROR_INVALID_VALUE;
    return array_create((void **)array, sizeof(struct CUarray_st),
                        array_level_bytes(desc->Width, desc->Height, desc->Depth, desc->NumChannels, desc->Format));
}

FAKE(CUresult, cuArrayDestroy, (CUarray array)) {
    REQUIRE_INIT();
    return array_destroy(array);
}

FAKE(CUresult, cuMipmappedArrayCreate,
     (CUmipmappedArray * array, const CUDA_ARRAY3D_DESCRIPTOR *desc, unsigned int levels)) {
    REQUIRE_INIT();
    if (!array || !desc || levels == 0 || levels > 32 || desc->NumChannels == 0 || desc->NumChannels > 4)
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t total = 0, w = desc->Width, h = desc->Height, d = desc->Depth;
    for (unsigned int l = 0; l < levels; l++) {
        uint64_t level = array_level_bytes(w, h, d, desc->NumChannels, desc->Format);
        if (level == 0) return CUDA_ERROR_INVALID_VALUE;
        total += level;
        w = w > 1 ? w / 2 : 1;
        h = h > 1 ? h / 2 : h;
        d = d > 1 ? d / 2 : d;
    }
    return array_create((void **)array, sizeof(struct CUmipmappedArray_st), total);
}

FAKE(CUresult, cuMipmappedArrayDestroy, (CUmipmappedArray array)) {
    REQUIRE_INIT();
    return array_destroy(array);
}

static CUresult requirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *req, const void *object, CUdevice dev) {
    REQUIRE_INIT();
    const struct CUarray_st *a = object;
    if (!req || !a || a->magic != ARRAY_MAGIC) return CUDA_ERROR_INVALID_VALUE;
    if (!gpu_of(dev) || g_visible[dev] != a->gpu) return CUDA_ERROR_INVALID_DEVICE;
    *req = (CUDA_ARRAY_MEMORY_REQUIREMENTS){.size = a->bytes, .alignment = 0x10000};
    return CUDA_SUCCESS;
}
FAKE(CUresult, cuArrayGetMemoryRequirements, (CUDA_ARRAY_MEMORY_REQUIREMENTS * req, CUarray array, CUdevice dev)) {
    return requirements(req, array, dev);
}
FAKE(CUresult, cuMipmappedArrayGetMemoryRequirements,
     (CUDA_ARRAY_MEMORY_REQUIREMENTS * req, CUmipmappedArray array, CUdevice dev)) {
    return requirements(req, array, dev);
}

/* Device time of a kernel. Per wave: the SMs run max_threads_per_sm / block blocks each at once, so
 * a grid takes ceil(grid / (sm_count * that)) waves; a partial wave takes as long as a full one and
 * the device counts as busy meanwhile (as NVML does). Otherwise: threads x ns_per_thread. */
static uint64_t kernel_cost_ns(const struct fake_gpu *g, uint64_t grid, uint64_t block) {
    const struct fake_config *c = fake_config_get();
    if (c->ns_per_wave > 0) {
        uint64_t per_sm = c->max_threads_per_sm / block;
        uint64_t resident = (uint64_t)g->sm_count * (per_sm ? per_sm : 1);
        uint64_t waves = resident ? (grid + resident - 1) / resident : grid;
        return (uint64_t)((double)waves * c->ns_per_wave);
    }
    return (uint64_t)((double)(grid * block) * c->ns_per_thread);
}

/* Queues cost_ns of device time on the stream's device. */
static void run_on_stream(struct CUstream_st *st, uint64_t cost_ns) {
    uint64_t end = fake_timeline_launch(g_visible[st->ctx->device], cost_ns);
    atomic_max_u64(&st->last_end_ns, end);
    atomic_max_u64(&st->ctx->last_end_ns, end);
}

static CUresult launch(CUfunction f, uint64_t grid, uint64_t block, CUstream s) {
    REQUIRE_INIT();
    if (!f || f->magic != 0xf00d) return CUDA_ERROR_INVALID_HANDLE;
    if (grid == 0 || block == 0 || block > 1024) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    struct CUstream_st *st = resolve_stream(s);
    if (!st) return CUDA_ERROR_INVALID_CONTEXT;
    run_on_stream(st, kernel_cost_ns(gpu_of(st->ctx->device), grid, block));
    return CUDA_SUCCESS;
}

#define LAUNCH_FAKE(name)                                                                              \
    FAKE(CUresult, name,                                                                               \
         (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, \
          unsigned int bz, unsigned int shmem, CUstream s, void **params, void **extra)) {              \
        (void)shmem;                                                                                   \
        (void)params;                                                                                  \
        (void)extra;                                                                                   \
        COUNT(name);                                                                                   \
        return launch(f, (uint64_t)gx * gy * gz, (uint64_t)bx * by * bz, s);                           \
    }
LAUNCH_FAKE(cuLaunchKernel)
LAUNCH_FAKE(cuLaunchKernel_ptsz)

#define COOP_FAKE(name)                                                                                \
    FAKE(CUresult, name,                                                                               \
         (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, \
          unsigned int bz, unsigned int shmem, CUstream s, void **params)) {                            \
        (void)shmem;                                                                                   \
        (void)params;                                                                                  \
        COUNT(name);                                                                                   \
        return launch(f, (uint64_t)gx * gy * gz, (uint64_t)bx * by * bz, s);                           \
    }
COOP_FAKE(cuLaunchCooperativeKernel)
COOP_FAKE(cuLaunchCooperativeKernel_ptsz)

#define EX_FAKE(name)                                                                                  \
    FAKE(CUresult, name, (const CUlaunchConfig *c, CUfunction f, void **params, void **extra)) {        \
        (void)params;                                                                                  \
        (void)extra;                                                                                   \
        COUNT(name);                                                                                   \
        if (!c) return CUDA_ERROR_INVALID_VALUE;                                                       \
        return launch(f, (uint64_t)c->gridDimX * c->gridDimY * c->gridDimZ,                            \
                      (uint64_t)c->blockDimX * c->blockDimY * c->blockDimZ, c->hStream);               \
    }
EX_FAKE(cuLaunchKernelEx)
EX_FAKE(cuLaunchKernelEx_ptsz)

/* ---------------------------------------------------------------- graphs
 * Graphs with memory nodes: cuGraphAddMemAllocNode gives the allocation its address at once; the device's graph
 * memory pool gets the physical memory when the executable graph is uploaded or first launched, keeps it while
 * the executable graph lives, and keeps it reserved (reused by later graphs) after that until
 * cuDeviceGraphMemTrim, as the real driver does. Other nodes are not modelled. */
#define GRAPH_MAGIC 0x67726170u
#define EXEC_MAGIC 0x65786563u
struct CUgraph_st {
    uint32_t magic;
    int device;     /* ordinal of its memory nodes (-1: none yet) */
    uint64_t bytes; /* its memory nodes together */
};
struct CUgraphExec_st {
    uint32_t magic;
    int device;
    uint64_t bytes;
    int uploaded;
};
static uint64_t g_graph_reserved[FAKE_MAX_GPUS], g_graph_used[FAKE_MAX_GPUS]; /* per ordinal, under g_pool_lock */
static struct CUgraphNode_st {
    uint32_t magic;
} g_mem_node = {0x6e6f6465u};

FAKE(CUresult, cuGraphCreate, (CUgraph * graph, unsigned int flags)) {
    REQUIRE_INIT();
    if (!graph || flags) return CUDA_ERROR_INVALID_VALUE;
    struct CUgraph_st *g = calloc(1, sizeof *g);
    if (!g) return CUDA_ERROR_OUT_OF_MEMORY;
    *g = (struct CUgraph_st){GRAPH_MAGIC, -1, 0};
    *graph = g;
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuGraphDestroy, (CUgraph graph)) {
    REQUIRE_INIT();
    if (!graph || graph->magic != GRAPH_MAGIC) return CUDA_ERROR_INVALID_VALUE;
    graph->magic = 0;
    free(graph);
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuGraphAddMemAllocNode,
     (CUgraphNode * node, CUgraph graph, const CUgraphNode *deps, size_t ndeps, CUDA_MEM_ALLOC_NODE_PARAMS *params)) {
    REQUIRE_INIT();
    (void)deps;
    (void)ndeps;
    if (!node || !graph || graph->magic != GRAPH_MAGIC || !params || params->bytesize == 0 ||
        params->poolProps.location.type != CU_MEM_LOCATION_TYPE_DEVICE || !gpu_of(params->poolProps.location.id) ||
        (graph->device >= 0 && graph->device != params->poolProps.location.id))
        return CUDA_ERROR_INVALID_VALUE;
    graph->device = params->poolProps.location.id;
    graph->bytes += params->bytesize;
    params->dptr = (CUdeviceptr)atomic_fetch_add(&g_next_address, (params->bytesize + 0xfffull) & ~0xfffull);
    *node = &g_mem_node;
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuGraphAddMemFreeNode,
     (CUgraphNode * node, CUgraph graph, const CUgraphNode *deps, size_t ndeps, CUdeviceptr dptr)) {
    REQUIRE_INIT();
    (void)deps;
    (void)ndeps;
    if (!node || !graph || graph->magic != GRAPH_MAGIC || !dptr) return CUDA_ERROR_INVALID_VALUE;
    *node = &g_mem_node;
    return CUDA_SUCCESS;
}

static CUresult instantiate(CUgraphExec *exec, CUgraph graph) {
    REQUIRE_INIT();
    if (!exec || !graph || graph->magic != GRAPH_MAGIC) return CUDA_ERROR_INVALID_VALUE;
    struct CUgraphExec_st *e = calloc(1, sizeof *e);
    if (!e) return CUDA_ERROR_OUT_OF_MEMORY;
    *e = (struct CUgraphExec_st){EXEC_MAGIC, graph->device, graph->bytes, 0};
    *exec = e;
    return CUDA_SUCCESS;
}
FAKE(CUresult, cuGraphInstantiateWithFlags, (CUgraphExec * exec, CUgraph graph, unsigned long long flags)) {
    (void)flags;
    return instantiate(exec, graph);
}
FAKE(CUresult, cuGraphInstantiateWithParams,
     (CUgraphExec * exec, CUgraph graph, CUDA_GRAPH_INSTANTIATE_PARAMS *params)) {
    (void)params;
    return instantiate(exec, graph);
}

/* The executable graph's memory, from the device's graph pool (growing it from the card when short). */
static CUresult upload(struct CUgraphExec_st *e) {
    if (e->uploaded || e->bytes == 0) return CUDA_SUCCESS;
    pthread_mutex_lock(&g_pool_lock);
    uint64_t *reserved = &g_graph_reserved[e->device], *used = &g_graph_used[e->device];
    uint64_t free_bytes = *reserved - *used;
    if (free_bytes < e->bytes) {
        CUresult rc = internal_charge(g_visible[e->device], e->bytes - free_bytes);
        if (rc != CUDA_SUCCESS) {
            pthread_mutex_unlock(&g_pool_lock);
            return rc;
        }
        *reserved += e->bytes - free_bytes;
    }
    *used += e->bytes;
    e->uploaded = 1;
    pthread_mutex_unlock(&g_pool_lock);
    return CUDA_SUCCESS;
}

static CUresult graph_upload(CUgraphExec exec, CUstream s) {
    REQUIRE_INIT();
    if (!exec || exec->magic != EXEC_MAGIC || !valid_stream(s)) return CUDA_ERROR_INVALID_VALUE;
    return upload(exec);
}
FAKE(CUresult, cuGraphUpload, (CUgraphExec exec, CUstream s)) { return graph_upload(exec, s); }
FAKE(CUresult, cuGraphUpload_ptsz, (CUgraphExec exec, CUstream s)) { return graph_upload(exec, s); }

FAKE(CUresult, cuGraphExecDestroy, (CUgraphExec exec)) {
    REQUIRE_INIT();
    if (!exec || exec->magic != EXEC_MAGIC) return CUDA_ERROR_INVALID_VALUE;
    if (exec->uploaded) {
        pthread_mutex_lock(&g_pool_lock);
        g_graph_used[exec->device] -= exec->bytes; /* stays reserved in the graph pool */
        pthread_mutex_unlock(&g_pool_lock);
    }
    exec->magic = 0;
    free(exec);
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuDeviceGraphMemTrim, (CUdevice dev)) {
    REQUIRE_INIT();
    if (!gpu_of(dev)) return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_pool_lock);
    internal_uncharge(g_visible[dev], g_graph_reserved[dev] - g_graph_used[dev]);
    g_graph_reserved[dev] = g_graph_used[dev];
    pthread_mutex_unlock(&g_pool_lock);
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuDeviceGetGraphMemAttribute, (CUdevice dev, CUgraphMem_attribute attr, void *value)) {
    REQUIRE_INIT();
    if (!gpu_of(dev)) return CUDA_ERROR_INVALID_DEVICE;
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_pool_lock);
    cuuint64_t v = attr == CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT ? g_graph_reserved[dev]
                   : attr == CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT   ? g_graph_used[dev]
                                                                  : ~(cuuint64_t)0;
    pthread_mutex_unlock(&g_pool_lock);
    if (v == ~(cuuint64_t)0) return CUDA_ERROR_NOT_SUPPORTED;
    *(cuuint64_t *)value = v;
    return CUDA_SUCCESS;
}

/* An executable graph is uploaded by its first launch. A launch costs FAKE_GRAPH_LAUNCH_NS of device time, by
 * default one wave of the device (every SM busy once), whatever its nodes. */
static CUresult graph_launch(CUgraphExec exec, CUstream s) {
    REQUIRE_INIT();
    if (!exec || exec->magic != EXEC_MAGIC || !valid_stream(s)) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = upload(exec);
    if (rc != CUDA_SUCCESS) return rc;
    struct CUstream_st *st = resolve_stream(s);
    if (!st) return CUDA_SUCCESS; /* no context: nothing to run it on (kept lenient for handle-only tests) */
    const struct fake_config *c = fake_config_get();
    const struct fake_gpu *g = gpu_of(st->ctx->device);
    uint64_t wave = kernel_cost_ns(g, (uint64_t)g->sm_count * c->max_threads_per_sm / 256, 256);
    run_on_stream(st, c->graph_ns > 0 ? (uint64_t)c->graph_ns : wave);
    return CUDA_SUCCESS;
}
FAKE(CUresult, cuGraphLaunch, (CUgraphExec exec, CUstream s)) {
    COUNT(cuGraphLaunch);
    return graph_launch(exec, s);
}
FAKE(CUresult, cuGraphLaunch_ptsz, (CUgraphExec exec, CUstream s)) {
    COUNT(cuGraphLaunch_ptsz);
    return graph_launch(exec, s);
}

/* ---------------------------------------------------------------- errors */
FAKE(CUresult, cuGetErrorString, (CUresult error, const char **str)) {
    if (!str) return CUDA_ERROR_INVALID_VALUE;
    switch (error) {
    case CUDA_SUCCESS: *str = "no error"; break;
    case CUDA_ERROR_INVALID_VALUE: *str = "invalid argument"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *str = "out of memory"; break;
    case CUDA_ERROR_NOT_INITIALIZED: *str = "initialization error"; break;
    case CUDA_ERROR_INVALID_CONTEXT: *str = "invalid device context"; break;
    case CUDA_ERROR_INVALID_DEVICE: *str = "invalid device ordinal"; break;
    case CUDA_ERROR_NOT_FOUND: *str = "named symbol not found"; break;
    default: *str = "unknown error (fake driver)"; break;
    }
    return CUDA_SUCCESS;
}
FAKE(CUresult, cuGetErrorName, (CUresult error, const char **str)) {
    if (!str) return CUDA_ERROR_INVALID_VALUE;
    switch (error) {
    case CUDA_SUCCESS: *str = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_INVALID_VALUE: *str = "CUDA_ERROR_INVALID_VALUE"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *str = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case CUDA_ERROR_NOT_INITIALIZED: *str = "CUDA_ERROR_NOT_INITIALIZED"; break;
    case CUDA_ERROR_INVALID_CONTEXT: *str = "CUDA_ERROR_INVALID_CONTEXT"; break;
    case CUDA_ERROR_NOT_FOUND: *str = "CUDA_ERROR_NOT_FOUND"; break;
    default: *str = "CUDA_ERROR_UNKNOWN"; break;
    }
    return CUDA_SUCCESS;
}

FAKE(CUresult, cuGetExportTable, (const void **table, const CUuuid *id)) {
    (void)table;
    (void)id;
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* ---------------------------------------------------------------- cuGetProcAddress */
CUresult fake_cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                                  CUdriverProcAddressQueryResult *status);
CUresult fake_cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags);
void fake_exported_cuGetProcAddress_v2(void) __asm__("cuGetProcAddress_v2");
void fake_exported_cuGetProcAddress(void) __asm__("cuGetProcAddress");

struct entry {
    const char *name;
    void *internal; /* what cuGetProcAddress hands out (FAKE_PROCADDR_INTERNAL_PERCENT of the entries) */
    void *exported; /* the exported stub, what dlsym returns */
};
#define E(n) {#n, (void *)fake_##n, (void *)fake_exported_##n}
static const struct entry g_entries[] = {
    E(cuInit), E(cuDriverGetVersion), E(cuDeviceGetCount), E(cuDeviceGet), E(cuDeviceGetName),
    E(cuDeviceGetUuid), E(cuDeviceGetUuid_v2), E(cuDeviceTotalMem_v2), E(cuDeviceGetPCIBusId),
    E(cuDeviceGetAttribute), E(cuDevicePrimaryCtxRetain), E(cuDevicePrimaryCtxRelease_v2),
    E(cuDevicePrimaryCtxGetState), E(cuDevicePrimaryCtxReset_v2), E(cuCtxCreate_v2), E(cuCtxCreate_v3),
    E(cuCtxCreate_v4), E(cuCtxDestroy_v2), E(cuModuleLoad), E(cuModuleLoadFatBinary), E(cuLibraryLoadFromFile),
    E(cuCtxSetCurrent), E(cuCtxGetCurrent), E(cuCtxPushCurrent_v2), E(cuCtxPopCurrent_v2), E(cuCtxGetDevice),
    E(cuCtxSynchronize), E(cuStreamCreate), E(cuStreamDestroy_v2), E(cuStreamSynchronize),
    E(cuStreamSynchronize_ptsz), E(cuStreamGetDevice), E(cuStreamGetDevice_ptsz), E(cuStreamGetCtx),
    E(cuMemAlloc_v2), E(cuMemAllocManaged), E(cuMemAllocPitch_v2), E(cuMemFree_v2), E(cuMemGetInfo_v2),
    E(cuMemAllocHost_v2), E(cuMemFreeHost), E(cuMemAllocAsync), E(cuMemAllocAsync_ptsz),
    E(cuMemAllocFromPoolAsync), E(cuMemAllocFromPoolAsync_ptsz), E(cuMemFreeAsync), E(cuMemFreeAsync_ptsz),
    E(cuDeviceGetDefaultMemPool), E(cuDeviceGetMemPool), E(cuMemPoolCreate), E(cuMemPoolDestroy),
    E(cuMemPoolTrimTo), E(cuMemPoolSetAttribute), E(cuMemPoolGetAttribute), E(cuMemGetAllocationGranularity),
    E(cuMemCreate), E(cuMemRelease), E(cuModuleLoadData), E(cuModuleGetFunction), E(cuModuleUnload),
    E(cuMemAlloc), E(cuMemAllocPitch), E(cuMemFree), E(cuMemGetInfo), E(cuDeviceTotalMem),
    E(cuModuleLoadDataEx), E(cuLibraryLoadData), E(cuLibraryUnload), E(cuArrayCreate_v2), E(cuArray3DCreate_v2),
    E(cuArrayDestroy), E(cuMipmappedArrayCreate), E(cuMipmappedArrayDestroy), E(cuArrayGetMemoryRequirements),
    E(cuMipmappedArrayGetMemoryRequirements),
    E(cuLaunchKernel), E(cuLaunchKernel_ptsz), E(cuLaunchCooperativeKernel), E(cuLaunchCooperativeKernel_ptsz),
    E(cuLaunchKernelEx), E(cuLaunchKernelEx_ptsz), E(cuGraphLaunch), E(cuGraphLaunch_ptsz),
    E(cuGraphCreate), E(cuGraphDestroy), E(cuGraphAddMemAllocNode), E(cuGraphAddMemFreeNode),
    E(cuGraphInstantiateWithFlags), E(cuGraphInstantiateWithParams), E(cuGraphUpload), E(cuGraphUpload_ptsz),
    E(cuGraphExecDestroy), E(cuDeviceGraphMemTrim), E(cuDeviceGetGraphMemAttribute),
    E(cuGetErrorString), E(cuGetErrorName), E(cuGetExportTable), E(cuGetProcAddress), E(cuGetProcAddress_v2),
};
#undef E

/* The driver's versioned names for the symbols this double implements. */
static const struct {
    const char *base;
    int since;
    const char *suffix;
} g_versions[] = {
    {"cuMemAlloc", 3020, "_v2"},       {"cuMemAllocPitch", 3020, "_v2"}, {"cuMemFree", 3020, "_v2"},
    {"cuMemGetInfo", 3020, "_v2"},     {"cuDeviceTotalMem", 3020, "_v2"}, {"cuMemAllocHost", 3020, "_v2"},
    {"cuCtxCreate", 12050, "_v4"},     {"cuCtxCreate", 11040, "_v3"},    {"cuCtxCreate", 3020, "_v2"},
    {"cuCtxDestroy", 4000, "_v2"},     {"cuDevicePrimaryCtxReset", 11000, "_v2"},
    {"cuCtxPushCurrent", 4000, "_v2"}, {"cuCtxPopCurrent", 4000, "_v2"}, {"cuStreamDestroy", 4000, "_v2"},
    {"cuDevicePrimaryCtxRelease", 11000, "_v2"}, {"cuDeviceGetUuid", 11040, "_v2"},
    {"cuGetProcAddress", 12000, "_v2"}, {"cuArrayCreate", 3020, "_v2"}, {"cuArray3DCreate", 3020, "_v2"},
};

/* First CUDA version (1000 * major + 10 * minor) that has an entry point; the real driver answers
 * CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT (and CUDA_ERROR_NOT_FOUND) to a caller asking for an older
 * version. Unlisted entries are as old as the driver API. */
static const struct {
    const char *base;
    int since;
} g_introduced[] = {
    {"cuMemAllocManaged", 6000},        {"cuLaunchCooperativeKernel", 9000}, {"cuDeviceGetUuid", 9020},
    {"cuGraphLaunch", 10000},           {"cuMemCreate", 10020},              {"cuMemRelease", 10020},
    {"cuMemGetAllocationGranularity", 10020}, {"cuMemAllocAsync", 11020},   {"cuMemFreeAsync", 11020},
    {"cuMemAllocFromPoolAsync", 11020}, {"cuMemPoolCreate", 11020},          {"cuMemPoolDestroy", 11020},
    {"cuDeviceGetDefaultMemPool", 11020}, {"cuDeviceGetMemPool", 11020},     {"cuMemPoolTrimTo", 11020},
    {"cuMemPoolSetAttribute", 11020},   {"cuMemPoolGetAttribute", 11020},     {"cuGetProcAddress", 11030},
    {"cuLaunchKernelEx", 11080},        {"cuGraphAddMemAllocNode", 11040},   {"cuGraphAddMemFreeNode", 11040},
    {"cuGraphInstantiateWithFlags", 11040}, {"cuGraphInstantiateWithParams", 12000}, {"cuGraphUpload", 11010},
    {"cuDeviceGraphMemTrim", 11040},    {"cuDeviceGetGraphMemAttribute", 11040},        {"cuLibraryLoadData", 12000}, {"cuLibraryLoadFromFile", 12000},        {"cuLibraryUnload", 12000},
    {"cuArrayGetMemoryRequirements", 11060}, {"cuMipmappedArrayGetMemoryRequirements", 11060},        {"cuStreamGetDevice", 12080},        {"cuStreamGetCtx", 9020},
};

static const struct entry *find_entry(const char *name) {
    for (size_t i = 0; i < sizeof g_entries / sizeof g_entries[0]; i++)
        if (strcmp(g_entries[i].name, name) == 0) return &g_entries[i];
    return NULL;
}

/* Whether cuGetProcAddress hands out the internal address of this entry: a stable choice per name (FNV-1a), so
 * FAKE_PROCADDR_INTERNAL_PERCENT=100 (the default, like the real driver) makes every entry internal and 0 none. */
static int internal_address(const char *name) {
    uint32_t h = 2166136261u;
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 16777619u;
    return (int)(h % 100u) < fake_config_get()->procaddr_internal_percent;
}

static int introduced_in(const char *base) {
    for (size_t i = 0; i < sizeof g_introduced / sizeof g_introduced[0]; i++)
        if (strcmp(g_introduced[i].base, base) == 0) return g_introduced[i].since;
    return 0;
}

static CUresult proc_address(const char *symbol, void **pfn, int version, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *status) {
    if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    if (flags & ~(cuuint64_t)(CU_GET_PROC_ADDRESS_LEGACY_STREAM | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM))
        return CUDA_ERROR_INVALID_VALUE;
    char name[128];
    const char *versioned = symbol;
    for (size_t i = 0; i < sizeof g_versions / sizeof g_versions[0]; i++) {
        if (strcmp(g_versions[i].base, symbol) == 0 && version >= g_versions[i].since) {
            snprintf(name, sizeof name, "%s%s", symbol, g_versions[i].suffix);
            versioned = name;
            break;
        }
    }
    const struct entry *e = NULL;
    if (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) {
        char pt[160];
        snprintf(pt, sizeof pt, "%s_ptsz", versioned);
        e = find_entry(pt);
        if (!e) {
            snprintf(pt, sizeof pt, "%s_ptds", versioned);
            e = find_entry(pt);
        }
    }
    if (!e) e = find_entry(versioned);
    if (!e) {
        if (status) *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        return CUDA_ERROR_NOT_FOUND;
    }
    if (version < introduced_in(symbol)) {
        if (status) *status = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
        return CUDA_ERROR_NOT_FOUND;
    }
    *pfn = internal_address(e->name) ? e->internal : e->exported;
    if (status) *status = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
}

/* Test-only: the entry point an address handed out by this driver (internal or exported) belongs to, or NULL. */
const char *fakecuda_entry_name(const void *fn) {
    for (size_t i = 0; i < sizeof g_entries / sizeof g_entries[0]; i++)
        if (fn && (g_entries[i].internal == fn || g_entries[i].exported == fn)) return g_entries[i].name;
    return NULL;
}

FAKE(CUresult, cuGetProcAddress_v2, (const char *symbol, void **pfn, int version, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *status)) {
    return proc_address(symbol, pfn, version, flags, status);
}
FAKE(CUresult, cuGetProcAddress, (const char *symbol, void **pfn, int version, cuuint64_t flags)) {
    return proc_address(symbol, pfn, version, flags, NULL);
}

/* hook_context.c - charging the device memory a CUDA context costs (hundreds of MiB on real cards: code,
 * stacks, printf and heap buffers) and a loaded module or library costs (its code and globals), which no
 * allocation call shows.
 *
 * The cost is measured, not assumed: NVML's used memory of this process on the context's GPU just before and
 * just after the driver creates the context (cuDevicePrimaryCtxRetain on the first retain, cuCtxCreate_v2/_v3/_v4;
 * cuModuleLoad, cuModuleLoadData[Ex], cuModuleLoadFatBinary, cuLibraryLoadData, cuLibraryLoadFromFile),
 * less what this process's own accounted allocations changed meanwhile (another thread allocating). It is
 * reserved against the container's budget like an allocation, in this process's slot, so the node sees it, the
 * in-container views (cuMemGetInfo, nvmlDeviceGetMemoryInfo) include it, and it is returned when the context
 * goes (last primary release or cuDevicePrimaryCtxReset, cuCtxDestroy, cuModuleUnload, cuLibraryUnload) or the
 * process exits or is reclaimed. A context whose cost does not
 * fit in the budget is destroyed again and refused with CUDA_ERROR_OUT_OF_MEMORY. Each charge is also recorded in the
 * slot as context or module memory (region layout 1.3, hami_kind_charge) right after it is reserved, and that record
 * is cleared right before the charge is released, so the node monitor can split used_bytes as HAMi-core does.
 *
 * Where NVML does not list this process (no NVML, or a PID namespace the node monitor has not yet mapped:
 * NVML names processes by host pid), the GPU's used memory is measured instead (the same delta, racing only
 * with other processes' allocations in that instant). Context creation is rare and never on a hot path: one
 * mutex serialises the measurements of this process. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "budget.h"
#include "config.h"
#include "log.h"
#include "nvml_lib.h"
#include "prim.h"
#include "region.h"
#include "alloc_table.h"
#include "devmap.h"
#include "hooks.h"
#include "real.h"

typedef nvmlReturn_t (*by_uuid_fn)(const char *, nvmlDevice_t *);
typedef nvmlReturn_t (*procs_fn)(nvmlDevice_t, unsigned int *, nvmlProcessInfo_t *);
typedef nvmlReturn_t (*mem_fn)(nvmlDevice_t, nvmlMemory_t *);

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static by_uuid_fn g_by_uuid;
static procs_fn g_procs;
static mem_fn g_mem;

/* Per CUDA ordinal: this process's primary-context retains and what its creation was charged. */
static int g_primary_refs[HAMI_MAX_DEVICES];
static uint64_t g_primary_bytes[HAMI_MAX_DEVICES];
static int g_primary_idx[HAMI_MAX_DEVICES];
static int g_primary_kinded[HAMI_MAX_DEVICES]; /* its charge is recorded as context memory in the slot */

/* The allocation table's limit index of a created context or loaded module also says whether its charge was
 * recorded in the slot's memory kinds (region_layout.h, 1.3), and as which. */
#define KIND_RECORDED 0x100
#define KIND_MODULE 0x200


/* g_lock is taken around fork() (as the device map's and the enumeration's locks are), so a child never inherits it
 * held by a thread that does not exist in the child. */
static void lock_for_fork(void) { pthread_mutex_lock(&g_lock); }
static void unlock_after_fork(void) { pthread_mutex_unlock(&g_lock); }

static void forget_after_fork(void) {
    /* The child has no contexts (a CUDA child must cuInit again) and none of the parent's charges. */
    pthread_mutex_unlock(&g_lock);
    memset(g_primary_refs, 0, sizeof g_primary_refs);
    memset(g_primary_bytes, 0, sizeof g_primary_bytes);
    memset(g_primary_kinded, 0, sizeof g_primary_kinded); /* created objects: the allocation table resets itself */
}

static void open_nvml(void) {
    const char *why = "";
    void *lib = hami_nvml_open(&why);
    pthread_atfork(lock_for_fork, unlock_after_fork, forget_after_fork);
    if (!lib) {
        HAMI_INFO("context memory: NVML not available (%s); contexts are not charged", why);
        return;
    }
    g_by_uuid = (by_uuid_fn)hami_real_dlsym(lib, "nvmlDeviceGetHandleByUUID");
    g_procs = (procs_fn)hami_real_dlsym(lib, "nvmlDeviceGetComputeRunningProcesses_v3");
    if (!g_procs) g_procs = (procs_fn)hami_real_dlsym(lib, "nvmlDeviceGetComputeRunningProcesses_v2");
    g_mem = (mem_fn)hami_real_dlsym(lib, "nvmlDeviceGetMemoryInfo");
}

static nvmlDevice_t nvml_handle(CUdevice dev) {
    typedef CUresult (*uuid_fn)(CUuuid *, CUdevice);
    uuid_fn get_uuid = REAL(cuDeviceGetUuid_v2, uuid_fn);
    if (!get_uuid) get_uuid = REAL(cuDeviceGetUuid, uuid_fn);
    CUuuid uuid;
    nvmlDevice_t h = NULL;
    char text[96];
    if (!g_by_uuid || !get_uuid || get_uuid(&uuid, dev) != CUDA_SUCCESS) return NULL;
    hami_format_uuid((const uint8_t *)uuid.bytes, text, sizeof text);
    return g_by_uuid(text, &h) == NVML_SUCCESS ? h : NULL;
}

/* One reading: this process's used memory on the GPU when NVML lists it (*per_process = 1), else the GPU's. */
struct reading {
    uint64_t process, device;
    int per_process;
    uint64_t own; /* this process's accounted bytes on the limit index */
};

static struct reading read_usage(nvmlDevice_t h, struct hami_region *r, int idx) {
    struct reading out = {0, 0, 0, 0};
    struct hami_proc_slot *slot = hami_region_self_slot(r);
    int32_t pid = slot ? atomic_load_explicit(&slot->host_pid, memory_order_relaxed) : 0;
    if (pid <= 0) pid = (int32_t)getpid();
    if (slot) out.own = atomic_load_explicit(&slot->used_bytes[idx], memory_order_relaxed);
    if (!h) return out;
    nvmlProcessInfo_t procs[64];
    unsigned int count = 64;
    if (g_procs && g_procs(h, &count, procs) == NVML_SUCCESS) {
        for (unsigned int i = 0; i < count && i < 64; i++) {
            if ((int32_t)procs[i].pid == pid) {
                out.process = procs[i].usedGpuMemory;
                out.per_process = 1;
            }
        }
    }
    nvmlMemory_t mem;
    if (g_mem && g_mem(h, &mem) == NVML_SUCCESS) out.device = mem.used;
    return out;
}

/* Bytes the context created between the readings cost, less this process's own accounted change. */
static uint64_t context_cost(const struct reading *before, const struct reading *after) {
    uint64_t grew = after->per_process ? (after->process > before->process ? after->process - before->process : 0)
                                       : (after->device > before->device ? after->device - before->device : 0);
    uint64_t own = after->own > before->own ? after->own - before->own : 0;
    return grew > own ? grew - own : 0;
}

struct measure {
    struct hami_region *r;
    int idx;
    nvmlDevice_t h;
    struct reading before;
};

/* Starts a measurement (takes g_lock; end it with measure_end). idx < 0: nothing to charge. */
static struct measure measure_begin(CUdevice dev) {
    pthread_once(&g_once, open_nvml);
    pthread_mutex_lock(&g_lock);
    struct measure m = {hami_region_get(), -1, NULL, {0, 0, 0, 0}};
    if (m.r) m.idx = hami_index_of_cuda_device(m.r, dev);
    /* Without a limit on the GPU nothing is enforced: skip the NVML queries (they cost every process's start). */
    if (m.idx < 0 || (hami_enforced_limit(m.r, m.idx) == 0 && !hami_enforced_foreign(m.idx))) {
        m.idx = -1;
        return m;
    }
    m.h = nvml_handle(dev);
    m.before = read_usage(m.h, m.r, m.idx);
    return m;
}

/* The measured cost, reserved and recorded as `kind` memory (*kinded = 1 when the slot took the record): 0 on
 * success (*bytes charged), -1 over the limit (nothing charged). */
static int measure_charge(const struct measure *m, int kind, uint64_t *bytes, int *kinded) {
    *bytes = 0;
    *kinded = 0;
    if (m->idx < 0 || !m->h) return 0;
    struct reading after = read_usage(m->h, m->r, m->idx);
    uint64_t cost = context_cost(&m->before, &after);
    if (cost == 0) return 0;
    if (hami_reserve(m->r, m->idx, cost) == HAMI_OVER_LIMIT) return -1;
    *bytes = cost;
    *kinded = hami_kind_charge(m->r, m->idx, kind, cost);
    HAMI_DEBUG("context on limit index %d charged %llu bytes (%s)", m->idx, (unsigned long long)cost,
               after.per_process ? "NVML per-process" : "NVML device used");
    return 0;
}

/* An object (created context, module, library) and what its creation was charged. */
static void remember(const void *object, uint64_t bytes, int idx, int kind, int kinded) {
    int tagged = idx | (kinded ? KIND_RECORDED : 0) | (kind == HAMI_KIND_MODULE ? KIND_MODULE : 0);
    if (bytes && hami_table_insert(HAMI_TABLE_OBJECTS, (uint64_t)(uintptr_t)object, bytes, tagged) != 0)
        HAMI_WARN("allocation table full: %llu bytes on device %d stay counted", (unsigned long long)bytes, idx);
}

/* After the driver destroyed an object (rc), returns its charge: its kind's record first, so the split never
 * exceeds what the slot holds. */
static CUresult destroy_object(const void *object, CUresult rc) {
    struct hami_alloc_info info;
    if (rc == CUDA_SUCCESS && object && hami_table_take(HAMI_TABLE_OBJECTS, (uint64_t)(uintptr_t)object, &info)) {
        struct hami_region *r = hami_region_get();
        int idx = info.dev & 0xff;
        if (info.dev & KIND_RECORDED)
            hami_kind_release(r, idx, (info.dev & KIND_MODULE) ? HAMI_KIND_MODULE : HAMI_KIND_CONTEXT, info.bytes);
        hami_release(r, idx, info.bytes);
    }
    return rc;
}

static CUresult not_in_driver(const char *name) {
    HAMI_ERROR("the CUDA driver has no %s", name);
    return CUDA_ERROR_NOT_FOUND;
}

CUresult hami_cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    pfn_cuDevicePrimaryCtxRetain real = REAL(cuDevicePrimaryCtxRetain, pfn_cuDevicePrimaryCtxRetain);
    if (!real) return not_in_driver("cuDevicePrimaryCtxRetain");
    if (!pctx || dev < 0 || dev >= HAMI_MAX_DEVICES) return real(pctx, dev);
    struct measure m = measure_begin(dev);
    int first = g_primary_refs[dev] == 0;
    CUresult rc = real(pctx, dev);
    if (rc == CUDA_SUCCESS) {
        uint64_t bytes = 0;
        int kinded = 0;
        if (first && measure_charge(&m, HAMI_KIND_CONTEXT, &bytes, &kinded) != 0) {
            pfn_cuDevicePrimaryCtxRelease release = REAL(cuDevicePrimaryCtxRelease_v2, pfn_cuDevicePrimaryCtxRelease);
            if (release) release(dev);
            *pctx = NULL;
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            if (first) {
                g_primary_bytes[dev] = bytes;
                g_primary_idx[dev] = m.idx;
                g_primary_kinded[dev] = kinded;
            }
            g_primary_refs[dev]++;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

/* Returns the primary context's charge on dev (g_lock held). */
static void release_primary(CUdevice dev) {
    struct hami_region *r = hami_region_get();
    if (g_primary_kinded[dev]) hami_kind_release(r, g_primary_idx[dev], HAMI_KIND_CONTEXT, g_primary_bytes[dev]);
    hami_release(r, g_primary_idx[dev], g_primary_bytes[dev]);
    g_primary_bytes[dev] = 0;
    g_primary_kinded[dev] = 0;
}

static CUresult primary_release(pfn_cuDevicePrimaryCtxRelease real, CUdevice dev) {
    if (dev < 0 || dev >= HAMI_MAX_DEVICES) return real(dev);
    pthread_once(&g_once, open_nvml);
    pthread_mutex_lock(&g_lock);
    CUresult rc = real(dev);
    if (rc == CUDA_SUCCESS && g_primary_refs[dev] > 0 && --g_primary_refs[dev] == 0 && g_primary_bytes[dev])
        release_primary(dev);
    pthread_mutex_unlock(&g_lock);
    return rc;
}

CUresult hami_cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    pfn_cuDevicePrimaryCtxRelease real = REAL(cuDevicePrimaryCtxRelease_v2, pfn_cuDevicePrimaryCtxRelease);
    return real ? primary_release(real, dev) : not_in_driver("cuDevicePrimaryCtxRelease_v2");
}

/* cuDevicePrimaryCtxReset destroys the primary context whatever its retain count (cudaDeviceReset): its charge goes
 * as at the last release, and the next retain creates it again and is measured and charged again. What the reset
 * freed of this process's allocations stays counted until they are freed (the driver then refuses the free) or the
 * process exits; the node monitor's reconciliation sees the difference. */
CUresult hami_cuDevicePrimaryCtxReset_v2(CUdevice dev) {
    pfn_cuDevicePrimaryCtxReset real = REAL(cuDevicePrimaryCtxReset_v2, pfn_cuDevicePrimaryCtxReset);
    if (!real) return not_in_driver("cuDevicePrimaryCtxReset_v2");
    if (dev < 0 || dev >= HAMI_MAX_DEVICES) return real(dev);
    pthread_once(&g_once, open_nvml);
    pthread_mutex_lock(&g_lock);
    CUresult rc = real(dev);
    if (rc == CUDA_SUCCESS) {
        if (g_primary_refs[dev] > 0 && g_primary_bytes[dev]) release_primary(dev);
        g_primary_bytes[dev] = 0;
        g_primary_refs[dev] = 0;
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

/* cuCtxCreate*: `create` runs the driver's variant; the new context is charged and remembered. */
static CUresult created_context(CUcontext *pctx, CUdevice dev, CUresult (*create)(void *), void *args) {
    struct measure m = measure_begin(dev);
    CUresult rc = create(args);
    if (rc == CUDA_SUCCESS && pctx && *pctx) {
        uint64_t bytes = 0;
        int kinded = 0;
        if (measure_charge(&m, HAMI_KIND_CONTEXT, &bytes, &kinded) != 0) {
            pfn_cuCtxDestroy destroy = REAL(cuCtxDestroy_v2, pfn_cuCtxDestroy);
            if (destroy) destroy(*pctx);
            *pctx = NULL;
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            remember(*pctx, bytes, m.idx, HAMI_KIND_CONTEXT, kinded);
        }
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

struct create_v2_args {
    pfn_cuCtxCreate_v2 real;
    CUcontext *pctx;
    unsigned int flags;
    CUdevice dev;
};
static CUresult run_create_v2(void *p) {
    struct create_v2_args *a = p;
    return a->real(a->pctx, a->flags, a->dev);
}
CUresult hami_cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev) {
    struct create_v2_args a = {REAL(cuCtxCreate_v2, pfn_cuCtxCreate_v2), pctx, flags, dev};
    if (!a.real) return not_in_driver("cuCtxCreate_v2");
    return created_context(pctx, dev, run_create_v2, &a);
}

struct create_v3_args {
    pfn_cuCtxCreate_v3 real;
    CUcontext *pctx;
    CUexecAffinityParam *params;
    int n;
    unsigned int flags;
    CUdevice dev;
};
static CUresult run_create_v3(void *p) {
    struct create_v3_args *a = p;
    return a->real(a->pctx, a->params, a->n, a->flags, a->dev);
}
CUresult hami_cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int n, unsigned int flags, CUdevice dev) {
    struct create_v3_args a = {REAL(cuCtxCreate_v3, pfn_cuCtxCreate_v3), pctx, params, n, flags, dev};
    if (!a.real) return not_in_driver("cuCtxCreate_v3");
    return created_context(pctx, dev, run_create_v3, &a);
}

struct create_v4_args {
    pfn_cuCtxCreate_v4 real;
    CUcontext *pctx;
    CUctxCreateParams *params;
    unsigned int flags;
    CUdevice dev;
};
static CUresult run_create_v4(void *p) {
    struct create_v4_args *a = p;
    return a->real(a->pctx, a->params, a->flags, a->dev);
}
CUresult hami_cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags, CUdevice dev) {
    struct create_v4_args a = {REAL(cuCtxCreate_v4, pfn_cuCtxCreate_v4), pctx, params, flags, dev};
    if (!a.real) return not_in_driver("cuCtxCreate_v4");
    return created_context(pctx, dev, run_create_v4, &a);
}

CUresult hami_cuCtxDestroy_v2(CUcontext ctx) {
    pfn_cuCtxDestroy real = REAL(cuCtxDestroy_v2, pfn_cuCtxDestroy);
    if (!real) return not_in_driver("cuCtxDestroy_v2");
    if (!ctx) return real(ctx);
    return destroy_object(ctx, real(ctx));
}

/* ---- modules and libraries: loaded into the current context's device. With lazy loading (CUDA_MODULE_LOADING=LAZY,
 * the default from CUDA 12.2) most of a module's memory comes when a function is first used, not at load: that
 * part is not seen here (the node monitor's reconciliation is the backstop). */
static CUresult loaded_object(void **object, CUresult (*load)(void *), void *args) {
    CUdevice dev = -1;
    typedef CUresult (*ctx_device_fn)(CUdevice *);
    ctx_device_fn ctx_device = REAL(cuCtxGetDevice, ctx_device_fn);
    if (!object || !ctx_device || ctx_device(&dev) != CUDA_SUCCESS || dev < 0) return load(args);
    struct measure m = measure_begin(dev);
    CUresult rc = load(args);
    if (rc == CUDA_SUCCESS && *object) {
        uint64_t bytes = 0;
        int kinded = 0;
        if (measure_charge(&m, HAMI_KIND_MODULE, &bytes, &kinded) != 0) {
            pthread_mutex_unlock(&g_lock);
            return CUDA_ERROR_OUT_OF_MEMORY; /* the caller unloads it; see the hooks */
        }
        remember(*object, bytes, m.idx, HAMI_KIND_MODULE, kinded);
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

struct module_args {
    pfn_cuModuleLoadDataEx real;
    CUmodule *mod;
    const void *image;
    unsigned int n;
    CUjit_option *options;
    void **values;
};
static CUresult run_module_load(void *p) {
    struct module_args *a = p;
    return a->real(a->mod, a->image, a->n, a->options, a->values);
}

/* A module whose cost does not fit is unloaded again and refused. */
static CUresult module_result(CUresult rc, CUmodule *mod) {
    if (rc != CUDA_ERROR_OUT_OF_MEMORY || !mod || !*mod) return rc;
    pfn_cuModuleUnload unload = REAL(cuModuleUnload, pfn_cuModuleUnload);
    if (unload) unload(*mod);
    *mod = NULL;
    return rc;
}

static CUresult module_load_data_ex(CUmodule *mod, const void *image, unsigned int n, CUjit_option *options,
                                    void **values) {
    pfn_cuModuleLoadDataEx real = REAL(cuModuleLoadDataEx, pfn_cuModuleLoadDataEx);
    if (!real) return not_in_driver("cuModuleLoadDataEx");
    struct module_args a = {real, mod, image, n, options, values};
    if (mod) *mod = NULL;
    return module_result(loaded_object((void **)mod, run_module_load, &a), mod);
}

static CUresult run_plain_module_load(void *p) {
    struct module_args *a = p;
    return ((pfn_cuModuleLoadData)(void *)a->real)(a->mod, a->image);
}

CUresult hami_cuModuleLoadData(CUmodule *mod, const void *image) {
    pfn_cuModuleLoadData real = REAL(cuModuleLoadData, pfn_cuModuleLoadData);
    if (!real) return not_in_driver("cuModuleLoadData");
    struct module_args a = {(pfn_cuModuleLoadDataEx)(void *)real, mod, image, 0, NULL, NULL};
    if (mod) *mod = NULL;
    return module_result(loaded_object((void **)mod, run_plain_module_load, &a), mod);
}

/* cuModuleLoad (a cubin, PTX or fatbin file) and cuModuleLoadFatBinary: charged like cuModuleLoadData. */
static CUresult run_file_module_load(void *p) {
    struct module_args *a = p;
    return ((pfn_cuModuleLoad)(void *)a->real)(a->mod, (const char *)a->image);
}

CUresult hami_cuModuleLoad(CUmodule *mod, const char *fname) {
    pfn_cuModuleLoad real = REAL(cuModuleLoad, pfn_cuModuleLoad);
    if (!real) return not_in_driver("cuModuleLoad");
    struct module_args a = {(pfn_cuModuleLoadDataEx)(void *)real, mod, fname, 0, NULL, NULL};
    if (mod) *mod = NULL;
    return module_result(loaded_object((void **)mod, run_file_module_load, &a), mod);
}

CUresult hami_cuModuleLoadFatBinary(CUmodule *mod, const void *fatbin) {
    pfn_cuModuleLoadData real = REAL(cuModuleLoadFatBinary, pfn_cuModuleLoadData);
    if (!real) return not_in_driver("cuModuleLoadFatBinary");
    struct module_args a = {(pfn_cuModuleLoadDataEx)(void *)real, mod, fatbin, 0, NULL, NULL};
    if (mod) *mod = NULL;
    return module_result(loaded_object((void **)mod, run_plain_module_load, &a), mod);
}

CUresult hami_cuModuleLoadDataEx(CUmodule *mod, const void *image, unsigned int n, CUjit_option *options,
                                 void **values) {
    return module_load_data_ex(mod, image, n, options, values);
}

CUresult hami_cuModuleUnload(CUmodule mod) {
    pfn_cuModuleUnload real = REAL(cuModuleUnload, pfn_cuModuleUnload);
    if (!real) return not_in_driver("cuModuleUnload");
    return destroy_object(mod, real(mod));
}

struct library_args {
    pfn_cuLibraryLoadData real;
    CUlibrary *library;
    const void *code;
    CUjit_option *jit_options;
    void **jit_values;
    unsigned int n_jit;
    CUlibraryOption *library_options;
    void **library_values;
    unsigned int n_library;
};
static CUresult run_library_load(void *p) {
    struct library_args *a = p;
    return a->real(a->library, a->code, a->jit_options, a->jit_values, a->n_jit, a->library_options,
                   a->library_values, a->n_library);
}

/* A library whose cost does not fit is unloaded again and refused. */
static CUresult library_load(CUlibrary *library, CUresult (*run)(void *), struct library_args *a) {
    if (library) *library = NULL;
    CUresult rc = loaded_object((void **)library, run, a);
    if (rc == CUDA_ERROR_OUT_OF_MEMORY && library && *library) {
        pfn_cuLibraryUnload unload = REAL(cuLibraryUnload, pfn_cuLibraryUnload);
        if (unload) unload(*library);
        *library = NULL;
    }
    return rc;
}

CUresult hami_cuLibraryLoadData(CUlibrary *library, const void *code, CUjit_option *jit_options, void **jit_values,
                                unsigned int n_jit, CUlibraryOption *library_options, void **library_values,
                                unsigned int n_library) {
    pfn_cuLibraryLoadData real = REAL(cuLibraryLoadData, pfn_cuLibraryLoadData);
    if (!real) return not_in_driver("cuLibraryLoadData");
    struct library_args a = {real, library, code, jit_options, jit_values, n_jit, library_options, library_values,
                             n_library};
    return library_load(library, run_library_load, &a);
}

static CUresult run_library_load_file(void *p) {
    struct library_args *a = p;
    return ((pfn_cuLibraryLoadFromFile)(void *)a->real)(a->library, (const char *)a->code, a->jit_options,
                                                        a->jit_values, a->n_jit, a->library_options,
                                                        a->library_values, a->n_library);
}

CUresult hami_cuLibraryLoadFromFile(CUlibrary *library, const char *file, CUjit_option *jit_options,
                                    void **jit_values, unsigned int n_jit, CUlibraryOption *library_options,
                                    void **library_values, unsigned int n_library) {
    pfn_cuLibraryLoadFromFile real = REAL(cuLibraryLoadFromFile, pfn_cuLibraryLoadFromFile);
    if (!real) return not_in_driver("cuLibraryLoadFromFile");
    struct library_args a = {(pfn_cuLibraryLoadData)(void *)real, library, file, jit_options, jit_values, n_jit,
                             library_options, library_values, n_library};
    return library_load(library, run_library_load_file, &a);
}

CUresult hami_cuLibraryUnload(CUlibrary library) {
    pfn_cuLibraryUnload real = REAL(cuLibraryUnload, pfn_cuLibraryUnload);
    if (!real) return not_in_driver("cuLibraryUnload");
    return destroy_object(library, real(library));
}

/* cuda_probe.c - a CUDA driver client for the tests: runs the commands given on
 * its command line against libcuda.so.1 (direct symbol calls, as a linked
 * application does) and prints one JSON object per command on stdout.
 * Under LD_PRELOAD=libvgpu.so every call goes through the interposer. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cuda.h>

#include "hami_budget.h"

/* cuda.h (CUDA 13) declares cuCtxCreate_v3 only for the driver's own build; the driver still exports it. */
CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int n, unsigned int flags, CUdevice dev);

#define MAX_PTRS 4096
static CUdeviceptr g_ptrs[MAX_PTRS];
static CUmemGenericAllocationHandle g_handles[MAX_PTRS];
static int g_nptrs, g_nhandles;
static CUcontext g_ctx;
static CUcontext g_created;
static CUgraphExec g_graph_exec;
static CUmodule g_module;
static CUlibrary g_library;
static CUarray g_array;
static CUmipmappedArray g_mipmap;

static unsigned long long parse_size(const char *s) {
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    switch (*end) {
    case 'k': return v << 10;
    case 'm': return v << 20;
    case 'g': return v << 30;
    default: return v;
    }
}

static void print_rc(const char *cmd, CUresult rc) { printf("{\"cmd\":\"%s\",\"rc\":%d}\n", cmd, (int)rc); }

static void print_alloc(const char *cmd, CUresult rc) {
    if (rc == CUDA_SUCCESS) printf("{\"cmd\":\"%s\",\"rc\":0,\"id\":%d}\n", cmd, g_nptrs - 1);
    else print_rc(cmd, rc);
}

typedef int (*query_fn)(int, unsigned long long *, unsigned long long *, unsigned long long *);

static void print_budget(int dev) {
    query_fn q = (query_fn)dlsym(RTLD_DEFAULT, "hami_budget_query");
    unsigned long long limit = 0, total = 0, self = 0;
    int rc = q ? q(dev, &limit, &total, &self) : -2;
    printf("{\"cmd\":\"budget\",\"rc\":%d,\"limit\":%llu,\"used_total\":%llu,\"used_self\":%llu}\n", rc, limit, total,
           self);
}

struct thread_args {
    int iters;
    unsigned long long size;
    int failures;
};

static void *thread_loop(void *arg) {
    struct thread_args *a = arg;
    cuCtxSetCurrent(g_ctx);
    for (int i = 0; i < a->iters; i++) {
        CUdeviceptr p;
        CUresult rc = cuMemAlloc_v2(&p, a->size);
        if (rc == CUDA_ERROR_OUT_OF_MEMORY) continue;
        if (rc != CUDA_SUCCESS || cuMemFree_v2(p) != CUDA_SUCCESS) a->failures++;
    }
    return NULL;
}

static CUfunction g_kernel;

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef CUresult (*launch_fn)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                              CUstream, void **, void **);
typedef CUresult (*coop_fn)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                            CUstream, void **);
typedef CUresult (*ex_fn)(const CUlaunchConfig *, CUfunction, void **, void **);
typedef CUresult (*graph_fn)(CUgraphExec, CUstream);

/* An executable graph without nodes (the driver double gives a graph launch its own device time). */
static CUgraphExec probe_exec(void) {
    static CUgraphExec exec;
    CUgraph graph;
    if (!exec && cuGraphCreate(&graph, 0) == CUDA_SUCCESS) cuGraphInstantiate(&exec, graph, 0);
    return exec;
}

/* One launch through the entry point named by path (per-thread-stream variants looked up with dlsym,
 * which finds libvgpu.so's export first when it is preloaded, as for any application). */
static CUresult launch_path(const char *path, unsigned grid, unsigned block, CUstream stream) {
    int ptsz = strstr(path, "_ptsz") != NULL;
    if (!strncmp(path, "kernel", 6)) {
        launch_fn fn = ptsz ? (launch_fn)dlsym(RTLD_DEFAULT, "cuLaunchKernel_ptsz") : cuLaunchKernel;
        return fn(g_kernel, grid, 1, 1, block, 1, 1, 0, stream, NULL, NULL);
    }
    if (!strncmp(path, "coop", 4)) {
        coop_fn fn = ptsz ? (coop_fn)dlsym(RTLD_DEFAULT, "cuLaunchCooperativeKernel_ptsz") : cuLaunchCooperativeKernel;
        return fn(g_kernel, grid, 1, 1, block, 1, 1, 0, stream, NULL);
    }
    if (!strncmp(path, "ex", 2)) {
        CUlaunchConfig cfg = {0};
        cfg.gridDimX = grid;
        cfg.gridDimY = cfg.gridDimZ = cfg.blockDimY = cfg.blockDimZ = 1;
        cfg.blockDimX = block;
        cfg.hStream = stream;
        ex_fn fn = ptsz ? (ex_fn)dlsym(RTLD_DEFAULT, "cuLaunchKernelEx_ptsz") : cuLaunchKernelEx;
        return fn(&cfg, g_kernel, NULL, NULL);
    }
    if (!strncmp(path, "graph", 5)) {
        graph_fn fn = ptsz ? (graph_fn)dlsym(RTLD_DEFAULT, "cuGraphLaunch_ptsz") : cuGraphLaunch;
        return fn(probe_exec(), stream);
    }
    return CUDA_ERROR_INVALID_VALUE;
}

/* A saturating workload: batches of `batch` launches alternating between two streams; after queueing a
 * batch it waits for the previous one, so the device always has work queued and the process always
 * wants more. Prints {"cmd":"progress","t":<CLOCK_MONOTONIC s>,"n":<kernels completed>} about every
 * 50 ms, then a summary. */
static void saturate(const char *path, unsigned grid, unsigned block, double seconds, int batch) {
    CUstream streams[2];
    CUresult rc = cuStreamCreate(&streams[0], 0);
    if (rc == CUDA_SUCCESS) rc = cuStreamCreate(&streams[1], 0);
    long launched = 0, completed = 0, pending[2] = {0, 0};
    double start = mono_s(), last_print = start;
    printf("{\"cmd\":\"progress\",\"t\":%.6f,\"n\":0}\n", start); /* the first launch is about now */
    for (int k = 0; rc == CUDA_SUCCESS && mono_s() - start < seconds; k ^= 1) {
        pending[k] = 0;
        for (int i = 0; i < batch && rc == CUDA_SUCCESS; i++)
            if ((rc = launch_path(path, grid, block, streams[k])) == CUDA_SUCCESS) pending[k]++;
        launched += pending[k];
        if (rc == CUDA_SUCCESS) rc = cuStreamSynchronize(streams[k ^ 1]);
        completed += pending[k ^ 1];
        pending[k ^ 1] = 0;
        double now = mono_s();
        if (now - last_print >= 0.05) {
            printf("{\"cmd\":\"progress\",\"t\":%.6f,\"n\":%ld}\n", now, completed);
            last_print = now;
        }
    }
    if (rc == CUDA_SUCCESS) rc = cuCtxSynchronize();
    completed = launched;
    printf("{\"cmd\":\"saturate\",\"rc\":%d,\"path\":\"%s\",\"launched\":%ld,\"completed\":%ld,"
           "\"seconds\":%.6f,\"t\":%.6f}\n", (int)rc, path, launched, completed, mono_s() - start, mono_s());
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *c = argv[i];
        CUresult rc;
        if (!strcmp(c, "init")) {
            print_rc(c, cuInit(0));
        } else if (!strcmp(c, "ctx")) {
            CUdevice dev;
            rc = cuDeviceGet(&dev, atoi(argv[++i]));
            if (rc == CUDA_SUCCESS) rc = cuDevicePrimaryCtxRetain(&g_ctx, dev);
            if (rc == CUDA_SUCCESS) rc = cuCtxSetCurrent(g_ctx);
            print_rc(c, rc);
        } else if (!strcmp(c, "devices")) {
            /* The devices this process sees: cuDeviceGetCount, then each one's UUID (cuDeviceGetUuid_v2) in
             * NVIDIA's GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx form. */
            int count = 0;
            rc = cuDeviceGetCount(&count);
            printf("{\"cmd\":\"devices\",\"rc\":%d,\"count\":%d,\"uuids\":[", (int)rc, count);
            for (int d = 0; rc == CUDA_SUCCESS && d < count; d++) {
                CUdevice dev;
                CUuuid id;
                CUresult r = cuDeviceGet(&dev, d);
                if (r == CUDA_SUCCESS) r = cuDeviceGetUuid_v2(&id, dev);
                const unsigned char *b = (const unsigned char *)id.bytes;
                if (r == CUDA_SUCCESS)
                    printf("%s\"GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x\"", d ? "," : "",
                           b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                           b[14], b[15]);
                else
                    printf("%s\"error %d\"", d ? "," : "", (int)r);
            }
            printf("]}\n");
        } else if (!strcmp(c, "ctx-release")) {
            CUdevice dev;
            rc = cuDeviceGet(&dev, atoi(argv[++i]));
            if (rc == CUDA_SUCCESS) rc = cuDevicePrimaryCtxRelease_v2(dev);
            print_rc(c, rc);
        } else if (!strcmp(c, "ctx-create")) {
            /* A created (not primary) context, pushed current; ctx-destroy destroys the latest one. */
            CUdevice dev;
            rc = cuDeviceGet(&dev, atoi(argv[++i]));
            if (rc == CUDA_SUCCESS) rc = cuCtxCreate_v4(&g_created, NULL, 0, dev);
            print_rc(c, rc);
        } else if (!strcmp(c, "ctx-create3")) {
            /* A created context through cuCtxCreate_v3 (CUDA 11.4-12.4's, with execution affinity: none here). */
            CUdevice dev;
            rc = cuDeviceGet(&dev, atoi(argv[++i]));
            if (rc == CUDA_SUCCESS) rc = cuCtxCreate_v3(&g_created, NULL, 0, 0, dev);
            print_rc(c, rc);
        } else if (!strcmp(c, "ctx-reset")) {
            CUdevice dev;
            rc = cuDeviceGet(&dev, atoi(argv[++i]));
            if (rc == CUDA_SUCCESS) rc = cuDevicePrimaryCtxReset_v2(dev);
            print_rc(c, rc);
        } else if (!strcmp(c, "ctx-destroy")) {
            rc = cuCtxDestroy_v2(g_created);
            g_created = NULL;
            print_rc(c, rc);
        } else if (!strcmp(c, "alloc")) {
            rc = cuMemAlloc_v2(&g_ptrs[g_nptrs], parse_size(argv[++i]));
            if (rc == CUDA_SUCCESS) g_nptrs++;
            print_alloc(c, rc);
        } else if (!strcmp(c, "managed")) {
            rc = cuMemAllocManaged(&g_ptrs[g_nptrs], parse_size(argv[++i]), CU_MEM_ATTACH_GLOBAL);
            if (rc == CUDA_SUCCESS) g_nptrs++;
            print_alloc(c, rc);
        } else if (!strcmp(c, "pitch")) {
            size_t pitch = 0, w = parse_size(argv[i + 1]), h = parse_size(argv[i + 2]);
            i += 2;
            rc = cuMemAllocPitch_v2(&g_ptrs[g_nptrs], &pitch, w, h, 4);
            if (rc == CUDA_SUCCESS) g_nptrs++;
            printf("{\"cmd\":\"pitch\",\"rc\":%d,\"pitch\":%zu,\"id\":%d}\n", (int)rc, pitch, g_nptrs - 1);
        } else if (!strcmp(c, "async")) {
            rc = cuMemAllocAsync(&g_ptrs[g_nptrs], parse_size(argv[++i]), NULL);
            if (rc == CUDA_SUCCESS) g_nptrs++;
            print_alloc(c, rc);
        } else if (!strcmp(c, "pool")) {
            CUmemoryPool pool;
            CUdevice dev;
            rc = cuCtxGetDevice(&dev);
            if (rc == CUDA_SUCCESS) rc = cuDeviceGetDefaultMemPool(&pool, dev);
            if (rc == CUDA_SUCCESS) rc = cuMemAllocFromPoolAsync(&g_ptrs[g_nptrs], parse_size(argv[++i]), pool, NULL);
            else i++;
            if (rc == CUDA_SUCCESS) g_nptrs++;
            print_alloc(c, rc);
        } else if (!strcmp(c, "devpool") || !strcmp(c, "hostpool")) {
            /* A pool created explicitly (on device <ordinal>, or in host memory), allocated from on the
             * current context's default stream. */
            CUmemPoolProps props = {0};
            props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
            props.location.type = !strcmp(c, "devpool") ? CU_MEM_LOCATION_TYPE_DEVICE : CU_MEM_LOCATION_TYPE_HOST;
            props.location.id = !strcmp(c, "devpool") ? atoi(argv[++i]) : 0;
            CUmemoryPool pool;
            rc = cuMemPoolCreate(&pool, &props);
            if (rc == CUDA_SUCCESS) rc = cuMemAllocFromPoolAsync(&g_ptrs[g_nptrs], parse_size(argv[++i]), pool, NULL);
            else i++;
            if (rc == CUDA_SUCCESS) g_nptrs++;
            print_alloc(c, rc);
        } else if (!strcmp(c, "pool-threshold") || !strcmp(c, "pool-trim")) {
            /* pool-threshold <ordinal> <bytes>: the release threshold of the device's default pool;
             * pool-trim <ordinal> <bytes>: cuMemPoolTrimTo on it. */
            CUmemoryPool pool;
            CUdevice dev;
            rc = cuDeviceGet(&dev, atoi(argv[++i]));
            cuuint64_t bytes = parse_size(argv[++i]);
            if (rc == CUDA_SUCCESS) rc = cuDeviceGetDefaultMemPool(&pool, dev);
            if (rc == CUDA_SUCCESS)
                rc = c[5] == 't' && c[6] == 'h' ? cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &bytes)
                                                : cuMemPoolTrimTo(pool, (size_t)bytes);
            print_rc(c, rc);
        } else if (!strcmp(c, "graph-mem")) {
            /* graph-mem <size>: a graph with one memory node of <size> on device 0, instantiated (graph-upload,
             * graph-run and graph-exec-destroy act on the latest one). */
            CUgraph graph;
            CUgraphNode node;
            CUDA_MEM_ALLOC_NODE_PARAMS params = {0};
            params.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
            params.poolProps.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
            params.bytesize = parse_size(argv[++i]);
            rc = cuGraphCreate(&graph, 0);
            if (rc == CUDA_SUCCESS) rc = cuGraphAddMemAllocNode(&node, graph, NULL, 0, &params);
            if (rc == CUDA_SUCCESS) rc = cuGraphInstantiate(&g_graph_exec, graph, 0);
            print_rc(c, rc);
        } else if (!strcmp(c, "graph-upload")) {
            print_rc(c, cuGraphUpload(g_graph_exec, NULL));
        } else if (!strcmp(c, "graph-run")) {
            print_rc(c, cuGraphLaunch(g_graph_exec, NULL));
        } else if (!strcmp(c, "graph-exec-destroy")) {
            print_rc(c, cuGraphExecDestroy(g_graph_exec));
        } else if (!strcmp(c, "graph-trim")) {
            CUdevice dev;
            rc = cuDeviceGet(&dev, atoi(argv[++i]));
            print_rc(c, rc == CUDA_SUCCESS ? cuDeviceGraphMemTrim(dev) : rc);
        } else if (!strcmp(c, "vmm") || !strcmp(c, "vmmhost")) {
            CUmemAllocationProp prop = {0};
            prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
            prop.location.type = !strcmp(c, "vmm") ? CU_MEM_LOCATION_TYPE_DEVICE : CU_MEM_LOCATION_TYPE_HOST;
            prop.location.id = 0;
            rc = cuMemCreate(&g_handles[g_nhandles], parse_size(argv[++i]), &prop, 0);
            if (rc == CUDA_SUCCESS) g_nhandles++;
            printf("{\"cmd\":\"%s\",\"rc\":%d,\"id\":%d}\n", c, (int)rc, g_nhandles - 1);
        } else if (!strcmp(c, "release")) {
            print_rc(c, cuMemRelease(g_handles[atoi(argv[++i])]));
        } else if (!strcmp(c, "free")) {
            print_rc(c, cuMemFree_v2(g_ptrs[atoi(argv[++i])]));
        } else if (!strcmp(c, "freeasync")) {
            print_rc(c, cuMemFreeAsync(g_ptrs[atoi(argv[++i])], NULL));
        } else if (!strcmp(c, "free-untracked")) {
            CUresult (*untracked)(CUdeviceptr *, size_t) =
                (CUresult(*)(CUdeviceptr *, size_t))dlsym(RTLD_DEFAULT, "fakecuda_alloc_untracked");
            unsigned long long (*counter)(const char *) =
                (unsigned long long (*)(const char *))dlsym(RTLD_DEFAULT, "fakecuda_counter");
            CUdeviceptr p = 0;
            CUresult arc = untracked(&p, parse_size(argv[++i]));
            unsigned long long before = counter("cuMemFree_v2");
            rc = cuMemFree_v2(p);
            unsigned long long after = counter("cuMemFree_v2");
            CUresult again = cuMemFree_v2(p); /* the driver really freed it: a second free is an error */
            printf("{\"cmd\":\"%s\",\"alloc_rc\":%d,\"rc\":%d,\"driver_calls\":%llu,\"second_rc\":%d}\n", c, (int)arc,
                   (int)rc, after - before, (int)again);
        } else if (!strcmp(c, "info")) {
            size_t f = 0, t = 0;
            rc = cuMemGetInfo_v2(&f, &t);
            printf("{\"cmd\":\"info\",\"rc\":%d,\"free\":%zu,\"total\":%zu}\n", (int)rc, f, t);
        } else if (!strcmp(c, "total")) {
            size_t t = 0;
            CUdevice dev;
            rc = cuDeviceGet(&dev, atoi(argv[++i]));
            if (rc == CUDA_SUCCESS) rc = cuDeviceTotalMem_v2(&t, dev);
            printf("{\"cmd\":\"total\",\"rc\":%d,\"total\":%zu}\n", (int)rc, t);
        } else if (!strcmp(c, "budget")) {
            print_budget(atoi(argv[++i]));
        } else if (!strcmp(c, "fill")) {
            unsigned long long size = parse_size(argv[++i]);
            int n = 0;
            CUdeviceptr p;
            while (n < MAX_PTRS && (rc = cuMemAlloc_v2(&p, size)) == CUDA_SUCCESS) g_ptrs[g_nptrs++] = p, n++;
            printf("{\"cmd\":\"fill\",\"count\":%d,\"rc\":%d}\n", n, (int)rc);
        } else if (!strcmp(c, "free-all")) {
            int bad = 0;
            for (int k = 0; k < g_nptrs; k++) bad += cuMemFree_v2(g_ptrs[k]) != CUDA_SUCCESS;
            g_nptrs = 0;
            printf("{\"cmd\":\"free-all\",\"failures\":%d}\n", bad);
        } else if (!strcmp(c, "ready")) {
            printf("{\"cmd\":\"ready\",\"pid\":%d}\n", (int)getpid());
        } else if (!strcmp(c, "hold")) {
            printf("{\"cmd\":\"hold\",\"pid\":%d}\n", (int)getpid());
            for (;;) pause();
        } else if (!strcmp(c, "sleep-ms")) {
            usleep((useconds_t)atoi(argv[++i]) * 1000u); /* quiet: no output line */
        } else if (!strcmp(c, "wait-file")) {
            const char *path = argv[++i];
            while (access(path, F_OK) != 0) usleep(1000);
            printf("{\"cmd\":\"wait-file\"}\n");
        } else if (!strcmp(c, "procaddr")) {
            const char *sym = argv[i + 1];
            int version = atoi(argv[i + 2]);
            cuuint64_t flags = strtoull(argv[i + 3], NULL, 0);
            i += 3;
            void *fn = NULL;
            CUdriverProcAddressQueryResult status = -1;
            rc = cuGetProcAddress_v2(sym, &fn, version, flags, &status);
            Dl_info info = {0};
            int found = fn && dladdr(fn, &info);
            /* The driver double names its own addresses, exported or internal (a real driver's are anonymous). */
            const char *(*entry_name)(const void *) = (const char *(*)(const void *))dlsym(RTLD_DEFAULT, "fakecuda_entry_name");
            const char *entry = entry_name ? entry_name(fn) : NULL;
            printf("{\"cmd\":\"procaddr\",\"rc\":%d,\"status\":%d,\"symbol\":\"%s\",\"library\":\"%s\","
                   "\"driver_entry\":\"%s\",\"exact_symbol\":%s}\n", (int)rc,
                   (int)status, found && info.dli_sname ? info.dli_sname : "",
                   found && info.dli_fname ? info.dli_fname : "", entry ? entry : "",
                   found && info.dli_saddr == fn ? "true" : "false");
        } else if (!strcmp(c, "procaddr-alloc")) {
            /* Allocate through a pointer obtained from cuGetProcAddress (the CUDA runtime's path). */
            void *fn = NULL;
            int version = atoi(argv[++i]);
            rc = cuGetProcAddress_v2("cuMemAlloc", &fn, version, 0, NULL);
            if (rc == CUDA_SUCCESS) rc = ((CUresult(*)(CUdeviceptr *, size_t))fn)(&g_ptrs[g_nptrs], parse_size(argv[++i]));
            else i++;
            if (rc == CUDA_SUCCESS) g_nptrs++;
            print_alloc(c, rc);
        } else if (!strcmp(c, "legacy-alloc") || !strcmp(c, "legacy-dlsym-alloc")) {
            /* The pre-3.2 cuMemAlloc (32-bit size and pointer), through cuGetProcAddress with CUDA 3.1 or dlsym. */
            void *fn = NULL;
            if (c[7] == 'a') {
                rc = cuGetProcAddress_v2("cuMemAlloc", &fn, 3010, 0, NULL);
            } else {
                fn = dlsym(dlopen("libcuda.so.1", RTLD_NOW), "cuMemAlloc");
                rc = fn ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
            }
            unsigned int low = 0;
            if (rc == CUDA_SUCCESS)
                rc = ((CUresult(*)(unsigned int *, unsigned int))fn)(&low, (unsigned int)parse_size(argv[i + 1]));
            i++;
            if (rc == CUDA_SUCCESS) g_ptrs[g_nptrs++] = low;
            print_alloc(c, rc);
        } else if (!strcmp(c, "dlsym-alloc")) {
            /* Allocate through dlopen + dlsym, as cffi/ctypes/cuda-bindings do. */
            void *lib = dlopen("libcuda.so.1", RTLD_NOW);
            void *fn = lib ? dlsym(lib, "cuMemAlloc_v2") : NULL;
            rc = fn ? ((CUresult(*)(CUdeviceptr *, size_t))fn)(&g_ptrs[g_nptrs], parse_size(argv[++i])) : CUDA_ERROR_NOT_FOUND;
            if (rc == CUDA_SUCCESS) g_nptrs++;
            print_alloc(c, rc);
        } else if (!strcmp(c, "null-args")) {
            size_t v = 0;
            printf("{\"cmd\":\"null-args\",\"alloc\":%d,\"alloc_zero\":%d,\"managed\":%d,\"pitch\":%d,\"async\":%d,"
                   "\"pool\":%d,\"create\":%d,\"create_prop\":%d,\"free0\":%d,\"freeasync0\":%d,\"release0\":%d,"
                   "\"info_both\":%d,\"info_free\":%d,\"info_total\":%d,\"total\":%d,\"procaddr\":%d,"
                   "\"procaddr_sym\":%d,\"launch\":%d,\"launch_ex\":%d,\"graph\":%d}\n",
                   (int)cuMemAlloc_v2(NULL, 1024), (int)cuMemAlloc_v2(&g_ptrs[MAX_PTRS - 1], 0),
                   (int)cuMemAllocManaged(NULL, 1024, CU_MEM_ATTACH_GLOBAL),
                   (int)cuMemAllocPitch_v2(NULL, NULL, 16, 16, 4), (int)cuMemAllocAsync(NULL, 1024, NULL),
                   (int)cuMemAllocFromPoolAsync(NULL, 1024, NULL, NULL), (int)cuMemCreate(NULL, 2 << 20, NULL, 0),
                   (int)cuMemCreate(&g_handles[MAX_PTRS - 1], 2 << 20, NULL, 0), (int)cuMemFree_v2(0),
                   (int)cuMemFreeAsync(0, NULL), (int)cuMemRelease(0), (int)cuMemGetInfo_v2(NULL, NULL),
                   (int)cuMemGetInfo_v2(NULL, &v), (int)cuMemGetInfo_v2(&v, NULL), (int)cuDeviceTotalMem_v2(NULL, 0),
                   (int)cuGetProcAddress_v2("cuMemAlloc", NULL, 12000, 0, NULL),
                   (int)cuGetProcAddress_v2(NULL, (void **)&v, 12000, 0, NULL),
                   (int)cuLaunchKernel(NULL, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL),
                   (int)cuLaunchKernelEx(NULL, NULL, NULL, NULL), (int)cuGraphLaunch(NULL, NULL));
        } else if (!strcmp(c, "kernel")) {
            CUmodule mod;
            static const char image[] = "fake-cubin";
            rc = cuModuleLoadData(&mod, image);
            if (rc == CUDA_SUCCESS) rc = cuModuleGetFunction(&g_kernel, mod, "busy");
            print_rc(c, rc);
        } else if (!strcmp(c, "module") || !strcmp(c, "library")) {
            /* Load a module (cuModuleLoadData) or a library (cuLibraryLoadData); unload|libunload drops the latest. */
            static const char image[] = "fake-cubin";
            if (c[0] == 'm') rc = cuModuleLoadData(&g_module, image);
            else rc = cuLibraryLoadData(&g_library, image, NULL, NULL, 0, NULL, NULL, 0);
            print_rc(c, rc);
        } else if (!strcmp(c, "module-file") || !strcmp(c, "library-file")) {
            /* module-file|library-file <path>: cuModuleLoad / cuLibraryLoadFromFile; fatbin: cuModuleLoadFatBinary. */
            const char *path = argv[++i];
            if (c[0] == 'm') rc = cuModuleLoad(&g_module, path);
            else rc = cuLibraryLoadFromFile(&g_library, path, NULL, NULL, 0, NULL, NULL, 0);
            print_rc(c, rc);
        } else if (!strcmp(c, "fatbin")) {
            static const char image[] = "fake-fatbin";
            rc = cuModuleLoadFatBinary(&g_module, image);
            print_rc(c, rc);
        } else if (!strcmp(c, "unload")) {
            rc = cuModuleUnload(g_module);
            print_rc(c, rc);
        } else if (!strcmp(c, "libunload")) {
            rc = cuLibraryUnload(g_library);
            print_rc(c, rc);
        } else if (!strcmp(c, "array") || !strcmp(c, "array3d") || !strcmp(c, "mipmap")) {
            /* array <w> <h> | array3d <w> <h> <d> | mipmap <w> <h> <levels>: float4 elements; array-destroy and
             * mipmap-destroy drop the latest. */
            CUDA_ARRAY3D_DESCRIPTOR d3 = {.Width = strtoull(argv[i + 1], NULL, 0), .Height = strtoull(argv[i + 2], NULL, 0),
                                          .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 4};
            i += 2;
            if (c[0] == 'a' && c[5] == '\0') {
                CUDA_ARRAY_DESCRIPTOR d2 = {.Width = d3.Width, .Height = d3.Height, .Format = d3.Format,
                                            .NumChannels = d3.NumChannels};
                rc = cuArrayCreate(&g_array, &d2);
            } else if (c[0] == 'a') {
                d3.Depth = strtoull(argv[++i], NULL, 0);
                rc = cuArray3DCreate(&g_array, &d3);
            } else {
                rc = cuMipmappedArrayCreate(&g_mipmap, &d3, (unsigned)atoi(argv[++i]));
            }
            print_rc(c, rc);
        } else if (!strcmp(c, "array-destroy")) {
            rc = cuArrayDestroy(g_array);
            print_rc(c, rc);
        } else if (!strcmp(c, "mipmap-destroy")) {
            rc = cuMipmappedArrayDestroy(g_mipmap);
            print_rc(c, rc);
        } else if (!strcmp(c, "launch")) {
            unsigned grid = (unsigned)atoi(argv[i + 1]), block = (unsigned)atoi(argv[i + 2]);
            int n = atoi(argv[i + 3]);
            i += 3;
            rc = CUDA_SUCCESS;
            for (int k = 0; k < n && rc == CUDA_SUCCESS; k++)
                rc = cuLaunchKernel(g_kernel, grid, 1, 1, block, 1, 1, 0, NULL, NULL, NULL);
            print_rc(c, rc);
        } else if (!strcmp(c, "saturate")) {
            saturate(argv[i + 1], (unsigned)atoi(argv[i + 2]), (unsigned)atoi(argv[i + 3]), atof(argv[i + 4]),
                     atoi(argv[i + 5]));
            i += 5;
        } else if (!strcmp(c, "launch-all")) {
            /* Every launch entry point once (plain and per-thread-stream exports), then the driver's counts. */
            CUlaunchConfig cfg = {0};
            cfg.gridDimX = cfg.gridDimY = cfg.gridDimZ = 1;
            cfg.blockDimX = cfg.blockDimY = cfg.blockDimZ = 1;
            CUresult (*launch_ptsz)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                    CUstream, void **, void **) =
                (CUresult(*)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                             void **, void **))dlsym(RTLD_DEFAULT, "cuLaunchKernel_ptsz");
            CUresult (*graph_ptsz)(CUgraphExec, CUstream) =
                (CUresult(*)(CUgraphExec, CUstream))dlsym(RTLD_DEFAULT, "cuGraphLaunch_ptsz");
            int rcs[6] = {
                (int)cuLaunchKernel(g_kernel, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL),
                (int)launch_ptsz(g_kernel, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL),
                (int)cuLaunchKernelEx(&cfg, g_kernel, NULL, NULL),
                (int)cuLaunchCooperativeKernel(g_kernel, 1, 1, 1, 1, 1, 1, 0, NULL, NULL),
                (int)cuGraphLaunch(probe_exec(), NULL),
                (int)graph_ptsz(probe_exec(), NULL),
            };
            unsigned long long (*counter)(const char *) =
                (unsigned long long (*)(const char *))dlsym(RTLD_DEFAULT, "fakecuda_counter");
            printf("{\"cmd\":\"launch-all\",\"rcs\":[%d,%d,%d,%d,%d,%d],\"driver\":[%llu,%llu,%llu,%llu,%llu,%llu]}\n",
                   rcs[0], rcs[1], rcs[2], rcs[3], rcs[4], rcs[5], counter("cuLaunchKernel"),
                   counter("cuLaunchKernel_ptsz"), counter("cuLaunchKernelEx"), counter("cuLaunchCooperativeKernel"),
                   counter("cuGraphLaunch"), counter("cuGraphLaunch_ptsz"));
        } else if (!strcmp(c, "sync")) {
            print_rc(c, cuCtxSynchronize());
        } else if (!strcmp(c, "threads")) {
            int n = atoi(argv[i + 1]), iters = atoi(argv[i + 2]);
            unsigned long long size = parse_size(argv[i + 3]);
            i += 3;
            pthread_t t[64];
            struct thread_args a[64];
            for (int k = 0; k < n && k < 64; k++) {
                a[k] = (struct thread_args){iters, size, 0};
                pthread_create(&t[k], NULL, thread_loop, &a[k]);
            }
            int failures = 0;
            for (int k = 0; k < n && k < 64; k++) pthread_join(t[k], NULL), failures += a[k].failures;
            printf("{\"cmd\":\"threads\",\"failures\":%d}\n", failures);
        } else if (!strcmp(c, "threads-fork")) {
            /* Threads allocate and free while the main thread forks children that allocate too. */
            int n = atoi(argv[i + 1]), iters = atoi(argv[i + 2]), forks = atoi(argv[i + 4]);
            unsigned long long size = parse_size(argv[i + 3]);
            i += 4;
            pthread_t t[64];
            struct thread_args a[64];
            for (int k = 0; k < n && k < 64; k++) {
                a[k] = (struct thread_args){iters, size, 0};
                pthread_create(&t[k], NULL, thread_loop, &a[k]);
            }
            int child_failures = 0;
            for (int f = 0; f < forks; f++) {
                pid_t pid = fork();
                if (pid == 0) {
                    CUdeviceptr p;
                    CUresult arc = cuMemAlloc_v2(&p, size);
                    unsigned long long self = 0;
                    query_fn q = (query_fn)dlsym(RTLD_DEFAULT, "hami_budget_query");
                    if (q) q(0, NULL, NULL, &self);
                    int ok = (arc == CUDA_SUCCESS && self == size && cuMemFree_v2(p) == CUDA_SUCCESS) ||
                             arc == CUDA_ERROR_OUT_OF_MEMORY;
                    _exit(ok ? 0 : 1);
                }
                int status = 0;
                waitpid(pid, &status, 0);
                child_failures += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
            }
            int failures = 0;
            for (int k = 0; k < n && k < 64; k++) pthread_join(t[k], NULL), failures += a[k].failures;
            printf("{\"cmd\":\"threads-fork\",\"failures\":%d,\"child_failures\":%d}\n", failures, child_failures);
        } else if (!strcmp(c, "fork")) {
            /* The child allocates; what does it see, and what stays charged to the parent? */
            unsigned long long size = parse_size(argv[++i]);
            int pipefd[2];
            if (pipe(pipefd) != 0) return 2;
            pid_t pid = fork();
            if (pid == 0) {
                CUdeviceptr p;
                CUresult arc = cuMemAlloc_v2(&p, size);
                unsigned long long total = 0, self = 0;
                query_fn q = (query_fn)dlsym(RTLD_DEFAULT, "hami_budget_query");
                if (q) q(0, NULL, &total, &self);
                CUresult parent_free = g_nptrs ? cuMemFree_v2(g_ptrs[0]) : CUDA_SUCCESS;
                dprintf(pipefd[1], "{\"cmd\":\"fork-child\",\"rc\":%d,\"used_total\":%llu,\"used_self\":%llu,"
                                   "\"parent_ptr_free_rc\":%d}\n", (int)arc, total, self, (int)parent_free);
                _exit(0);
            }
            close(pipefd[1]);
            char buf[512];
            ssize_t r = read(pipefd[0], buf, sizeof buf - 1);
            int status;
            waitpid(pid, &status, 0);
            if (r > 0) {
                buf[r] = '\0';
                fputs(buf, stdout);
            }
            close(pipefd[0]);
        } else {
            fprintf(stderr, "cuda_probe: unknown command %s\n", c);
            return 2;
        }
    }
    return 0;
}

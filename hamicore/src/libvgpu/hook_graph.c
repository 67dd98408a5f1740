/* hook_graph.c - graph memory nodes (cuGraphAddMemAllocNode): device memory a graph allocates inside itself.
 *
 * The driver takes it from the device's graph memory pool when the executable graph is uploaded or first launched
 * and keeps it while the executable graph lives. The budget charges an executable graph its memory nodes' bytes
 * from instantiation (before the driver is asked: an instantiation over the budget is refused with
 * CUDA_ERROR_OUT_OF_MEMORY, so no launch, a hot path, ever has to be) to cuGraphExecDestroy. What the device's
 * graph pool keeps reserved beyond what live graphs use (CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT - USED_MEM_CURRENT,
 * until cuDeviceGraphMemTrim) is charged as the device's graph retention, settled like a memory pool (pools.h):
 * after cuGraphExecDestroy and cuDeviceGraphMemTrim, in the memory views and before a refusal. */
#define _GNU_SOURCE
#include <stdatomic.h>

#include "alloc_table.h"
#include "budget.h"
#include "devmap.h"
#include "hooks.h"
#include "log.h"
#include "pools.h"
#include "real.h"
#include "region.h"

/* Per limit index: the CUDA ordinal its graph memory lives on (+1; 0 = no graph memory seen) and the retention
 * charged. */
static _Atomic int g_graph_ordinal[HAMI_MAX_DEVICES];
static _Atomic uint64_t g_graph_retained[HAMI_MAX_DEVICES];

void hami_graph_pool_settle(struct hami_region *r, int idx) {
    if (!r || idx < 0 || idx >= HAMI_MAX_DEVICES) return;
    int ordinal = atomic_load_explicit(&g_graph_ordinal[idx], memory_order_acquire) - 1;
    pfn_cuDeviceGetGraphMemAttribute get = REAL(cuDeviceGetGraphMemAttribute, pfn_cuDeviceGetGraphMemAttribute);
    cuuint64_t reserved = 0, used = 0;
    if (ordinal < 0 || !get || get((CUdevice)ordinal, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT, &reserved) != CUDA_SUCCESS ||
        get((CUdevice)ordinal, CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT, &used) != CUDA_SUCCESS)
        return;
    uint64_t retained = reserved > used ? reserved - used : 0;
    uint64_t before = atomic_exchange(&g_graph_retained[idx], retained);
    if (retained > before && hami_reserve(r, idx, retained - before) == HAMI_OVER_LIMIT)
        atomic_store(&g_graph_retained[idx], before); /* retried at the next settle */
    else if (retained < before)
        hami_release(r, idx, before - retained);
}

static CUresult not_in_driver(const char *name) {
    HAMI_ERROR("the CUDA driver has no %s", name);
    return CUDA_ERROR_NOT_FOUND;
}

CUresult hami_cuGraphAddMemAllocNode(CUgraphNode *node, CUgraph graph, const CUgraphNode *deps, size_t ndeps,
                                     CUDA_MEM_ALLOC_NODE_PARAMS *params) {
    pfn_cuGraphAddMemAllocNode real = REAL(cuGraphAddMemAllocNode, pfn_cuGraphAddMemAllocNode);
    if (!real) return not_in_driver("cuGraphAddMemAllocNode");
    CUresult rc = real(node, graph, deps, ndeps, params);
    struct hami_region *r = hami_region_get();
    int idx;
    if (rc != CUDA_SUCCESS || !r || !graph || !params ||
        params->poolProps.location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
        (idx = hami_index_of_cuda_device(r, (CUdevice)params->poolProps.location.id)) < 0)
        return rc;
    struct hami_alloc_info info;
    uint64_t old;
    if (idx < HAMI_MAX_DEVICES) atomic_store(&g_graph_ordinal[idx], params->poolProps.location.id + 1);
    hami_pools_watch();
    if (hami_table_find(HAMI_TABLE_OBJECTS, (uint64_t)(uintptr_t)graph, &info))
        hami_table_exchange_bytes(HAMI_TABLE_OBJECTS, (uint64_t)(uintptr_t)graph, info.bytes + params->bytesize, &old);
    else if (hami_table_insert(HAMI_TABLE_OBJECTS, (uint64_t)(uintptr_t)graph, params->bytesize, idx) != 0)
        HAMI_WARN("allocation table full: a graph's memory nodes on device %d are not charged", idx);
    return rc;
}

CUresult hami_cuGraphDestroy(CUgraph graph) {
    pfn_cuGraphDestroy real = REAL(cuGraphDestroy, pfn_cuGraphDestroy);
    if (!real) return not_in_driver("cuGraphDestroy");
    CUresult rc = real(graph);
    if (rc == CUDA_SUCCESS && graph) hami_table_take(HAMI_TABLE_OBJECTS, (uint64_t)(uintptr_t)graph, NULL);
    return rc;
}

/* Reserve the graph's memory nodes, instantiate through `call`, remember the executable graph's charge. */
static CUresult instantiate(CUgraphExec *exec, CUgraph graph, CUresult (*call)(void *), void *args) {
    struct hami_region *r = hami_region_get();
    struct hami_alloc_info info;
    if (!r || !exec || !graph || !hami_table_find(HAMI_TABLE_OBJECTS, (uint64_t)(uintptr_t)graph, &info) ||
        info.bytes == 0)
        return call(args);
    if (hami_reserve(r, info.dev, info.bytes) == HAMI_OVER_LIMIT) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = call(args);
    if (rc != CUDA_SUCCESS) {
        hami_release(r, info.dev, info.bytes);
        return rc;
    }
    if (hami_table_insert(HAMI_TABLE_OBJECTS, (uint64_t)(uintptr_t)*exec, info.bytes, info.dev) != 0)
        HAMI_WARN("allocation table full: %llu bytes on device %d stay counted", (unsigned long long)info.bytes,
                  info.dev);
    return rc;
}

struct with_flags_args {
    pfn_cuGraphInstantiateWithFlags real;
    CUgraphExec *exec;
    CUgraph graph;
    unsigned long long flags;
};
static CUresult run_with_flags(void *p) {
    struct with_flags_args *a = p;
    return a->real(a->exec, a->graph, a->flags);
}
CUresult hami_cuGraphInstantiateWithFlags(CUgraphExec *exec, CUgraph graph, unsigned long long flags) {
    struct with_flags_args a = {REAL(cuGraphInstantiateWithFlags, pfn_cuGraphInstantiateWithFlags), exec, graph,
                                flags};
    if (!a.real) return not_in_driver("cuGraphInstantiateWithFlags");
    return instantiate(exec, graph, run_with_flags, &a);
}

struct with_params_args {
    pfn_cuGraphInstantiateWithParams real;
    CUgraphExec *exec;
    CUgraph graph;
    CUDA_GRAPH_INSTANTIATE_PARAMS *params;
};
static CUresult run_with_params(void *p) {
    struct with_params_args *a = p;
    return a->real(a->exec, a->graph, a->params);
}
CUresult hami_cuGraphInstantiateWithParams(CUgraphExec *exec, CUgraph graph, CUDA_GRAPH_INSTANTIATE_PARAMS *params) {
    struct with_params_args a = {REAL(cuGraphInstantiateWithParams, pfn_cuGraphInstantiateWithParams), exec, graph,
                                 params};
    if (!a.real) return not_in_driver("cuGraphInstantiateWithParams");
    return instantiate(exec, graph, run_with_params, &a);
}

CUresult hami_cuGraphExecDestroy(CUgraphExec exec) {
    pfn_cuGraphExecDestroy real = REAL(cuGraphExecDestroy, pfn_cuGraphExecDestroy);
    if (!real) return not_in_driver("cuGraphExecDestroy");
    CUresult rc = real(exec);
    struct hami_alloc_info info;
    if (rc == CUDA_SUCCESS && exec && hami_table_take(HAMI_TABLE_OBJECTS, (uint64_t)(uintptr_t)exec, &info)) {
        hami_release(hami_region_get(), info.dev, info.bytes);
        hami_graph_pool_settle(hami_region_get(), info.dev); /* what the graph pool keeps of it */
    }
    return rc;
}

CUresult hami_cuDeviceGraphMemTrim(CUdevice dev) {
    pfn_cuDeviceGraphMemTrim real = REAL(cuDeviceGraphMemTrim, pfn_cuDeviceGraphMemTrim);
    if (!real) return not_in_driver("cuDeviceGraphMemTrim");
    CUresult rc = real(dev);
    struct hami_region *r = hami_region_get();
    if (rc == CUDA_SUCCESS && r) hami_graph_pool_settle(r, hami_index_of_cuda_device(r, dev));
    return rc;
}

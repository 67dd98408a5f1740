/* pools.h - stream-ordered memory pools: the budget follows what each pool holds (hook_pool.c). */
#ifndef HAMI_POOLS_H
#define HAMI_POOLS_H

#include <stdint.h>

struct hami_region;

/* The `bytes` of a pointer-table entry for memory from a device pool: the charge is the pool's, not the pointer's. */
#define HAMI_POOL_ALLOCATION 0u

/* Brings the charge of every known pool on limit index idx to what the pool reserves now (the driver trims pools
 * at synchronisations and cuMemPoolTrimTo, which are not hooked). Lock-free; a few driver attribute queries. */
void hami_pools_settle(struct hami_region *r, int idx);


/* Makes hamicore settle the pools before refusing an allocation (hami_before_refusal); once per process. */
void hami_pools_watch(void);

/* The same for the device's graph memory pool (hook_graph.c): what it keeps beyond what live graphs use. */
void hami_graph_pool_settle(struct hami_region *r, int idx);

#endif

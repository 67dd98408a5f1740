/* region.h - mapping of the per-container shared region and this process's slot.
 *
 * Process, thread and fork policy:
 * - The region is mapped once per process (lazily, on the first accounted call) and never unmapped.
 * - A process registers one slot (pid + start time) on its first reservation. The slot pointer is
 *   process-global; a fork() child drops it (pthread_atfork) and registers its own on first use,
 *   so a child never charges or frees the parent's usage.
 * - No lock is held across any call that can block on another process except an OFD fcntl lock
 *   during creation of the file (released by the kernel if its holder dies). */
#ifndef HAMI_REGION_H
#define HAMI_REGION_H

#include "region_layout.h"

/* The mapped region, or NULL when accounting is inactive (or the file is unusable and no limit is
 * configured). When a limit is configured and the file is unusable, a process-private region with
 * hami_region_denied set: every reservation fails (fail closed). */
struct hami_region *hami_region_get(void);

/* 1 when this process fails closed; set before hami_region_get() first returns its region. */
extern int hami_region_denied;

/* What this process enforces (dev in 0..HAMI_MAX_DEVICES-1): its own configuration (the spec, or the
 * environment), never the container-writable region. A build emulating a 1.1 library
 * (-DHAMI_REGION_VERSION_MINOR=1u, for the mixed-version tests) reads the region, as 1.1 did.
 * The limits are copied out of the configuration before hami_region_get() first returns a region, so the
 * allocation path reads one array element (no call, no once-check). */
extern uint64_t hami_enforced_limits[HAMI_MAX_DEVICES];
/* Limit indices from here on are none of the container's GPUs by the spec: allocations there are refused
 * (HAMI_MAX_DEVICES without a spec). */
extern int hami_enforced_first_foreign;

static inline uint64_t hami_enforced_limit(const struct hami_region *r, int dev) {
#if HAMI_REGION_VERSION_MINOR >= 2
    (void)r;
    return hami_enforced_limits[dev];
#else
    return r->devices[dev].limit_bytes;
#endif
}
static inline int hami_enforced_foreign(int dev) { return dev >= hami_enforced_first_foreign; }
uint32_t hami_enforced_sm_limit(const struct hami_region *r, int dev);
uint32_t hami_enforced_core_policy(const struct hami_region *r);
int hami_enforced_task_priority(const struct hami_region *r);

/* This process's slot, registering it when needed; NULL when none is available. */
struct hami_proc_slot *hami_region_self_slot(struct hami_region *r);

/* Frees the slots of dead processes and returns their usage to the devices; count reclaimed. */
int hami_region_reclaim_dead(struct hami_region *r);

/* Map an existing region file read-only (or read-write) for tools; NULL with a message on error. */
struct hami_region *hami_region_map_file(const char *path, int writable, char *err, unsigned long errlen);

/* 1.3: records that `bytes` of this process's used_bytes on limit index dev (already reserved) are held by a
 * HAMI_KIND_* (context, module): 1 when recorded, 0 when not (no free entry in the slot, no slot, or a build
 * emulating an older layout); the caller releases with hami_kind_release only what was recorded, before it
 * releases the bytes themselves. Not for hot paths. */
int hami_kind_charge(struct hami_region *r, int dev, int kind, uint64_t bytes);
void hami_kind_release(struct hami_region *r, int dev, int kind, uint64_t bytes);

/* Saturating atomic subtraction; returns the amount actually subtracted. */
uint64_t hami_atomic_sub_clamped(_Atomic uint64_t *v, uint64_t amount);

#endif

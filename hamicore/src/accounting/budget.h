/* budget.h - the memory budget: CAS reservation against the per-device
 * aggregate, per-process bookkeeping in the slot, OOM reporting. */
#ifndef HAMI_BUDGET_INTERNAL_H
#define HAMI_BUDGET_INTERNAL_H

#include <stdint.h>

#include "region_layout.h"

enum { HAMI_RESERVED = 0, HAMI_OVER_LIMIT = 1, HAMI_NO_BUDGET = -1 };

/* Reserve before calling the driver. Never lets used exceed limit, whatever the concurrency. */
int hami_reserve(struct hami_region *r, int dev, uint64_t bytes);
/* Called once by hami_reserve before it refuses (NULL: nothing): libvgpu brings its memory pools' charges up to
 * date there. Set once, before any reservation; not called on the allocation's fast path. */
extern void (*_Atomic hami_before_refusal)(struct hami_region *r, int dev);
/* Undo a reservation (driver failure) or return freed memory. */
void hami_release(struct hami_region *r, int dev, uint64_t bytes);

#endif

/* budget.c - reserve/release and the exported hami_budget_* API (hami_budget.h).
 *
 * Invariant: devices[d].used_bytes is the sum of what live reservations hold and
 * never exceeds limit_bytes. It is changed only by a CAS that checks the limit
 * (reserve) or a clamped subtraction (release, reclaim). The aggregate is updated
 * first and the process's slot second: a SIGKILL between the two (a window of one
 * instruction) can leave bytes counted but never over-admits. The limit is this process's own (spec or
 * environment), so rewriting the region's copy changes nothing; a container that corrupts the counters of
 * its own region can only refuse itself memory. */
#define _GNU_SOURCE
#include "budget.h"

#include <stdatomic.h>
#include <string.h>

#include "config.h"
#include "devices.h"
#include "hami_budget.h"
#include "log.h"
#include "region.h"

#ifdef HAMI_EXPORT_BUDGET_API
#define HAMI_API __attribute__((visibility("default")))
#else
#define HAMI_API
#endif

static void raise_peak(struct hami_device_record *d, uint64_t now) {
    uint64_t peak = atomic_load_explicit(&d->peak_bytes, memory_order_relaxed);
    while (now > peak &&
           !atomic_compare_exchange_weak_explicit(&d->peak_bytes, &peak, now, memory_order_relaxed,
                                                  memory_order_relaxed)) {
    }
}

void (*_Atomic hami_before_refusal)(struct hami_region *r, int dev);

int hami_reserve(struct hami_region *r, int dev, uint64_t bytes) {
    if (!r || dev < 0 || dev >= HAMI_MAX_DEVICES) return HAMI_NO_BUDGET;
    if (__builtin_expect(hami_region_denied, 0)) {
        atomic_fetch_add_explicit(&r->devices[dev].oom_count, 1, memory_order_relaxed);
        HAMI_DEBUG("Device %d: %llu bytes refused (no usable accounting region)", dev, (unsigned long long)bytes);
        return HAMI_OVER_LIMIT;
    }
    struct hami_device_record *d = &r->devices[dev];
    struct hami_proc_slot *self = hami_region_self_slot(r);
    const uint64_t limit = hami_enforced_limit(r, dev);
    if (__builtin_expect(limit == 0, 0) && hami_enforced_foreign(dev)) {
        static _Atomic int said;
        if (!atomic_exchange(&said, 1))
            HAMI_ERROR("a GPU outside this container's set (device plugin spec) was asked for memory: refused "
                       "(CUDA_ERROR_OUT_OF_MEMORY); use the GPUs the pod was given");
        atomic_fetch_add_explicit(&d->oom_count, 1, memory_order_relaxed);
        return HAMI_OVER_LIMIT;
    }
    int reclaimed = 0, settled = 0;
    uint64_t cur = atomic_load_explicit(&d->used_bytes, memory_order_relaxed);
    for (;;) {
        if (limit && (bytes > limit || cur > limit - bytes)) {
            /* Before refusing, return what dead processes still hold, then look again. */
            if (!reclaimed) {
                reclaimed = 1;
                if (hami_region_reclaim_dead(r) > 0) {
                    cur = atomic_load_explicit(&d->used_bytes, memory_order_relaxed);
                    continue;
                }
            }
            /* And what this process's charges overstate (memory pools that gave memory back). */
            void (*before_refusal)(struct hami_region *, int) = atomic_load_explicit(&hami_before_refusal, memory_order_acquire);
            if (!settled && before_refusal) {
                settled = 1;
                before_refusal(r, dev);
                cur = atomic_load_explicit(&d->used_bytes, memory_order_relaxed);
                continue;
            }
            atomic_fetch_add_explicit(&d->oom_count, 1, memory_order_relaxed);
            unsigned long long needed = (unsigned long long)cur + bytes;
            if (needed < cur) needed = ~0ull;
            HAMI_ERROR("Device %d OOM %llu / %llu", dev, needed, (unsigned long long)limit);
            return HAMI_OVER_LIMIT;
        }
        if (atomic_compare_exchange_weak_explicit(&d->used_bytes, &cur, cur + bytes, memory_order_acq_rel,
                                                  memory_order_relaxed))
            break;
    }
    if (self) atomic_fetch_add_explicit(&self->used_bytes[dev], bytes, memory_order_relaxed);
    raise_peak(d, cur + bytes);
    return HAMI_RESERVED;
}

void hami_release(struct hami_region *r, int dev, uint64_t bytes) {
    if (!r || dev < 0 || dev >= HAMI_MAX_DEVICES || bytes == 0) return;
    struct hami_proc_slot *self = hami_region_self_slot(r);
    if (self) hami_atomic_sub_clamped(&self->used_bytes[dev], bytes);
    hami_atomic_sub_clamped(&r->devices[dev].used_bytes, bytes);
}

HAMI_API int hami_budget_device_by_uuid(const unsigned char uuid[16]) {
    struct hami_region *r = hami_region_get();
    if (!r || !uuid) return -1;
    int idx = hami_devices_find_uuid(r, uuid);
    if (idx < 0) {
        hami_devices_discover_nvml(r);
        idx = hami_devices_find_uuid(r, uuid);
    }
    return idx;
}

HAMI_API int hami_budget_reserve(int dev, unsigned long long bytes) {
    return hami_reserve(hami_region_get(), dev, bytes);
}

HAMI_API void hami_budget_release(int dev, unsigned long long bytes) {
    hami_release(hami_region_get(), dev, bytes);
}

HAMI_API int hami_budget_query(int dev, unsigned long long *limit, unsigned long long *used_total,
                               unsigned long long *used_self) {
    struct hami_region *r = hami_region_get();
    if (!r || dev < 0 || dev >= HAMI_MAX_DEVICES) return -1;
    const struct hami_device_record *d = &r->devices[dev];
    if (limit) *limit = hami_enforced_limit(r, dev);
    if (used_total) *used_total = atomic_load_explicit(&d->used_bytes, memory_order_relaxed);
    if (used_self) {
        struct hami_proc_slot *self = hami_region_self_slot(r);
        *used_self = self ? atomic_load_explicit(&self->used_bytes[dev], memory_order_relaxed) : 0;
    }
    return 0;
}

HAMI_API int hami_budget_device_count(void) {
    struct hami_region *r = hami_region_get();
    if (!r) return -1;
    return (int)atomic_load(&r->header.device_count);
}

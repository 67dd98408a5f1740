/* limiter_gate.c - the launch gate of the compute limiter, called by every launch hook while it is
 * installed (only while some device is limited or held; see limiter.h). Lock-free and syscall-free
 * while tokens are available: a device lookup, two relaxed loads and one atomic subtraction on the
 * container's shared bucket. A launch that finds the bucket empty sleeps until the next refill, and a
 * held launch re-reads the hold flag every 10 ms: neither spins. */
#define _GNU_SOURCE
#include <time.h>

#include "region.h"
#include "devmap.h"
#include "limiter.h"
#include "limiter_policy.h"

struct hami_limiter_device hami_limiter_devices[HAMI_MAX_DEVICES];
_Atomic int hami_limiter_single_index = -1;
_Atomic int hami_limiter_monitor_alive;

uint64_t hami_limiter_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    nanosleep(&ts, NULL); /* an early wake-up (signal) only means one more look */
}

/* Waits while the monitor holds this container on the GPU. The flag is read from the region directly,
 * so a release is seen within one poll, whatever the controller thread is doing. */
static void hold(const struct hami_device_record *rec) {
    while (atomic_load_explicit(&rec->limiter.priority_hold, memory_order_relaxed) &&
           atomic_load_explicit(&hami_limiter_monitor_alive, memory_order_relaxed))
        sleep_ns(HAMI_HOLD_POLL_NS);
}

__attribute__((noinline, cold)) static void wait_for_tokens(struct hami_limiter_device *d,
                                                            struct hami_device_record *rec) {
    /* Tells the controller that this container wanted more than it got (its integral may act). */
    atomic_fetch_or_explicit(&rec->limiter.state, HAMI_LIMITER_STARVED, memory_order_relaxed);
    while (atomic_load_explicit(&rec->bucket.tokens, memory_order_relaxed) <= 0) {
        uint32_t mode = atomic_load_explicit(&d->mode, memory_order_relaxed);
        if (mode & HAMI_MODE_HOLD) hold(rec);
        if (!(mode & HAMI_MODE_LIMIT)) return; /* the limit was lifted meanwhile */
        uint64_t now = hami_limiter_now_ns();
        uint64_t next = atomic_load_explicit(&rec->bucket.refill_ns, memory_order_relaxed) + HAMI_TICK_NS;
        uint64_t wait = next > now ? next - now : 0;
        if (wait < 200000) wait = 200000; /* the refill is due: look again shortly */
        if (wait > HAMI_TICK_NS) wait = HAMI_TICK_NS;
        sleep_ns(wait);
    }
}

void hami_limiter_gate(CUstream stream, unsigned long long grid, unsigned long long block) {
    struct hami_region *r = hami_region_get();
    int idx = atomic_load_explicit(&hami_limiter_single_index, memory_order_relaxed);
    if (idx < 0) idx = hami_index_of_stream(r, stream);
    if (!r || idx < 0 || idx >= HAMI_MAX_DEVICES) return;
    struct hami_limiter_device *d = &hami_limiter_devices[idx];
    uint32_t mode = atomic_load_explicit(&d->mode, memory_order_relaxed);
    if (!mode) return;
    struct hami_device_record *rec = &r->devices[idx];
    if (mode & HAMI_MODE_HOLD) hold(rec);
    if (!(mode & HAMI_MODE_LIMIT)) return;
    int64_t cost = hami_launch_cost(grid, block, atomic_load_explicit(&d->capacity, memory_order_relaxed));
    if (atomic_load_explicit(&rec->bucket.tokens, memory_order_relaxed) <= 0) wait_for_tokens(d, rec);
    /* Debt model: a launch admitted with any positive balance takes its whole cost, possibly below
     * zero; later launches wait until refills repay it. Long-run consumption equals the refill. */
    atomic_fetch_sub_explicit(&rec->bucket.tokens, cost, memory_order_relaxed);
}

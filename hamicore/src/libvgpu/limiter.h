/* limiter.h - the compute limiter inside one process: the launch gate (limiter_gate.c, the hot path)
 * and the controller thread (limiter_thread.c) that decides, per device, whether launches are limited
 * or held, refills the container's shared token bucket and measures utilisation through NVML.
 *
 * Process, thread and fork policy: one controller thread per process, started by the process's first
 * kernel launch after a successful cuInit when the container has an SM limit or a task priority that
 * can be held (CUDA_TASK_PRIORITY > 0); a process that never launches (a query tool, a data loader)
 * never has one, and starting CUDA costs no thread creation. The thread installs the launch gate only
 * while some device needs it, so a launch with no limit in force costs exactly what it did without the
 * limiter. A fork() child has no thread: it drops the gate and the modes and starts its own thread at
 * its own cuInit and first launch. */
#ifndef HAMI_LIMITER_H
#define HAMI_LIMITER_H

#include <stdatomic.h>
#include <stdint.h>

#include "region_layout.h"
#include "driver_api.h"

/* How often the controller thread refills and re-decides while a limit is in force, and while only
 * watching for a priority hold. A waiting launch sleeps until the next refill. */
#define HAMI_TICK_NS 20000000ull
#define HAMI_WATCH_TICK_NS 50000000ull
/* How often a held launch looks at the hold flag again. */
#define HAMI_HOLD_POLL_NS 10000000ull

/* Process-local view of one limit index, read by the gate. */
struct hami_limiter_device {
    _Atomic uint32_t mode;             /* HAMI_MODE_* decided by the controller thread */
    _Atomic uint64_t capacity;         /* threads the GPU runs at once (SM count x max threads per SM) */
};

extern struct hami_limiter_device hami_limiter_devices[HAMI_MAX_DEVICES];
/* The limit index every launch of this process goes to when it sees exactly one GPU, else -1
 * (then each launch asks the driver for its stream's device). */
extern _Atomic int hami_limiter_single_index;
/* Set by the controller thread: the node monitor is alive (a hold is honoured only then). */
extern _Atomic int hami_limiter_monitor_alive;

/* The gate function installed into hami_launch_gate (launch_gate.h). */
void hami_limiter_gate(CUstream stream, unsigned long long grid, unsigned long long block);

/* Called after a successful cuInit: if the container needs a controller, installs a gate that starts
 * it (learns the GPUs' sizes, creates the thread) at the first launch. Idempotent per process. */
void hami_limiter_start(struct hami_region *r);

uint64_t hami_limiter_now_ns(void);

#endif

/* limiter_thread.c - the compute limiter's controller thread (one per process; see limiter.h).
 *
 * Every tick it decides, per device, whether launches are limited or held (limiter_policy.h, from the
 * SM limit, the core policy and the node monitor's signals in the region) and installs or removes the
 * launch gate accordingly. For a limited device it then tries to take the device's control lease in
 * the shared region; the holder refills the container's bucket (time-based, so it does not matter which
 * process does it or how late) and, every 100 ms, measures the utilisation of all the container's
 * processes through NVML and sets the next refill rate. Lease holders that die are replaced after 1 s.
 * This is the only place that calls NVML or reads a clock for the limiter. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "region.h"
#include "devmap.h"
#include "launch_gate.h"
#include "limiter.h"
#include "limiter_nvml.h"
#include "limiter_policy.h"
#include "real.h"

#define CONTROL_PERIOD_NS 100000000ull
#define LEASE_STALE_NS 1000000000ull
#define BUCKET_IDLE_NS 1000000000ull     /* no refill for this long: the bucket starts afresh */
#define NO_SAMPLE_SPAN_NS 500000000ull   /* NVML silent for this long: close the span unmeasured */

static _Atomic int g_started;
static struct hami_monitor_watch g_watch; /* controller thread only */
static int32_t g_pids[HAMI_MAX_PROCS];     /* controller thread only */

/* The thread sleeps on a condition variable so that exit() can wake it and wait for it (see
 * stop_controller). Never taken on a launch path. */
static pthread_mutex_t g_sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wake;
static int g_stopping;                     /* under g_sleep_lock */
static pthread_t g_thread;
static _Atomic int g_running;              /* this process has a controller thread to stop */

static double load_double(_Atomic uint64_t *bits) {
    uint64_t v = atomic_load_explicit(bits, memory_order_relaxed);
    double d;
    memcpy(&d, &v, sizeof d);
    return d;
}

static void store_double(_Atomic uint64_t *bits, double d) {
    uint64_t v;
    memcpy(&v, &d, sizeof v);
    atomic_store_explicit(bits, v, memory_order_relaxed);
}

static int lease_acquire(struct hami_limiter_state *b, uint64_t now) {
    uint64_t cur = atomic_load(&b->lease_ns);
    /* Signed: a lease taken after our clock read looks "in the future" and is respected. */
    if (cur != 0 && (int64_t)(now - cur) < (int64_t)LEASE_STALE_NS) return 0;
    return atomic_compare_exchange_strong(&b->lease_ns, &cur, now);
}

static void lease_release(struct hami_limiter_state *b, uint64_t mine) {
    atomic_compare_exchange_strong(&b->lease_ns, &mine, 0);
}

/* The container's processes as NVML names them (the monitor's host pid when it filled one in). */
static int container_pids(struct hami_region *r) {
    int n = 0;
    for (int i = 0; i < HAMI_MAX_PROCS; i++) {
        struct hami_proc_slot *s = &r->slots[i];
        if (atomic_load_explicit(&s->state, memory_order_acquire) != HAMI_SLOT_LIVE) continue;
        int32_t host = atomic_load_explicit(&s->host_pid, memory_order_relaxed);
        g_pids[n++] = host ? host : atomic_load_explicit(&s->pid, memory_order_relaxed);
    }
    return n;
}

/* Opens a measurement span: remembers NVML's newest sample and the balance. */
static void control_begin(struct hami_region *r, struct hami_device_record *rec, uint64_t now) {
    struct hami_limiter_state *b = &rec->bucket;
    uint64_t seen = 0;
    double ignored;
    if (atomic_load(&rec->uuid_state) == HAMI_UUID_VALID)
        hami_limiter_nvml_utilization(rec->uuid, g_pids, container_pids(r), 0, &seen, &ignored);
    atomic_store(&b->sample_us, seen);
    atomic_store(&b->tokens_at_control, atomic_load(&b->tokens));
    atomic_store(&rec->control.added, 0);
    atomic_fetch_and(&rec->limiter.state, ~HAMI_LIMITER_STARVED);
    atomic_store(&b->control_ns, now);
}

/* Closes the span: consumption and utilisation over it feed one controller step. */
static void control_step(struct hami_region *r, struct hami_device_record *rec, uint64_t now) {
    struct hami_limiter_state *b = &rec->bucket;
    int64_t tokens = atomic_load(&b->tokens);
    int64_t consumed = atomic_load(&b->tokens_at_control) + (int64_t)atomic_load(&rec->control.added) - tokens;
    if (consumed < 0) consumed = 0;
    uint64_t seen = atomic_load(&b->sample_us), span = now - atomic_load(&b->control_ns);
    double util = 0;
    int res = HAMI_UTIL_UNAVAILABLE;
    if (atomic_load(&rec->uuid_state) == HAMI_UUID_VALID)
        res = hami_limiter_nvml_utilization(rec->uuid, g_pids, container_pids(r), consumed > 0,
                                            &seen, &util);
    /* NVML publishes samples at its own pace: keep the span open until one covers it. */
    if (res == HAMI_UTIL_NO_SAMPLE && span < NO_SAMPLE_SPAN_NS) return;
    struct hami_controller c = {
        .util_sum = load_double(&rec->control.util_sum_bits),
        .cost_sum = load_double(&rec->control.cost_sum_bits),
        .time_sum = load_double(&rec->control.time_sum_bits),
        .integral = load_double(&rec->control.integral_bits),
    };
    struct hami_control_sample sample = {
        .dt_s = (double)span / 1e9,
        .util_pct = util,
        .consumed = (double)consumed,
        .measured = res == HAMI_UTIL_MEASURED,
        .starved = (atomic_load(&rec->limiter.state) & HAMI_LIMITER_STARVED) != 0,
    };
    double rate = hami_control_step(&c, hami_enforced_sm_limit(r, (int)(rec - r->devices)), &sample);
    store_double(&rec->control.util_sum_bits, c.util_sum);
    store_double(&rec->control.cost_sum_bits, c.cost_sum);
    store_double(&rec->control.time_sum_bits, c.time_sum);
    store_double(&rec->control.integral_bits, c.integral);
    atomic_store(&b->rate, (uint64_t)rate);
    if (sample.measured) atomic_store(&rec->limiter.measured_pct, (uint32_t)(util + 0.5));
    atomic_store(&b->sample_us, seen);
    atomic_store(&b->tokens_at_control, tokens);
    atomic_store(&rec->control.added, 0);
    atomic_fetch_and(&rec->limiter.state, ~HAMI_LIMITER_STARVED);
    atomic_store(&b->control_ns, now);
}

/* Adds what `rate` earned since the last refill; notes activity (the balance fell since then). */
static void refill(struct hami_device_record *rec, uint64_t now, uint64_t last) {
    struct hami_limiter_state *b = &rec->bucket;
    double rate = (double)atomic_load(&b->rate);
    int64_t cur = atomic_load(&b->tokens), add;
    if (cur < atomic_load(&b->tokens_at_tick)) atomic_store(&rec->limiter.last_kernel_ns, now);
    do {
        add = hami_refill_amount(cur, rate, now - last);
    } while (!atomic_compare_exchange_weak(&b->tokens, &cur, cur + add));
    atomic_fetch_add(&rec->control.added, (uint64_t)add);
    atomic_store(&b->tokens_at_tick, cur + add);
    atomic_store(&b->refill_ns, now);
}

/* The lease holder's work for one limited device. */
static void tick_device(struct hami_region *r, struct hami_device_record *rec, uint64_t now) {
    struct hami_limiter_state *b = &rec->bucket;
    if (!lease_acquire(b, now)) return;
    if (atomic_load(&b->rate) == 0) atomic_store(&b->rate, (uint64_t)hami_initial_rate(hami_enforced_sm_limit(r, (int)(rec - r->devices))));
    uint64_t last = atomic_load(&b->refill_ns);
    if (last == 0 || (int64_t)(now - last) > (int64_t)BUCKET_IDLE_NS) {
        /* Nobody limited this device for a while: no saved-up burst, one tick's worth to start with (the
         * first launches need not wait for the next tick), a fresh measurement span. */
        int64_t start = (int64_t)((double)atomic_load(&b->rate) * (double)HAMI_TICK_NS / 1e9);
        atomic_store(&b->tokens, start);
        atomic_store(&b->tokens_at_tick, start);
        atomic_store(&b->refill_ns, now);
        atomic_store(&b->control_ns, 0);
    } else if ((int64_t)(now - last) >= (int64_t)(HAMI_TICK_NS * 3 / 4)) {
        refill(rec, now, last);
    }
    uint64_t control = atomic_load(&b->control_ns);
    if (control == 0) control_begin(r, rec, now);
    else if (now - control >= CONTROL_PERIOD_NS) control_step(r, rec, now);
    lease_release(b, now);
}

/* Decides every device's mode for this tick; returns the OR of all modes. */
static uint32_t decide(struct hami_region *r, uint64_t now) {
    struct hami_region_header *h = &r->header;
    int alive = hami_monitor_present(&g_watch, atomic_load(&h->monitor_generation),
                                     atomic_load(&h->monitor_interval_ms), now);
    atomic_store_explicit(&hami_limiter_monitor_alive, alive, memory_order_relaxed);
    uint32_t devices = atomic_load(&h->device_count), any = 0;
    if (devices > HAMI_MAX_DEVICES) devices = HAMI_MAX_DEVICES;
    for (uint32_t i = 0; i < devices; i++) {
        struct hami_device_record *rec = &r->devices[i];
        struct hami_policy_input in = {
            .sm_limit = hami_enforced_sm_limit(r, (int)i),
            .core_policy = hami_enforced_core_policy(r),
            .monitor_present = alive,
            .contended = atomic_load_explicit(&rec->limiter.contended, memory_order_relaxed) != 0,
            .priority_hold = atomic_load_explicit(&rec->limiter.priority_hold, memory_order_relaxed) != 0,
        };
        uint32_t mode = hami_limiter_mode(&in);
        /* The bucket is primed before the gate can charge it. */
        if (mode & HAMI_MODE_LIMIT) tick_device(r, rec, now);
        atomic_store_explicit(&hami_limiter_devices[i].mode, mode, memory_order_relaxed);
        uint32_t bits = ((mode & HAMI_MODE_LIMIT) ? HAMI_LIMITER_LIMITING : 0) |
                        ((mode & HAMI_MODE_HOLD) ? HAMI_LIMITER_HOLDING : 0);
        uint32_t state = atomic_load(&rec->limiter.state);
        if ((state & (HAMI_LIMITER_LIMITING | HAMI_LIMITER_HOLDING)) != bits) {
            atomic_fetch_and(&rec->limiter.state, ~(HAMI_LIMITER_LIMITING | HAMI_LIMITER_HOLDING));
            atomic_fetch_or(&rec->limiter.state, bits);
        }
        any |= mode;
    }
    hami_launch_gate_fn want = any ? hami_limiter_gate : NULL;
    if (atomic_load_explicit(&hami_launch_gate, memory_order_relaxed) != want)
        atomic_store_explicit(&hami_launch_gate, want, memory_order_release);
    return any;
}

/* Sleeps until the CLOCK_MONOTONIC deadline; 1 when the process is exiting. */
static int sleep_until(const struct timespec *deadline) {
    pthread_mutex_lock(&g_sleep_lock);
    while (!g_stopping && pthread_cond_timedwait(&g_wake, &g_sleep_lock, deadline) != ETIMEDOUT) {
    }
    int stopping = g_stopping;
    pthread_mutex_unlock(&g_sleep_lock);
    return stopping;
}

/* No thread refills any more: launches must not wait for it. */
static void drop_gate(void) {
    atomic_store(&hami_launch_gate, NULL);
    for (int i = 0; i < HAMI_MAX_DEVICES; i++) atomic_store(&hami_limiter_devices[i].mode, 0);
}

static void *controller_main(void *arg) {
    struct hami_region *r = arg;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    do {
        uint32_t modes = decide(r, hami_limiter_now_ns());
        uint64_t tick = (modes & HAMI_MODE_LIMIT) ? HAMI_TICK_NS : HAMI_WATCH_TICK_NS;
        next.tv_nsec += (long)tick;
        while (next.tv_nsec >= 1000000000L) next.tv_nsec -= 1000000000L, next.tv_sec++;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > next.tv_sec + 1) next = now; /* suspended for a while: no catch-up burst of ticks */
    } while (!sleep_until(&next));
    drop_gate();
    return NULL;
}

/* atexit: the thread must not be inside NVML while libraries are torn down, nor hold launches of
 * threads that are still running. Registered after main started, it runs before any library
 * destructor; it waits at most 1 s (NVML might be stuck). */
static void stop_controller(void) {
    if (!atomic_exchange(&g_running, 0)) return; /* none, or a fork child's inherited registration */
    pthread_mutex_lock(&g_sleep_lock);
    g_stopping = 1;
    pthread_cond_signal(&g_wake);
    pthread_mutex_unlock(&g_sleep_lock);
    struct timespec limit;
    clock_gettime(CLOCK_REALTIME, &limit);
    limit.tv_sec += 1;
    if (pthread_timedjoin_np(g_thread, NULL, &limit) != 0) drop_gate();
}

/* SM count x max threads per SM of every GPU this process sees, by limit index. */
static void learn_devices(struct hami_region *r) {
    pfn_cuDeviceGetCount count_fn = REAL(cuDeviceGetCount, pfn_cuDeviceGetCount);
    pfn_cuDeviceGetAttribute attr = REAL(cuDeviceGetAttribute, pfn_cuDeviceGetAttribute);
    int count = 0, first = -1;
    if (!count_fn || count_fn(&count) != CUDA_SUCCESS) return;
    for (int k = 0; k < count; k++) {
        int idx = hami_index_of_cuda_device(r, (CUdevice)k), sms = 0, threads = 0;
        if (k == 0) first = idx;
        if (idx < 0 || idx >= HAMI_MAX_DEVICES || !attr) continue;
        if (attr(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, (CUdevice)k) != CUDA_SUCCESS) sms = 0;
        if (attr(&threads, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, (CUdevice)k) != CUDA_SUCCESS) threads = 0;
        uint64_t capacity = sms > 0 && threads > 0 ? (uint64_t)sms * (uint64_t)threads : HAMI_DEFAULT_CAPACITY;
        atomic_store(&hami_limiter_devices[idx].capacity, capacity);
        HAMI_DEBUG("compute limiter: CUDA device %d = limit index %d, %d SMs x %d threads, SM limit %u%%", k, idx,
                   sms, threads, hami_enforced_sm_limit(r, idx));
    }
    atomic_store(&hami_limiter_single_index, count == 1 ? first : -1);
}

/* Whether this container can ever need the gate: an SM limit that the policy does not disable, or a
 * priority that the monitor may hold (0 is the highest: nothing holds it). */
static int needs_controller(const struct hami_region *r) {
    if (hami_enforced_task_priority(r) > 0) return 1;
    if (hami_enforced_core_policy(r) == HAMI_CORE_POLICY_DISABLE) return 0;
    for (int i = 0; i < HAMI_MAX_DEVICES; i++) {
        uint32_t limit = hami_enforced_sm_limit(r, i);
        if (limit > 0 && limit < 100) return 1;
    }
    return 0;
}

static void on_fork_child(void) {
    /* The child has no controller thread: no gate, no decisions, until its own cuInit starts one. The
     * sleep lock may have been held by the parent's thread at the fork: a fresh one. */
    drop_gate();
    atomic_store(&hami_limiter_monitor_alive, 0);
    memset(&g_watch, 0, sizeof g_watch);
    pthread_mutex_init(&g_sleep_lock, NULL);
    g_stopping = 0;
    atomic_store(&g_running, 0);
    atomic_store(&g_started, 0);
}

__attribute__((constructor)) static void limiter_register_atfork(void) { pthread_atfork(NULL, NULL, on_fork_child); }

static void start_controller(struct hami_region *r) {
    learn_devices(r);
    pthread_condattr_t cond_attr;
    pthread_condattr_init(&cond_attr);
    pthread_condattr_setclock(&cond_attr, CLOCK_MONOTONIC);
    pthread_cond_init(&g_wake, &cond_attr);
    pthread_condattr_destroy(&cond_attr);
    /* The thread takes no signals: the application's handlers never run on it. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* A small stack: NVML and our frames need little. */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int rc = pthread_create(&g_thread, &attr, controller_main, r);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        drop_gate();
        HAMI_ERROR("cannot start the compute limiter's thread (%s): SM limits are NOT enforced", strerror(rc));
        return;
    }
    static _Atomic int registered; /* once per process image: a fork child inherits the registration */
    atomic_store(&g_running, 1);
    if (!atomic_exchange(&registered, 1)) atexit(stop_controller);
    HAMI_INFO("compute limiter started: policy %u, task priority %d", hami_enforced_core_policy(r),
              hami_enforced_task_priority(r));
}

/* The gate installed by cuInit: the process's first launch starts the controller thread, whose first
 * decision (within microseconds) replaces this gate with the limiter's or with none. Launches that come
 * before that decision pass. */
static void first_launch_gate(CUstream stream, unsigned long long grid, unsigned long long block) {
    (void)stream, (void)grid, (void)block;
    struct hami_region *r = hami_region_get();
    int expected = 0;
    if (r && atomic_compare_exchange_strong(&g_started, &expected, 1)) start_controller(r);
}

void hami_limiter_start(struct hami_region *r) {
    if (!r || atomic_load(&g_started) || !needs_controller(r)) return;
    hami_launch_gate_fn none = NULL;
    atomic_compare_exchange_strong(&hami_launch_gate, &none, first_launch_gate);
}

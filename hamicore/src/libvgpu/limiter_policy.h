/* limiter_policy.h - the compute limiter's pure arithmetic: what a launch costs, whether a device is
 * limited or held right now, the controller that turns measured utilisation into a refill rate, and
 * the token bucket's refill. No CUDA, no NVML, no clock: unit-tested by tests/programs/unit_core.c.
 *
 * Units: a "wave" is one full occupancy of the device (every SM running its maximum of resident
 * threads); a launch of T threads costs T / (SM count x max threads per SM) waves, so the same
 * fraction of a small or a large GPU costs the same. HAMI_UNITS_PER_WAVE units make one wave. */
#ifndef HAMI_LIMITER_POLICY_H
#define HAMI_LIMITER_POLICY_H

#include <stdint.h>

#define HAMI_UNITS_PER_WAVE (1ll << 20)
/* A graph's content is not known at launch: it is charged as one wave; the controller's measured
 * device time per unit absorbs the difference. */
#define HAMI_GRAPH_LAUNCH_UNITS HAMI_UNITS_PER_WAVE
/* Threads the device runs at once when the driver cannot say (108 SMs x 2048 threads). */
#define HAMI_DEFAULT_CAPACITY (108ull * 2048ull)

/* Launch-path mode bits of a device (process-local copy of the decision below). */
enum { HAMI_MODE_LIMIT = 1u, HAMI_MODE_HOLD = 2u };

/* Units a launch of grid x block threads costs on a device running `capacity` threads at once.
 * grid == 0 or block == 0 (a graph launch) costs HAMI_GRAPH_LAUNCH_UNITS. Never 0. */
int64_t hami_launch_cost(uint64_t grid, uint64_t block, uint64_t capacity);

struct hami_policy_input {
    uint32_t sm_limit;        /* percent, 0 or >= 100 = none */
    uint32_t core_policy;     /* HAMI_CORE_POLICY_* */
    int monitor_present;      /* the node monitor is writing signals (see hami_monitor_present) */
    int contended;            /* monitor: another container is active on this GPU */
    int priority_hold;        /* monitor: an active container on this GPU has a higher priority */
};

/* HAMI_MODE_* bits: LIMIT when the SM share is enforced now (force: always; disable: never; default:
 * while contended, or always when no monitor speaks), HOLD when the monitor holds this container. */
uint32_t hami_limiter_mode(const struct hami_policy_input *in);

/* Whether the node monitor is alive, judged by this process from its generation counter: 0 = never
 * written; otherwise alive while the counter keeps changing (stale after 3 scan intervals, at least
 * 2 s; 15 s when the monitor did not say its interval). No clock is compared across processes. */
struct hami_monitor_watch {
    uint32_t generation;
    uint64_t changed_ns;      /* when this process saw the generation change (0 = never looked) */
};
int hami_monitor_present(struct hami_monitor_watch *w, uint32_t generation, uint32_t interval_ms, uint64_t now_ns);

/* Controller state (kept in the shared region, so any process of the container can take the next step).
 * Utilisation U (percent) and consumption x (units per second) are related by U = k x while the
 * container launches; k, the device time a unit really costs, depends on the kernels and the GPU and
 * is measured, not assumed: k = (decayed sum of U dt) / (decayed sum of consumed units). The refill
 * rate is then (limit + integral) / k. The integral corrects residual bias slowly (at most a tenth of
 * the limit), only while the container was starved (it wanted more than it got) and only once about a
 * second of measurements stands behind k. */
struct hami_controller {
    double util_sum;          /* decayed sum of utilisation x seconds */
    double cost_sum;          /* decayed sum of consumed units */
    double time_sum;          /* decayed sum of seconds (for the average utilisation) */
    double integral;          /* percentage points added to the target */
};

struct hami_control_sample {
    double dt_s;              /* seconds since the previous step */
    double util_pct;          /* the container's measured utilisation over dt (valid only if `measured`) */
    double consumed;          /* units consumed over dt */
    int measured;             /* util_pct is a measurement */
    int starved;              /* a launch waited for tokens during dt */
};

/* One control step; returns the new refill rate in units per second. */
double hami_control_step(struct hami_controller *c, uint32_t limit_pct, const struct hami_control_sample *s);
/* Refill rate before anything was measured: assumes one wave takes 1 ms of device time. */
double hami_initial_rate(uint32_t limit_pct);
/* Largest balance the bucket may hold at `rate` (a burst of 100 ms worth), at least one unit. */
int64_t hami_bucket_cap(double rate);
/* Units to add to a balance `tokens` after `elapsed_ns` at `rate`, without passing the cap (a balance
 * already above it is not reduced). */
int64_t hami_refill_amount(int64_t tokens, double rate, uint64_t elapsed_ns);

#endif

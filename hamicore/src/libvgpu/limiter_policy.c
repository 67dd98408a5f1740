/* limiter_policy.c - see limiter_policy.h. Pure functions of their arguments. */
#include "limiter_policy.h"

#include "region_layout.h"

#define MAX_THREADS (1ull << 42)          /* threads x units stays below 2^63 */
#define DECAY_S 1.0                       /* time constant of the measured cost per unit */
#define INTEGRAL_GAIN 0.2                 /* points added per second per point of error */
#define MATURE_S (0.9 * DECAY_S)          /* measured history needed before the integral may act */
#define PRIOR_UNIT_COST (100.0 / (1000.0 * (double)HAMI_UNITS_PER_WAVE)) /* 1 wave = 1 ms at 100 % */
#define BURST_S 0.1
#define MIN_RATE 1.0
#define MAX_RATE 1e15

int64_t hami_launch_cost(uint64_t grid, uint64_t block, uint64_t capacity) {
    if (grid == 0 || block == 0) return HAMI_GRAPH_LAUNCH_UNITS;
    if (capacity == 0) capacity = HAMI_DEFAULT_CAPACITY;
    uint64_t threads = grid > MAX_THREADS / block ? MAX_THREADS : grid * block;
    uint64_t cost = threads * (uint64_t)HAMI_UNITS_PER_WAVE / capacity;
    return cost ? (int64_t)cost : 1;
}

uint32_t hami_limiter_mode(const struct hami_policy_input *in) {
    uint32_t mode = 0;
    int has_limit = in->sm_limit > 0 && in->sm_limit < 100;
    if (has_limit && in->core_policy != HAMI_CORE_POLICY_DISABLE &&
        (in->core_policy == HAMI_CORE_POLICY_FORCE || !in->monitor_present || in->contended))
        mode |= HAMI_MODE_LIMIT;
    if (in->monitor_present && in->priority_hold) mode |= HAMI_MODE_HOLD;
    return mode;
}

int hami_monitor_present(struct hami_monitor_watch *w, uint32_t generation, uint32_t interval_ms, uint64_t now_ns) {
    if (generation == 0) {
        w->generation = 0;
        w->changed_ns = 0;
        return 0;
    }
    if (w->changed_ns == 0 || generation != w->generation) {
        w->generation = generation;
        w->changed_ns = now_ns;
        return 1;
    }
    uint64_t stale_ns = 15000000000ull;
    if (interval_ms) {
        stale_ns = 3ull * interval_ms * 1000000ull;
        if (stale_ns < 2000000000ull) stale_ns = 2000000000ull;
    }
    return now_ns - w->changed_ns <= stale_ns;
}

double hami_initial_rate(uint32_t limit_pct) { return (double)limit_pct / PRIOR_UNIT_COST; }

double hami_control_step(struct hami_controller *c, uint32_t limit_pct, const struct hami_control_sample *s) {
    double limit = (double)limit_pct;
    /* Idle periods teach nothing about the cost of a unit: keep what was learnt. */
    if (s->measured && s->dt_s > 0 && (s->consumed > 0 || s->util_pct > 0)) {
        double keep = DECAY_S / (DECAY_S + s->dt_s);
        c->util_sum = c->util_sum * keep + s->util_pct * s->dt_s;
        c->cost_sum = c->cost_sum * keep + s->consumed;
        c->time_sum = c->time_sum * keep + s->dt_s;
        /* Only once the start-up transient (a rate from the prior) has left the averages, or the
         * integral would wind up on it. */
        if (s->starved && c->time_sum > MATURE_S && c->cost_sum > 0) {
            double average = c->util_sum / c->time_sum;
            c->integral += INTEGRAL_GAIN * (limit - average) * s->dt_s;
            if (c->integral > limit / 10) c->integral = limit / 10;
            if (c->integral < -limit / 10) c->integral = -limit / 10;
        }
    }
    double unit_cost = (c->cost_sum > 0 && c->util_sum > 0) ? c->util_sum / c->cost_sum : PRIOR_UNIT_COST;
    double target = limit + c->integral;
    if (target < 0.5) target = 0.5;
    double rate = target / unit_cost;
    if (rate < MIN_RATE) rate = MIN_RATE;
    if (rate > MAX_RATE) rate = MAX_RATE;
    return rate;
}

int64_t hami_bucket_cap(double rate) {
    double cap = rate * BURST_S;
    if (cap < 1) return 1;
    if (cap > 4e18) return (int64_t)4e18;
    return (int64_t)cap;
}

int64_t hami_refill_amount(int64_t tokens, double rate, uint64_t elapsed_ns) {
    int64_t cap = hami_bucket_cap(rate);
    if (tokens >= cap) return 0;
    double add = rate * (double)elapsed_ns / 1e9;
    double room = (double)cap - (double)tokens;
    return (int64_t)(add < room ? add : room);
}

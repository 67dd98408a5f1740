/* unit_limiter.c - unit tests of the compute limiter's pure arithmetic (limiter_policy.h): launch costs
 * normalised to the device's size, the policy table, monitor liveness, the token bucket's refill, and
 * the controller converging on simulated devices whose real cost per unit differs from the estimate.
 * Run by test_unit.py (and under sanitizers). */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>

#include "region_layout.h"
#include "limiter_policy.h"
#include "check.h"

#define WAVE HAMI_UNITS_PER_WAVE

static void test_costs(void) {
    /* The same share of a small and a large GPU costs the same. */
    CHECK(hami_launch_cost(16 * 8, 256, 16 * 2048) == WAVE);
    CHECK(hami_launch_cost(188 * 8, 256, 188 * 2048) == WAVE);
    CHECK(hami_launch_cost(2048, 256, 16 * 2048) == 16 * WAVE);
    CHECK(hami_launch_cost(2048, 256, 132 * 2048) == 2048ll * 256 * WAVE / (132 * 2048));
    CHECK(hami_launch_cost(0, 0, 132 * 2048) == HAMI_GRAPH_LAUNCH_UNITS); /* a graph */
    CHECK(hami_launch_cost(1, 1, 188 * 2048) == 2);                       /* tiny, never free */
    CHECK(hami_launch_cost(1, 1, 1ull << 40) == 1);
    CHECK(hami_launch_cost(108 * 8, 256, 0) == WAVE);                     /* unknown size: 108 x 2048 */
    CHECK(hami_launch_cost(~0ull, 1024, 16 * 2048) > 0);                  /* no overflow */
}

static uint32_t mode_of(uint32_t limit, uint32_t policy, int monitor, int contended, int hold) {
    struct hami_policy_input in = {limit, policy, monitor, contended, hold};
    return hami_limiter_mode(&in);
}

static void test_policy(void) {
    enum { D = HAMI_CORE_POLICY_DEFAULT, F = HAMI_CORE_POLICY_FORCE, X = HAMI_CORE_POLICY_DISABLE };
    const uint32_t L = HAMI_MODE_LIMIT, H = HAMI_MODE_HOLD;
    CHECK(mode_of(30, F, 0, 0, 0) == L && mode_of(30, F, 1, 0, 0) == L);      /* force: always */
    CHECK(mode_of(30, X, 0, 0, 0) == 0 && mode_of(30, X, 1, 1, 0) == 0);      /* disable: never */
    CHECK(mode_of(30, D, 0, 0, 0) == L);                                      /* default, no monitor: force */
    CHECK(mode_of(30, D, 1, 0, 0) == 0 && mode_of(30, D, 1, 1, 0) == L);      /* default: while contended */
    CHECK(mode_of(0, F, 1, 1, 0) == 0 && mode_of(100, F, 1, 1, 0) == 0);      /* no limit */
    CHECK(mode_of(0, D, 1, 0, 1) == H && mode_of(30, X, 1, 0, 1) == H);       /* a hold needs no limit */
    CHECK(mode_of(30, F, 1, 1, 1) == (L | H));
    CHECK(mode_of(30, D, 0, 1, 1) == L);                                      /* no monitor: its flags are stale */
}

static void test_monitor_liveness(void) {
    const uint64_t s = 1000000000ull;
    struct hami_monitor_watch w = {0, 0};
    CHECK(hami_monitor_present(&w, 0, 100, 5 * s) == 0);                      /* never written */
    CHECK(hami_monitor_present(&w, 7, 100, 10 * s) == 1);                     /* first sight */
    CHECK(hami_monitor_present(&w, 7, 100, 11 * s) == 1);
    CHECK(hami_monitor_present(&w, 7, 100, 12 * s + 1) == 0);                 /* 3 x 100 ms, but at least 2 s */
    CHECK(hami_monitor_present(&w, 8, 100, 13 * s) == 1);                     /* moving again */
    CHECK(hami_monitor_present(&w, 8, 5000, 27 * s) == 1);                    /* 3 x 5 s */
    CHECK(hami_monitor_present(&w, 8, 5000, 28 * s + 1) == 0);
    CHECK(hami_monitor_present(&w, 9, 0, 30 * s) == 1 && hami_monitor_present(&w, 9, 0, 44 * s) == 1);
    CHECK(hami_monitor_present(&w, 9, 0, 45 * s + 1) == 0);                   /* interval unknown: 15 s */
}

static void test_refill(void) {
    double rate = 1000.0 * WAVE;                       /* cap = 100 waves */
    CHECK(hami_bucket_cap(rate) == 100 * WAVE);
    CHECK(hami_refill_amount(0, rate, 20000000ull) == 20 * WAVE);
    CHECK(hami_refill_amount(90 * WAVE, rate, 20000000ull) == 10 * WAVE); /* up to the cap */
    CHECK(hami_refill_amount(150 * WAVE, rate, 20000000ull) == 0);        /* above it: kept, not cut */
    CHECK(hami_refill_amount(-50 * WAVE, rate, 20000000ull) == 20 * WAVE); /* debt is repaid */
    CHECK(hami_bucket_cap(0.0) == 1);
}

/* A container that always wants more, on a device where a unit really costs unit_cost percent-seconds:
 * each step it consumes what the bucket gave during the previous step (one step of lag, as queued
 * kernels run after their launch); NVML reports U = unit_cost x consumption rate, with noise.
 * Returns the average utilisation over the steps after `settle`. */
static double simulate(double unit_cost, uint32_t limit, double loss, int settle, int steps, double *integral) {
    struct hami_controller c = {0, 0, 0, 0};
    double rate = hami_initial_rate(limit), consumed_rate = 0, sum = 0;
    uint32_t noise = 12345;
    for (int i = 0; i < steps; i++) {
        double util = unit_cost * consumed_rate;
        if (util > 100) util = 100;
        noise = noise * 1103515245u + 12345u;
        double measured = util + (double)((noise >> 16) % 7) - 3.0; /* +-3 points */
        if (measured < 0) measured = 0;
        struct hami_control_sample s = {0.1, measured, consumed_rate * 0.1, 1, 1};
        consumed_rate = rate * (1 - loss);
        if (unit_cost * consumed_rate > 100) consumed_rate = 100 / unit_cost;
        rate = hami_control_step(&c, limit, &s);
        if (i >= settle) sum += util;
    }
    *integral = c.integral;
    return sum / (steps - settle);
}

static void test_controller(void) {
    double integral;
    /* Real cost per unit 5x, 1x and 0.3x the prior's (1 ms per wave): every one converges in 2 s. */
    const double prior = 100.0 / (1000.0 * WAVE);
    const double costs[] = {5 * prior, prior, 0.3 * prior};
    const uint32_t limits[] = {10, 30, 70};
    for (int k = 0; k < 3; k++) {
        for (int l = 0; l < 3; l++) {
            double avg = simulate(costs[k], limits[l], 0, 20, 70, &integral);
            CHECK(fabs(avg - limits[l]) < 1.5);
        }
    }
    /* Tokens lost (a fifth of the refill never used): the integral helps, but never by more than a tenth. */
    double avg = simulate(prior, 30, 0.2, 40, 200, &integral);
    CHECK(integral > 2.9 && integral <= 3.0 + 1e-9);
    CHECK(avg > 0.8 * 30 * 1.05 && avg < 30);
    /* An idle step teaches nothing: the rate it returns is the one before. */
    struct hami_controller c = {50, 5e6, 2, 0};
    struct hami_control_sample busy = {0.1, 30, 1e5, 1, 0}, idle = {0.1, 0, 0, 1, 0}, blind = {0.1, 0, 5e5, 0, 1};
    double r1 = hami_control_step(&c, 30, &busy);
    CHECK(hami_control_step(&c, 30, &idle) == r1);
    CHECK(hami_control_step(&c, 30, &blind) == r1); /* no measurement: no learning */
    CHECK(c.integral == 0);                          /* not starved: no integral */
    /* Before anything is measured: the prior. */
    struct hami_controller fresh = {0, 0, 0, 0};
    CHECK(fabs(hami_control_step(&fresh, 30, &idle) - hami_initial_rate(30)) < 1e-6);
}

int main(void) {
    test_costs();
    test_policy();
    test_monitor_liveness();
    test_refill();
    test_controller();
    return check_report();
}

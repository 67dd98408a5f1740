/* check.h - the tiny CHECK harness of the C unit-test programs: count checks and failures, report
 * each failure with its line; main prints {"checks":N,"failures":M} and exits with the failure count. */
#ifndef HAMI_TEST_CHECK_H
#define HAMI_TEST_CHECK_H

#include <stdio.h>

static int g_failures, g_checks;
#define CHECK(cond)                                                                   \
    do {                                                                              \
        g_checks++;                                                                   \
        if (!(cond)) {                                                                \
            g_failures++;                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                             \
    } while (0)

static inline int check_report(void) {
    printf("{\"checks\":%d,\"failures\":%d}\n", g_checks, g_failures);
    return g_failures;
}

#endif

/* log.c - formats one line per message and writes it with a single write(2),
 * so lines from concurrent threads and processes never interleave. */
#define _GNU_SOURCE
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static _Atomic int g_level = -1;

int hami_log_level(void) {
    int level = atomic_load_explicit(&g_level, memory_order_relaxed);
    if (level >= 0) return level;
    level = HAMI_LOG_WARN;
    int invalid = 0;
    const char *env = getenv("LIBCUDA_LOG_LEVEL");
    if (env && *env) {
        char *end = NULL;
        long v = strtol(env, &end, 10);
        if (end && *end == '\0' && v >= 0 && v <= 10) level = (int)v;
        else invalid = 1;
    }
    atomic_store_explicit(&g_level, level, memory_order_relaxed);
    if (invalid)
        hami_log_write(HAMI_LOG_WARN, __FILE__, __LINE__,
                       "LIBCUDA_LOG_LEVEL='%s' is not a level: use 0..4 (0/1 errors, 2 warnings, 3 info, 4 debug); "
                       "using 2", env);
    return level;
}

void hami_log_write(int level, const char *file, int line, const char *fmt, ...) {
    char buf[1024];
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    int pid = (int)getpid();
    long tid = (long)syscall(SYS_gettid);
    int n;
    switch (level) {
    case HAMI_LOG_ERROR:
        n = snprintf(buf, sizeof buf, "[HAMI-core ERROR (pid:%d thread=%ld %s:%d)]: ", pid, tid, base, line);
        break;
    case HAMI_LOG_WARN:
        n = snprintf(buf, sizeof buf, "[HAMI-core Warn(%d:%ld:%s:%d)]: ", pid, tid, base, line);
        break;
    case HAMI_LOG_INFO:
        n = snprintf(buf, sizeof buf, "[HAMI-core Info(%d:%ld:%s:%d)]: ", pid, tid, base, line);
        break;
    default:
        n = snprintf(buf, sizeof buf, "[HAMI-core Debug(%d:%ld:%s:%d)]: ", pid, tid, base, line);
        break;
    }
    if (n < 0) return;
    if ((size_t)n >= sizeof buf - 2) n = (int)sizeof buf - 2;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0) m = 0;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof buf - 2) len = sizeof buf - 2;
    buf[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, len);
    (void)w;
}

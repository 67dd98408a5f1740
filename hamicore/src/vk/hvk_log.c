/* hvk_log: see hvk_log.h. */
#include "hvk_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static atomic_int hvk_log_threshold = HVK_LOG_WARN;

void hvk_log_init_from_env(void)
{
    const char *text = getenv("LIBCUDA_LOG_LEVEL");
    if (text == NULL || *text == '\0')
        return;
    char *end;
    long level = strtol(text, &end, 10);
    if (*end != '\0' || level < 0 || level > 10) {
        fprintf(stderr, "hami-vk: warning: LIBCUDA_LOG_LEVEL=%s is not a number 0-10; keeping level 2\n", text);
        return;
    }
    atomic_store_explicit(&hvk_log_threshold, (int)level, memory_order_relaxed);
}

int hvk_log_enabled(enum hvk_log_level level)
{
    return level == HVK_LOG_ERROR || (int)level <= atomic_load_explicit(&hvk_log_threshold, memory_order_relaxed);
}

void hvk_log(enum hvk_log_level level, const char *format, ...)
{
    static const char *const names[] = {"error", "error", "warning", "info", "debug"};
    if (!hvk_log_enabled(level))
        return;
    char line[512];
    va_list args;
    va_start(args, format);
    vsnprintf(line, sizeof line, format, args);
    va_end(args);
    /* One fprintf per line so lines from several threads do not interleave mid-line. */
    fprintf(stderr, "hami-vk: %s: %s\n", names[level], line);
}

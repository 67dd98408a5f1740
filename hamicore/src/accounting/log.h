/* log.h - HAMi-compatible log lines on stderr, level from LIBCUDA_LOG_LEVEL (read once).
 * 0/1 = errors only, 2 = + warnings (default), 3 = + info, 4 = + debug. */
#ifndef HAMI_LOG_H
#define HAMI_LOG_H

enum { HAMI_LOG_ERROR = 1, HAMI_LOG_WARN = 2, HAMI_LOG_INFO = 3, HAMI_LOG_DEBUG = 4 };

int hami_log_level(void);
void hami_log_write(int level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define HAMI_LOG(level, ...)                                                   \
    do {                                                                       \
        if ((level) <= HAMI_LOG_ERROR || (level) <= hami_log_level())          \
            hami_log_write((level), __FILE__, __LINE__, __VA_ARGS__);          \
    } while (0)
#define HAMI_ERROR(...) HAMI_LOG(HAMI_LOG_ERROR, __VA_ARGS__)
#define HAMI_WARN(...) HAMI_LOG(HAMI_LOG_WARN, __VA_ARGS__)
#define HAMI_INFO(...) HAMI_LOG(HAMI_LOG_INFO, __VA_ARGS__)
#define HAMI_DEBUG(...) HAMI_LOG(HAMI_LOG_DEBUG, __VA_ARGS__)

#endif

/* hvk_log: the layer's diagnostics on stderr, prefixed "hami-vk:", gated by LIBCUDA_LOG_LEVEL.
 *
 * Levels follow HAMi-core (errors always; warnings at >= 2, the default; info >= 3; debug >= 4) so one
 * knob tunes both libraries. The level is read once, at the first vkCreateInstance. */
#ifndef HVK_LOG_H
#define HVK_LOG_H

enum hvk_log_level { HVK_LOG_ERROR = 0, HVK_LOG_WARN = 2, HVK_LOG_INFO = 3, HVK_LOG_DEBUG = 4 };

void hvk_log_init_from_env(void);
int hvk_log_enabled(enum hvk_log_level level);
void hvk_log(enum hvk_log_level level, const char *format, ...) __attribute__((format(printf, 2, 3)));

#endif

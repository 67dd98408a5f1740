/* limiter_nvml.h - what the compute limiter's controller asks NVML: the utilisation of the container's
 * own processes on one GPU. Called only from the controller thread, never on a launch path. NVML is
 * opened privately (dlopen + glibc's dlsym), so libvgpu's NVML hooks and the application's own NVML
 * use are not in the way. */
#ifndef HAMI_LIMITER_NVML_H
#define HAMI_LIMITER_NVML_H

#include <stdint.h>

#include "region_layout.h"

enum { HAMI_UTIL_MEASURED = 0, HAMI_UTIL_NO_SAMPLE = 1, HAMI_UTIL_UNAVAILABLE = -1 };

/* Utilisation (percent, summed over the container's processes) of the GPU with this UUID since the
 * NVML sample timestamp *last_seen_us (0 = whatever NVML still has), advancing *last_seen_us.
 * pids: the container's processes as NVML names them. When none of them appears in NVML's samples but
 * the container did launch work (`launched`), the GPU's whole utilisation is used instead (pids that
 * NVML cannot match, e.g. another PID namespace: conservative, the container may get less, never more).
 * Returns HAMI_UTIL_MEASURED, HAMI_UTIL_NO_SAMPLE (NVML has no sample newer than *last_seen_us) or
 * HAMI_UTIL_UNAVAILABLE (no NVML, unknown GPU). */
int hami_limiter_nvml_utilization(const uint8_t uuid[HAMI_UUID_BYTES], const int32_t *pids, int npids, int launched,
                                  uint64_t *last_seen_us, double *util_pct);

#endif

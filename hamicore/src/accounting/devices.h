/* devices.h - the UUID table of the shared region: which GPU each limit index is.
 * Filled from NVML (container order) by whoever needs it first, or from CUDA
 * device UUIDs by libvgpu. */
#ifndef HAMI_DEVICES_H
#define HAMI_DEVICES_H

#include <stdint.h>

#include "region_layout.h"

/* Record a UUID (and physical size, 0 if unknown) for limit index idx if none is known yet. */
void hami_devices_record(struct hami_region *r, int idx, const uint8_t uuid[HAMI_UUID_BYTES], uint64_t total);

/* Limit index of this UUID among the recorded ones, or -1. */
int hami_devices_find_uuid(const struct hami_region *r, const uint8_t uuid[HAMI_UUID_BYTES]);

/* Enumerate GPUs through NVML (dlopen libnvidia-ml.so.1) once per process and record their UUIDs.
 * Returns the number of devices NVML reported, or -1 when NVML is unavailable. */
int hami_devices_discover_nvml(struct hami_region *r);

#endif

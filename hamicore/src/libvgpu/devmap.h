/* devmap.h - which limit index a CUDA device ordinal or an NVML handle is.
 * One mapping for every path: CUDA ordinals go through their UUIDs (which also
 * honours CUDA_VISIBLE_DEVICES in index and UUID form), NVML handles too. */
#ifndef HAMI_DEVMAP_H
#define HAMI_DEVMAP_H

#include "driver_api.h"

struct hami_region;

/* Limit index of CUDA device ordinal dev, or -1 (no accounting for it). */
int hami_index_of_cuda_device(struct hami_region *r, CUdevice dev);
/* Limit index of the current context's device, or -1. */
int hami_index_of_current(struct hami_region *r);
/* Limit index of a stream's device (falls back to the current context), or -1. */
int hami_index_of_stream(struct hami_region *r, CUstream stream);
/* Limit index of an NVML device handle, or -1. */
int hami_index_of_nvml(struct hami_region *r, nvmlDevice_t device);

#endif

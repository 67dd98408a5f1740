/* fake_nvml.h - TEST DOUBLE: what the fake NVML's files share (fake_nvml.c: devices, health; fake_mig.c: MIG;
 * fake_topology.c: interconnect).
 * Not an exported interface: the library exports NVML's own symbols only. */
#ifndef FAKE_NVML_H
#define FAKE_NVML_H

#define NVML_NO_UNVERSIONED_FUNC_DEFS 1
#include <nvml.h>

#define FAKE_EXPORT __attribute__((visibility("default")))
/* Defines NVML entry point `name` as fake_<name>, exported under NVML's name. */
#define FAKE(name, params)                                                                                    \
    FAKE_EXPORT nvmlReturn_t fake_##name params __asm__(#name);                                              \
    nvmlReturn_t fake_##name params

/* A device handle: a whole GPU (mig == 0, one per GPU in fake_nvml.c) or a MIG device (a compute instance;
 * one per GPU x GPU instance x compute instance in fake_mig.c). */
struct nvmlDevice_st {
    int index;
    int mig;
    unsigned gi, ci;
};

struct fake_gpu;
/* The whole GPU of a handle (NULL: not a GPU handle of this library, e.g. a MIG device). */
const struct fake_gpu *fake_nvml_gpu(nvmlDevice_t d);
/* The PCI info NVML reports for a GPU. */
void fake_nvml_fill_pci(const struct fake_gpu *g, nvmlPciInfo_t *p);

/* Whether nvmlInit has been called (and not undone). */
int fake_nvml_initialised(void);
/* The handle of GPU `index`. */
nvmlDevice_t fake_nvml_device(int index);
/* Copy a string into an NVML output buffer (INSUFFICIENT_SIZE when it does not fit). */
nvmlReturn_t fake_nvml_copy_string(char *out, unsigned int len, const char *value);
/* Apply the events file's lines appended since the last look (lost / recover / reset). */
void fake_nvml_refresh_health(void);

/* MIG device handles (fake_mig.c): 1 and fills gpu/memory/uuid/name when d is a live MIG device, 0 when d is
 * no MIG handle, -1 when it is a MIG handle whose compute instance is gone. */
int fake_mig_device_info(nvmlDevice_t d, int *gpu, unsigned long long *memory_bytes, char *uuid, size_t uuid_len,
                         char *name, size_t name_len);
/* The MIG device whose UUID is `uuid` ("MIG-..."), or NULL. */
nvmlDevice_t fake_mig_find_uuid(const char *uuid);
/* A "reset <gpu>" events-file line ending at `offset`: applies the GPU's pending MIG mode once across processes. */
void fake_mig_reset(int gpu, long offset);

#endif

/* config.h - what hamicore enforces, decided once per process: from the read-only spec the device plugin
 * mounts (spec_layout.h) when there is one, else from the environment (HAMi-core's variables, for use with
 * other device plugins). Parsing helpers are pure so the tests can exercise them through the library. */
#ifndef HAMI_CONFIG_H
#define HAMI_CONFIG_H

#include <stdint.h>

#include "region_layout.h"

#define HAMI_DEFAULT_REGION_PATH "/tmp/cudevshr.cache"
#define HAMI_PATH_MAX 4096

struct hami_visible_entry {
    int index;          /* >= 0 when the entry is a number */
    char uuid[96];      /* "GPU-..." (or a prefix of one) when the entry is a UUID */
};

struct hami_config {
    int active;                               /* a spec, a limit or a shared cache path is set */
    int enforce;                              /* a spec or a memory limit: an unusable region refuses
                                                 allocations (fail closed) instead of passing them through */
    int from_spec;                            /* limits come from the spec; the environment's are ignored */
    int spec_refused;                         /* a spec file is there but unusable: fail closed */
    char spec_error[256];                     /* why it was refused */
    uint32_t spec_flags;                      /* HAMI_SPEC_* of the spec (0 without one) */
    uint8_t uuid[HAMI_MAX_DEVICES][HAMI_UUID_BYTES]; /* the spec's GPUs by limit index */
    uint8_t uuid_valid[HAMI_MAX_DEVICES];
    char region_path[HAMI_PATH_MAX];
    uint64_t limit_bytes[HAMI_MAX_DEVICES];   /* 0 = unlimited */
    int explicit_devices;                     /* 1 + highest i of CUDA_DEVICE_MEMORY_LIMIT_<i> set, or the
                                                 spec's GPU count */
    uint32_t sm_limit[HAMI_MAX_DEVICES];      /* percent, 0 = none */
    int task_priority;
    uint32_t core_policy;
    int oversubscribe;                        /* a cuMemAlloc the card refuses spills to managed memory: the
                                                 spec's HAMI_SPEC_OVERSUBSCRIBE, or CUDA_OVERSUBSCRIBE without a
                                                 spec */
    int visible_set;                          /* CUDA_VISIBLE_DEVICES present */
    int visible_count;
    struct hami_visible_entry visible[HAMI_MAX_DEVICES];
};

/* The process's configuration (read on first call; never NULL). */
const struct hami_config *hami_config_get(void);

/* "1073741824", "1024m", "1g", "1GiB" (binary units k/m/g/t, optional i/b): 0 ok, -1 invalid. */
int hami_parse_size(const char *text, uint64_t *out);

/* Parse CUDA_VISIBLE_DEVICES syntax into entries (stops at the first invalid entry, like CUDA). */
int hami_parse_visible_devices(const char *text, struct hami_visible_entry *out, int max);

/* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (or 32 hex digits) -> 16 bytes: 0 ok, -1 invalid. */
int hami_parse_uuid(const char *text, uint8_t out[HAMI_UUID_BYTES]);
void hami_format_uuid(const uint8_t uuid[HAMI_UUID_BYTES], char *out, unsigned long size);

#endif

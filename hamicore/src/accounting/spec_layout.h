/*
 * spec_layout.h - the per-container enforcement spec: what the device plugin decided for a container
 * (memory limits, SM shares, priority, core policy, GPU set, the path of the counters region, whether
 * CUDA_DISABLE_CONTROL is allowed, whether memory is oversubscribed). The plugin writes it at Allocate and mounts it read-only at
 * HAMI_SPEC_PATH; the container can neither write it nor point hamicore at another file (the path is
 * fixed, not taken from the environment). When it is present, hamicore takes every limit from it and
 * ignores the environment's; the writable region holds only counters.
 *
 * This layout is an ABI shared with the device plugin (services/device-plugin/.../core/spec.py), which takes
 * every constant and offset from this header at build time (hamicore/tools/gen_region_layout.py: keep to the
 * subset it reads, one member per declaration and explicit padding); the offsets are fixed by the static
 * asserts below and printed by `hami-region-inspect --spec-layout`. Little-endian, no pointers.
 *
 * Versioning: a reader accepts any spec of its major version whose spec_size is at least the size it
 * knows (a newer minor only appends fields or uses reserved bytes, zero meaning "not set"); another major,
 * or a shorter file, is refused and the library fails closed.
 *
 * 1.1: HAMI_SPEC_OVERSUBSCRIBE (a bit of the flags that 1.0 left zero). A 1.0 reader ignores the bit and, as
 * before, reads CUDA_OVERSUBSCRIBE from the environment, which the device plugin sets as well for it.
 */
#ifndef HAMI_SPEC_LAYOUT_H
#define HAMI_SPEC_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "region_layout.h"

#define HAMI_SPEC_PATH "/etc/hami/vgpu.spec"
#define HAMI_SPEC_MAGIC 0x43455053494d4148ULL /* bytes "HAMISPEC" */
#define HAMI_SPEC_VERSION_MAJOR 1u
#define HAMI_SPEC_VERSION_MINOR 1u
#define HAMI_SPEC_REGION_PATH_BYTES 1024
#define HAMI_SPEC_MAX_BYTES 65536 /* a reader never reads more than this */

/* hami_spec.flags */
enum {
    HAMI_SPEC_ALLOW_DISABLE_CONTROL = 1u, /* the operator allows CUDA_DISABLE_CONTROL in this namespace */
    HAMI_SPEC_VULKAN = 2u,                /* the container's Vulkan layer must load (pod asked for it) */
    HAMI_SPEC_OVERSUBSCRIBE = 4u,         /* memory-scaling > 1: a cuMemAlloc the card refuses spills to managed
                                             memory (1.1; the environment's CUDA_OVERSUBSCRIBE is then ignored) */
};

/* hami_spec_device.flags */
enum { HAMI_SPEC_UUID_VALID = 1u };

/* One GPU of the container, by limit index (the container's GPU order). 32 bytes. */
struct hami_spec_device {
    uint8_t uuid[HAMI_UUID_BYTES];      /* valid when flags & HAMI_SPEC_UUID_VALID */
    uint64_t limit_bytes;               /* 0 = no memory limit */
    uint32_t sm_limit_percent;          /* 0 = no SM limit */
    uint32_t flags;
};

struct hami_spec {
    uint64_t magic;                     /* HAMI_SPEC_MAGIC */
    uint32_t version_major;
    uint32_t version_minor;
    uint32_t spec_size;                 /* bytes of the file */
    uint32_t device_count;              /* 1..HAMI_MAX_DEVICES: limit indices 0..n-1 */
    int32_t task_priority;              /* 0 (high) .. 100; 1 is the default */
    uint32_t core_policy;               /* HAMI_CORE_POLICY_* */
    uint32_t flags;                     /* HAMI_SPEC_* */
    uint32_t default_sm_limit_percent;  /* indices >= device_count */
    uint8_t reserved[24];
    char region_path[HAMI_SPEC_REGION_PATH_BYTES]; /* absolute, NUL-terminated: the counters region */
    struct hami_spec_device devices[HAMI_MAX_DEVICES];
};

_Static_assert(sizeof(struct hami_spec_device) == 32, "spec device size");
_Static_assert(offsetof(struct hami_spec, flags) == 32, "spec flags offset");
_Static_assert(offsetof(struct hami_spec, region_path) == 64, "spec region path offset");
_Static_assert(offsetof(struct hami_spec, devices) == 64 + HAMI_SPEC_REGION_PATH_BYTES, "spec devices offset");
_Static_assert(sizeof(struct hami_spec) == 64 + HAMI_SPEC_REGION_PATH_BYTES + 32 * HAMI_MAX_DEVICES, "spec size");

#endif /* HAMI_SPEC_LAYOUT_H */

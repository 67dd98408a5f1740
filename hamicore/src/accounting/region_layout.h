/*
 * region_layout.h - the on-disk/in-memory layout of the per-container shared
 * accounting region (the file named by CUDA_DEVICE_MEMORY_SHARED_CACHE).
 *
 * This layout is an ABI: every process of a container maps it, the node
 * monitor (Python) reads it, and the compute limiter writes the fields marked
 * "limiter". Offsets are fixed by the static asserts at the bottom. The
 * monitor takes every constant and offset from this header at build time
 * (hamicore/tools/gen_region_layout.py): keep to the subset it reads, one
 * member per declaration and explicit padding.
 *
 * The region holds counters only: the container can write it, so no library
 * of version 1.2 or later takes a limit from it (limits come from the spec,
 * spec_layout.h, or the environment); limit_bytes, sm_limit_percent,
 * task_priority and core_policy are still written at creation for libraries
 * of version 1.1 and older and for inspection.
 *
 * Versioning (rolling upgrades: libraries of two versions share one region):
 * - a minor bump only gives meaning to reserved bytes, with zero meaning "not
 *   written" (a region created by an older minor reads as zero there), and
 *   keeps every size and offset; a library attaches to any minor of its major;
 * - anything else (a size, an offset, the meaning of a field) is a major bump;
 *   a library refuses another major and fails closed (allocations refused).
 * Change the layout only together with these rules and hamicore/README.md.
 *
 * All multi-byte fields are little-endian native integers. Fields written
 * after initialisation are accessed with C11 atomics.
 */
#ifndef HAMI_REGION_LAYOUT_H
#define HAMI_REGION_LAYOUT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define HAMI_REGION_MAGIC 0x31474552494d4148ULL /* bytes "HAMIREG1" */
#define HAMI_REGION_VERSION_MAJOR 1u
/* 1.1: monitor heartbeat, limiter state (same size as 1.0). 1.2: each slot says which library version
 * attached (lib_version, 0 = 1.1 or older); limits are no longer read from the region. 1.3: each slot says
 * which part of its used_bytes CUDA contexts and loaded modules hold (kind_bytes). */
#ifndef HAMI_REGION_VERSION_MINOR
#define HAMI_REGION_VERSION_MINOR 3u
#endif
#define HAMI_MAX_DEVICES 16
#define HAMI_MAX_PROCS 1024
#define HAMI_UUID_BYTES 16

/* Device UUID states (hami_device_record.uuid_state). */
enum { HAMI_UUID_UNKNOWN = 0, HAMI_UUID_WRITING = 1, HAMI_UUID_VALID = 2 };

/* NVML discovery of the container's GPUs (hami_region_header.discovery_state). */
enum { HAMI_DISCOVERY_NONE = 0, HAMI_DISCOVERY_RUNNING = 1, HAMI_DISCOVERY_DONE = 2, HAMI_DISCOVERY_NO_NVML = 3 };

/* Process slot states (hami_proc_slot.state). */
enum { HAMI_SLOT_FREE = 0, HAMI_SLOT_CLAIMING = 1, HAMI_SLOT_LIVE = 2, HAMI_SLOT_RECLAIMING = 3 };

/* The memory kinds a slot breaks out of its used_bytes (1.3, hami_proc_slot.kind_bytes): what CUDA contexts
 * and what loaded modules/libraries hold; the rest of used_bytes is buffers (data). */
enum { HAMI_KIND_CONTEXT = 0, HAMI_KIND_MODULE = 1 };

/* One kind_bytes entry: 0 = free, else bit 63 set, bit 60 the kind, bits 56..59 the limit index and bits
 * 0..55 the bytes (64 PiB). One entry per (device, kind) the process charges. */
#define HAMI_KIND_ENTRIES 4
#define HAMI_KIND_IN_USE 0x8000000000000000ull
#define HAMI_KIND_KIND_SHIFT 60
#define HAMI_KIND_DEVICE_SHIFT 56
#define HAMI_KIND_BYTES_MASK 0x00ffffffffffffffull

/* GPU_CORE_UTILIZATION_POLICY as stored in the header. */
enum { HAMI_CORE_POLICY_DEFAULT = 0, HAMI_CORE_POLICY_FORCE = 1, HAMI_CORE_POLICY_DISABLE = 2 };

/* Compute limiter state bits (hami_limiter_fields.state). */
enum { HAMI_LIMITER_LIMITING = 1u, HAMI_LIMITER_HOLDING = 2u, HAMI_LIMITER_STARVED = 4u };

/* Per-device signals of the compute limiter and the node monitor (zero and ignored by the memory
 * accounting). 64 bytes. The monitor writes utilization_pct, contended and priority_hold; the
 * limiter writes the rest. */
struct hami_limiter_fields {
    uint32_t sm_limit_percent;          /* from CUDA_DEVICE_SM_LIMIT[_<i>] at init; 0 = none */
    _Atomic uint32_t utilization_pct;   /* node monitor: measured utilisation of this container */
    _Atomic uint32_t contended;         /* node monitor: 1 when another container is active on the GPU */
    _Atomic uint32_t priority_hold;     /* node monitor: 1 = an active container on the GPU has a higher priority */
    _Atomic uint64_t last_kernel_ns;    /* limiter: CLOCK_MONOTONIC of a recent launch (per control tick) */
    _Atomic uint32_t measured_pct;      /* limiter: the container's utilisation as its controller measured it */
    _Atomic uint32_t state;             /* limiter: HAMI_LIMITER_* bits */
    _Atomic uint64_t reserved[4];
};

/* The controller's memory for one device (limiter_policy.h, struct hami_controller), shared so any
 * process of the container can take the next step. Written only by the holder of the control lease.
 * Doubles are stored as their IEEE-754 bits. 64 bytes. */
struct hami_limiter_control {
    _Atomic uint64_t added;             /* units refilled since the last control step */
    _Atomic uint64_t util_sum_bits;     /* decayed sum of utilisation x seconds */
    _Atomic uint64_t cost_sum_bits;     /* decayed sum of consumed units */
    _Atomic uint64_t time_sum_bits;     /* decayed sum of seconds */
    _Atomic uint64_t integral_bits;     /* percentage points added to the target */
    _Atomic uint64_t reserved[3];
};

/* The container's token bucket for one device, shared by all its processes. tokens is the hot word
 * (every limited launch subtracts from it); the rest is written only by the process holding the
 * control lease. 64 bytes. */
struct hami_limiter_state {
    _Atomic int64_t tokens;             /* units available (may go negative: debt of admitted launches) */
    _Atomic uint64_t rate;              /* refill, units per second */
    _Atomic uint64_t refill_ns;         /* CLOCK_MONOTONIC of the last refill */
    _Atomic uint64_t control_ns;        /* CLOCK_MONOTONIC of the last measurement (0 = none yet) */
    _Atomic uint64_t lease_ns;          /* control lease: holder's CLOCK_MONOTONIC at acquisition, 0 = free */
    _Atomic uint64_t sample_us;         /* NVML lastSeenTimeStamp of the last utilisation sample */
    _Atomic int64_t tokens_at_control;  /* tokens right after the last measurement */
    _Atomic int64_t tokens_at_tick;     /* tokens right after the last refill (activity detection) */
};

/* One record per limit index (the i of CUDA_DEVICE_MEMORY_LIMIT_<i>). 256 bytes, four cache lines:
 * the memory accounting (hot used_bytes with read-mostly data), the limiter's controller memory, the
 * limiter and monitor signals, the token bucket (hot while a limit is in force). */
struct hami_device_record {
    _Atomic uint64_t used_bytes;        /* aggregate of all processes: the single source of truth */
    uint64_t limit_bytes;               /* 0 = unlimited; fixed when the region is created */
    _Atomic uint64_t total_bytes;       /* physical size if known (0 = unknown) */
    uint8_t uuid[HAMI_UUID_BYTES];      /* valid when uuid_state == HAMI_UUID_VALID */
    _Atomic uint32_t uuid_state;
    uint32_t pad0;
    _Atomic uint64_t peak_bytes;        /* high-water mark of used_bytes */
    _Atomic uint64_t oom_count;         /* refusals on this device */
    struct hami_limiter_control control; /* offset 64: keeps the hot memory counter's line to itself */
    struct hami_limiter_fields limiter; /* offset 128 */
    struct hami_limiter_state bucket;   /* offset 192 */
};

/* One slot per attached process. 192 bytes. */
struct hami_proc_slot {
    _Atomic uint32_t state;             /* HAMI_SLOT_* */
    _Atomic int32_t pid;                /* pid in the container's pid namespace */
    _Atomic uint64_t start_time;        /* /proc/<pid>/stat field 22 (clock ticks after boot) */
    _Atomic int32_t host_pid;           /* reserved for the node monitor (0 = unknown) */
    _Atomic uint32_t lib_version;       /* 1.2: major << 16 | minor of the attached library; 0 = 1.1 or older */
    /* 1.3: the context and module parts of used_bytes (HAMI_KIND_* entries). Meaningful only in a LIVE slot
     * whose lib_version is 1.3 or later (an older library neither writes nor clears them); written only by the
     * slot's process, cleared by whoever claims or reclaims the slot before used_bytes goes. There is no
     * per-device aggregate: readers sum the live slots, so what a reclaim takes back (whichever library
     * reclaims) leaves the split with it and it cannot drift from used_bytes. */
    _Atomic uint64_t kind_bytes[HAMI_KIND_ENTRIES];
    _Atomic uint64_t reserved[1];
    _Atomic uint64_t used_bytes[HAMI_MAX_DEVICES]; /* what this process holds per device */
};

/* The header: one page. */
struct hami_region_header {
    _Atomic uint64_t magic;             /* HAMI_REGION_MAGIC, stored last when initialised */
    uint32_t version_major;
    uint32_t version_minor;
    uint64_t region_size;               /* bytes of the whole file */
    uint32_t header_size;
    uint32_t device_record_size;
    uint32_t slot_size;
    uint32_t max_devices;
    uint32_t max_procs;
    _Atomic uint32_t device_count;      /* devices known (limit indices 0..n-1) */
    uint64_t devices_offset;
    uint64_t slots_offset;
    int32_t task_priority;              /* CUDA_TASK_PRIORITY at creation (default 1) */
    uint32_t core_policy;               /* HAMI_CORE_POLICY_* at creation */
    _Atomic uint32_t utilization_switch; /* unused (1 at creation): the monitor's signals are per device */
    _Atomic int32_t recent_kernel;      /* unused: activity is last_kernel_ns and NVML utilisation */
    _Atomic uint64_t created_unix_ns;   /* CLOCK_REALTIME at creation */
    _Atomic uint64_t attach_count;      /* processes ever attached */
    _Atomic uint64_t reclaim_count;     /* dead processes reclaimed */
    _Atomic uint32_t discovery_state;   /* HAMI_DISCOVERY_*: GPU UUIDs enumerated through NVML yet? */
    uint32_t pad0;
    _Atomic uint32_t monitor_generation; /* node monitor: +1 per scan; 0 = no monitor ever wrote */
    _Atomic uint32_t monitor_interval_ms; /* node monitor: its scan interval (0 = not said) */
    uint8_t reserved[4096 - 120];
};

struct hami_region {
    struct hami_region_header header;
    struct hami_device_record devices[HAMI_MAX_DEVICES];
    struct hami_proc_slot slots[HAMI_MAX_PROCS];
};

_Static_assert(sizeof(struct hami_limiter_fields) == 64, "limiter block size");
_Static_assert(sizeof(struct hami_device_record) == 256, "device record size");
_Static_assert(offsetof(struct hami_device_record, limiter) == 128, "limiter offset");
_Static_assert(offsetof(struct hami_device_record, bucket) == 192, "limiter state offset");
_Static_assert(offsetof(struct hami_device_record, control) == 64, "controller state offset");
_Static_assert(sizeof(struct hami_limiter_control) == 64, "controller state size");
_Static_assert(sizeof(struct hami_limiter_state) == 64, "limiter state size");
_Static_assert(sizeof(struct hami_proc_slot) == 192, "slot size");
_Static_assert(offsetof(struct hami_proc_slot, used_bytes) == 64, "slot usage offset");
_Static_assert(offsetof(struct hami_proc_slot, lib_version) == 20, "slot library version offset");
_Static_assert(offsetof(struct hami_proc_slot, kind_bytes) == 24, "slot memory kinds offset");
_Static_assert(HAMI_MAX_DEVICES <= 16, "kind_bytes entries hold a 4-bit limit index");
_Static_assert(sizeof(struct hami_region_header) == 4096, "header size");
_Static_assert(offsetof(struct hami_region_header, reclaim_count) == 96, "header tail");
_Static_assert(offsetof(struct hami_region_header, discovery_state) == 104, "discovery state");
_Static_assert(offsetof(struct hami_region_header, monitor_generation) == 112, "monitor heartbeat");
_Static_assert(offsetof(struct hami_region, devices) == 4096, "devices offset");
_Static_assert(offsetof(struct hami_region, slots) == 8192, "slots offset");
_Static_assert(sizeof(struct hami_region) == 8192 + 192 * HAMI_MAX_PROCS, "region size");

#endif /* HAMI_REGION_LAYOUT_H */

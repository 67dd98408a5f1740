/* region_inspect.c - prints a shared accounting region (limits, per-device and
 * per-process usage) as text or JSON; --reclaim frees the slots of dead processes.
 *
 *   hami-region-inspect [--json] [--reclaim] <file>
 *   hami-region-inspect --layout      (offsets of the format, JSON, for readers in other languages)
 *   hami-region-inspect --spec-layout (offsets of the per-container spec, JSON, for its writer) */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "prim.h"
#include "region.h"
#include "region_layout.h"
#include "spec_layout.h"

static void print_layout(void) {
    printf("{\"magic\":%llu,\"version_major\":%u,\"version_minor\":%u,\"region_size\":%zu,"
           "\"header_size\":%zu,\"devices_offset\":%zu,\"device_record_size\":%zu,\"slots_offset\":%zu,"
           "\"slot_size\":%zu,\"max_devices\":%d,\"max_procs\":%d,",
           (unsigned long long)HAMI_REGION_MAGIC, HAMI_REGION_VERSION_MAJOR, HAMI_REGION_VERSION_MINOR,
           sizeof(struct hami_region), sizeof(struct hami_region_header), offsetof(struct hami_region, devices),
           sizeof(struct hami_device_record), offsetof(struct hami_region, slots), sizeof(struct hami_proc_slot),
           HAMI_MAX_DEVICES, HAMI_MAX_PROCS);
#define H(f) printf("\"header.%s\":%zu,", #f, offsetof(struct hami_region_header, f))
    H(magic); H(version_major); H(version_minor); H(region_size); H(device_count); H(task_priority);
    H(core_policy); H(utilization_switch); H(recent_kernel); H(created_unix_ns); H(attach_count); H(reclaim_count); H(discovery_state);
    H(monitor_generation); H(monitor_interval_ms);
#define D(f) printf("\"device.%s\":%zu,", #f, offsetof(struct hami_device_record, f))
    D(used_bytes); D(limit_bytes); D(total_bytes); D(uuid); D(uuid_state); D(peak_bytes); D(oom_count); D(limiter);
#define L(f) printf("\"limiter.%s\":%zu,", #f, offsetof(struct hami_device_record, limiter) + offsetof(struct hami_limiter_fields, f))
    L(sm_limit_percent); L(utilization_pct); L(contended); L(priority_hold); L(last_kernel_ns); L(measured_pct);
    L(state);
#define S(f) printf("\"slot.%s\":%zu,", #f, offsetof(struct hami_proc_slot, f))
    S(state); S(pid); S(start_time); S(host_pid); S(lib_version); S(kind_bytes);
    printf("\"slot.used_bytes\":%zu}\n", offsetof(struct hami_proc_slot, used_bytes));
}

static void print_spec_layout(void) {
    printf("{\"path\":\"%s\",\"magic\":%llu,\"version_major\":%u,\"version_minor\":%u,\"size\":%zu,"
           "\"device_size\":%zu,\"region_path_bytes\":%d,\"allow_disable_control\":%u,\"vulkan\":%u,"
           "\"oversubscribe\":%u,\"uuid_valid\":%u,",
           HAMI_SPEC_PATH, (unsigned long long)HAMI_SPEC_MAGIC, HAMI_SPEC_VERSION_MAJOR, HAMI_SPEC_VERSION_MINOR,
           sizeof(struct hami_spec), sizeof(struct hami_spec_device), HAMI_SPEC_REGION_PATH_BYTES,
           HAMI_SPEC_ALLOW_DISABLE_CONTROL, HAMI_SPEC_VULKAN, HAMI_SPEC_OVERSUBSCRIBE, HAMI_SPEC_UUID_VALID);
#define P(f) printf("\"spec.%s\":%zu,", #f, offsetof(struct hami_spec, f))
    P(magic); P(version_major); P(version_minor); P(spec_size); P(device_count); P(task_priority); P(core_policy);
    P(flags); P(default_sm_limit_percent); P(region_path); P(devices);
#define SD(f) printf("\"device.%s\":%zu,", #f, offsetof(struct hami_spec_device, f))
    SD(uuid); SD(limit_bytes); SD(sm_limit_percent);
    printf("\"device.flags\":%zu}\n", offsetof(struct hami_spec_device, flags));
}

static void print_text(const struct hami_region *r) {
    const struct hami_region_header *h = &r->header;
    printf("region v%u.%u, %llu bytes, %u devices, %llu attaches, %llu reclaimed, priority %d, policy %u\n",
           h->version_major, h->version_minor, (unsigned long long)h->region_size, atomic_load(&h->device_count),
           (unsigned long long)atomic_load(&h->attach_count), (unsigned long long)atomic_load(&h->reclaim_count),
           h->task_priority, h->core_policy);
    printf("%-4s %-40s %14s %14s %14s %6s %5s\n", "dev", "uuid", "limit", "used", "peak", "ooms", "sm%");
    for (int i = 0; i < HAMI_MAX_DEVICES; i++) {
        const struct hami_device_record *d = &r->devices[i];
        uint64_t used = atomic_load(&d->used_bytes);
        int known = atomic_load(&d->uuid_state) == HAMI_UUID_VALID;
        if (!known && !used && i >= (int)atomic_load(&h->device_count)) continue;
        char uuid[64] = "-";
        if (known) hami_format_uuid(d->uuid, uuid, sizeof uuid);
        printf("%-4d %-40s %14llu %14llu %14llu %6llu %5u\n", i, uuid, (unsigned long long)d->limit_bytes,
               (unsigned long long)used, (unsigned long long)atomic_load(&d->peak_bytes),
               (unsigned long long)atomic_load(&d->oom_count), d->limiter.sm_limit_percent);
    }
    printf("%-6s %-8s %-6s %-5s %s\n", "slot", "pid", "alive", "state", "used per device");
    for (int i = 0; i < HAMI_MAX_PROCS; i++) {
        const struct hami_proc_slot *s = &r->slots[i];
        uint32_t state = atomic_load(&s->state);
        if (state == HAMI_SLOT_FREE) continue;
        int pid = atomic_load(&s->pid);
        printf("%-6d %-8d %-6s %-5u", i, pid, hami_proc_is_alive(pid, atomic_load(&s->start_time)) ? "yes" : "no",
               state);
        for (int d = 0; d < HAMI_MAX_DEVICES; d++) {
            uint64_t u = atomic_load(&s->used_bytes[d]);
            if (u) printf(" %d:%llu", d, (unsigned long long)u);
        }
        printf("\n");
    }
}

static double bits_to_double(const _Atomic uint64_t *bits) {
    uint64_t v = atomic_load(bits);
    double d;
    memcpy(&d, &v, sizeof d);
    return d;
}

/* The compute limiter's view of one device: signals, measurement, controller memory, bucket. */
static void print_limiter_json(const struct hami_device_record *d) {
    const struct hami_limiter_fields *l = &d->limiter;
    uint32_t state = atomic_load(&l->state);
    double cost_sum = bits_to_double(&d->control.cost_sum_bits);
    printf("\"limiter\":{\"limiting\":%s,\"holding\":%s,\"contended\":%u,\"priority_hold\":%u,"
           "\"monitor_utilization\":%u,\"measured_utilization\":%u,\"last_kernel_ns\":%llu,\"rate\":%llu,"
           "\"tokens\":%lld,\"unit_cost\":%.6g,\"integral\":%.3f}",
           (state & HAMI_LIMITER_LIMITING) ? "true" : "false", (state & HAMI_LIMITER_HOLDING) ? "true" : "false",
           atomic_load(&l->contended), atomic_load(&l->priority_hold), atomic_load(&l->utilization_pct),
           atomic_load(&l->measured_pct), (unsigned long long)atomic_load(&l->last_kernel_ns),
           (unsigned long long)atomic_load(&d->bucket.rate), (long long)atomic_load(&d->bucket.tokens),
           cost_sum > 0 ? bits_to_double(&d->control.util_sum_bits) / cost_sum : 0.0,
           bits_to_double(&d->control.integral_bits));
}

/* The context (kind 0) or module (kind 1) part of a slot's used_bytes per device: 1.3 entries of a slot that a
 * 1.3 or later library claimed (an older one leaves them as they were). */
static void print_kind_json(const struct hami_proc_slot *s, int kind) {
    uint64_t per_device[HAMI_MAX_DEVICES] = {0};
    if (atomic_load(&s->lib_version) >= ((1u << 16) | 3u)) {
        for (int k = 0; k < HAMI_KIND_ENTRIES; k++) {
            uint64_t e = atomic_load(&s->kind_bytes[k]);
            if (!(e & HAMI_KIND_IN_USE) || (int)((e >> HAMI_KIND_KIND_SHIFT) & 1) != kind) continue;
            per_device[(e >> HAMI_KIND_DEVICE_SHIFT) & 15] += e & HAMI_KIND_BYTES_MASK;
        }
    }
    printf(",\"%s\":[", kind == HAMI_KIND_CONTEXT ? "context" : "module");
    for (int d = 0; d < HAMI_MAX_DEVICES; d++) printf("%s%llu", d ? "," : "", (unsigned long long)per_device[d]);
    printf("]");
}

static void print_json(const struct hami_region *r) {
    const struct hami_region_header *h = &r->header;
    printf("{\"version\":\"%u.%u\",\"device_count\":%u,\"attach_count\":%llu,\"reclaim_count\":%llu,"
           "\"task_priority\":%d,\"core_policy\":%u,\"monitor_generation\":%u,\"devices\":[",
           h->version_major, h->version_minor, atomic_load(&h->device_count),
           (unsigned long long)atomic_load(&h->attach_count), (unsigned long long)atomic_load(&h->reclaim_count),
           h->task_priority, h->core_policy, atomic_load(&h->monitor_generation));
    for (int i = 0; i < HAMI_MAX_DEVICES; i++) {
        const struct hami_device_record *d = &r->devices[i];
        char uuid[64] = "";
        if (atomic_load(&d->uuid_state) == HAMI_UUID_VALID) hami_format_uuid(d->uuid, uuid, sizeof uuid);
        printf("%s{\"index\":%d,\"uuid\":\"%s\",\"limit\":%llu,\"used\":%llu,\"peak\":%llu,\"total\":%llu,"
               "\"oom_count\":%llu,\"sm_limit\":%u,",
               i ? "," : "", i, uuid, (unsigned long long)d->limit_bytes,
               (unsigned long long)atomic_load(&d->used_bytes), (unsigned long long)atomic_load(&d->peak_bytes),
               (unsigned long long)atomic_load(&d->total_bytes), (unsigned long long)atomic_load(&d->oom_count),
               d->limiter.sm_limit_percent);
        print_limiter_json(d);
        printf("}");
    }
    printf("],\"processes\":[");
    int first = 1;
    for (int i = 0; i < HAMI_MAX_PROCS; i++) {
        const struct hami_proc_slot *s = &r->slots[i];
        uint32_t state = atomic_load(&s->state);
        if (state == HAMI_SLOT_FREE) continue;
        int pid = atomic_load(&s->pid);
        uint64_t start = atomic_load(&s->start_time);
        printf("%s{\"slot\":%d,\"pid\":%d,\"start_time\":%llu,\"state\":%u,\"alive\":%s,\"lib_version\":%u,"
               "\"used\":[", first ? "" : ",", i, pid, (unsigned long long)start, state,
               hami_proc_is_alive(pid, start) ? "true" : "false", atomic_load(&s->lib_version));
        for (int d = 0; d < HAMI_MAX_DEVICES; d++)
            printf("%s%llu", d ? "," : "", (unsigned long long)atomic_load(&s->used_bytes[d]));
        printf("]");
        print_kind_json(s, HAMI_KIND_CONTEXT);
        print_kind_json(s, HAMI_KIND_MODULE);
        printf("}");
        first = 0;
    }
    printf("]}\n");
}

int main(int argc, char **argv) {
    int json = 0, reclaim = 0;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--reclaim")) reclaim = 1;
        else if (!strcmp(argv[i], "--layout")) {
            print_layout();
            return 0;
        } else if (!strcmp(argv[i], "--spec-layout")) {
            print_spec_layout();
            return 0;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: hami-region-inspect [--json] [--reclaim] <region file>\n"
                   "       hami-region-inspect --layout\n");
            return 0;
        } else path = argv[i];
    }
    if (!path) {
        fprintf(stderr, "hami-region-inspect: give the region file (the CUDA_DEVICE_MEMORY_SHARED_CACHE path)\n");
        return 2;
    }
    char err[512];
    struct hami_region *r = hami_region_map_file(path, reclaim, err, sizeof err);
    if (!r) {
        fprintf(stderr, "hami-region-inspect: %s\n", err);
        return 1;
    }
    if (reclaim) fprintf(stderr, "reclaimed %d dead process slot(s)\n", hami_region_reclaim_dead(r));
    if (json) print_json(r);
    else print_text(r);
    return 0;
}

/* unit_core.c - unit tests of the pure parts of hamicore (size, UUID and CUDA_VISIBLE_DEVICES parsing,
 * clamped atomics) and of the lock-free allocation table, including concurrent use. A tiny CHECK
 * harness: the exit status is the number of failed checks. Run by test_unit.py (and under sanitizers). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "region.h"
#include "spec.h"
#include "alloc_table.h"
#include "check.h"

static uint64_t size_of(const char *text) {
    uint64_t v = 12345;
    return hami_parse_size(text, &v) == 0 ? v : UINT64_MAX;
}

static void test_sizes(void) {
    CHECK(size_of("0") == 0);
    CHECK(size_of("1073741824") == 1073741824ull);
    CHECK(size_of("1k") == 1024 && size_of("1K") == 1024 && size_of("1KiB") == 1024 && size_of("1kb") == 1024);
    CHECK(size_of("3m") == 3ull << 20 && size_of("2g") == 2ull << 30 && size_of("1t") == 1ull << 40);
    CHECK(size_of(" 7m ") == 7ull << 20);
    CHECK(size_of("") == UINT64_MAX && size_of("m") == UINT64_MAX && size_of("-1") == UINT64_MAX);
    CHECK(size_of("1x") == UINT64_MAX && size_of("1mm") == UINT64_MAX && size_of("1.5g") == UINT64_MAX);
    CHECK(size_of("18446744073709551615") == UINT64_MAX - 0 && size_of("18446744073709551616") == UINT64_MAX);
    CHECK(size_of("17179869184g") == UINT64_MAX); /* overflows after the shift */
    uint64_t v;
    CHECK(hami_parse_size(NULL, &v) == -1 && hami_parse_size("1", NULL) == -1);
}

static void test_uuids(void) {
    uint8_t u[16];
    CHECK(hami_parse_uuid("GPU-fa4e0000-0000-4000-8000-000000000001", u) == 0 && u[0] == 0xfa && u[15] == 0x01);
    char text[64];
    hami_format_uuid(u, text, sizeof text);
    CHECK(strcmp(text, "GPU-fa4e0000-0000-4000-8000-000000000001") == 0);
    CHECK(hami_parse_uuid("FA4E0000000040008000000000000001", u) == 0 && u[0] == 0xfa);
    CHECK(hami_parse_uuid("GPU-fa4e", u) == -1);
    CHECK(hami_parse_uuid("GPU-fa4e0000-0000-4000-8000-0000000000011", u) == -1);
    CHECK(hami_parse_uuid("GPU-zz4e0000-0000-4000-8000-000000000001", u) == -1);
    CHECK(hami_parse_uuid(NULL, u) == -1);
}

static void test_visible_devices(void) {
    struct hami_visible_entry e[16];
    CHECK(hami_parse_visible_devices("0,1,2", e, 16) == 3 && e[2].index == 2);
    CHECK(hami_parse_visible_devices(" 3 , 1", e, 16) == 2 && e[0].index == 3 && e[1].index == 1);
    int n = hami_parse_visible_devices("GPU-fa4e0000-0000-4000-8000-000000000001,0", e, 16);
    CHECK(n == 2 && e[0].index == -1 && strcmp(e[0].uuid, "GPU-fa4e0000-0000-4000-8000-000000000001") == 0 &&
          e[1].index == 0);
    CHECK(hami_parse_visible_devices("1,x,2", e, 16) == 1);      /* CUDA stops at an invalid entry */
    CHECK(hami_parse_visible_devices("MIG-abc", e, 16) == 0);    /* MIG forms are not supported */
    CHECK(hami_parse_visible_devices("", e, 16) == 0);
    CHECK(hami_parse_visible_devices("0,1,2,3", e, 2) == 2);     /* bounded by the output array */
}

static void test_clamped_sub(void) {
    _Atomic uint64_t v = 100;
    CHECK(hami_atomic_sub_clamped(&v, 30) == 30 && v == 70);
    CHECK(hami_atomic_sub_clamped(&v, 1000) == 70 && v == 0);
    CHECK(hami_atomic_sub_clamped(&v, 5) == 0 && v == 0);
}

static void test_table_basics(void) {
    struct hami_alloc_info info;
    CHECK(hami_table_insert(HAMI_TABLE_POINTERS, 0, 1, 0) == -1);  /* reserved keys */
    CHECK(hami_table_insert(HAMI_TABLE_POINTERS, 2, 1, 0) == -1);
    CHECK(hami_table_take(HAMI_TABLE_POINTERS, 0x1000, &info) == 0); /* empty */
    CHECK(hami_table_insert(HAMI_TABLE_POINTERS, 0x1000, 111, 3) == 0);
    CHECK(hami_table_insert(HAMI_TABLE_HANDLES, 0x1000, 222, 4) == 0); /* tables are separate */
    CHECK(hami_table_take(HAMI_TABLE_POINTERS, 0x1000, &info) == 1 && info.bytes == 111 && info.dev == 3);
    CHECK(hami_table_take(HAMI_TABLE_POINTERS, 0x1000, &info) == 0);  /* taken once */
    CHECK(hami_table_take(HAMI_TABLE_HANDLES, 0x1000, &info) == 1 && info.bytes == 222 && info.dev == 4);
    /* Many inserts and removals: tombstones are reused and lookups stay correct. */
    int ok = 1;
    for (int round = 0; round < 20 && ok; round++) {
        for (uint64_t k = 0; k < 5000; k++) ok &= hami_table_insert(HAMI_TABLE_POINTERS, 0x10000 + k * 4096, k, 1) == 0;
        for (uint64_t k = 0; k < 5000; k++)
            ok &= hami_table_take(HAMI_TABLE_POINTERS, 0x10000 + k * 4096, &info) == 1 && info.bytes == k;
    }
    CHECK(ok);
    CHECK(hami_table_take(HAMI_TABLE_POINTERS, 0x10000, &info) == 0);
}

struct worker {
    int id;
    int errors;
};

static void *table_worker(void *arg) {
    struct worker *w = arg;
    struct hami_alloc_info info;
    for (int round = 0; round < 200; round++) {
        for (uint64_t k = 0; k < 64; k++) {
            uint64_t key = ((uint64_t)(w->id + 1) << 40) | ((k + 1) << 12);
            if (hami_table_insert(HAMI_TABLE_POINTERS, key, k * 8 + (uint64_t)w->id, w->id) != 0) w->errors++;
        }
        for (uint64_t k = 0; k < 64; k++) {
            uint64_t key = ((uint64_t)(w->id + 1) << 40) | ((k + 1) << 12);
            if (hami_table_take(HAMI_TABLE_POINTERS, key, &info) != 1 || info.bytes != k * 8 + (uint64_t)w->id ||
                info.dev != w->id)
                w->errors++;
        }
    }
    return NULL;
}

static void test_table_concurrent(void) {
    pthread_t t[8];
    struct worker w[8];
    for (int i = 0; i < 8; i++) {
        w[i] = (struct worker){i, 0};
        pthread_create(&t[i], NULL, table_worker, &w[i]);
    }
    int errors = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        errors += w[i].errors;
    }
    CHECK(errors == 0);
}

/* Which mount a path shows: the last mountinfo line for it (mounted on top), its per-mount options' ro/rw. */
static void test_spec_mountinfo(void) {
    const char *base = "22 1 0:21 / / rw,relatime - overlay overlay rw\n";
    const char *ro = "30 22 0:5 /x /etc/hami/vgpu.spec ro,nosuid - tmpfs tmpfs rw\n";
    const char *rw = "31 30 0:5 /y /etc/hami/vgpu.spec rw - tmpfs tmpfs rw\n";
    const char *other = "32 22 0:5 /z /etc/hami/vgpu.spec.bak ro - tmpfs tmpfs ro\n";
    char text[1024];
    snprintf(text, sizeof text, "%s%s", base, ro);
    CHECK(hami_spec_mountinfo_readonly(text, "/etc/hami/vgpu.spec") == 1);
    snprintf(text, sizeof text, "%s%s%s", base, ro, rw); /* a writable mount on top wins */
    CHECK(hami_spec_mountinfo_readonly(text, "/etc/hami/vgpu.spec") == 0);
    snprintf(text, sizeof text, "%s%s%s", base, rw, ro);
    CHECK(hami_spec_mountinfo_readonly(text, "/etc/hami/vgpu.spec") == 1);
    snprintf(text, sizeof text, "%s%s", base, other); /* only the exact path counts */
    CHECK(hami_spec_mountinfo_readonly(text, "/etc/hami/vgpu.spec") == 0);
    CHECK(hami_spec_mountinfo_readonly(base, "/etc/hami/vgpu.spec") == 0);
    CHECK(hami_spec_mountinfo_readonly("30 22 0:5 / /a\\040b ro - tmpfs t ro", "/a b") == 1); /* octal escapes */
    CHECK(hami_spec_mountinfo_readonly("30 22 0:5 / /etc/hami/vgpu.spec", "/etc/hami/vgpu.spec") == 0); /* short */
    CHECK(hami_spec_mountinfo_readonly("30 22 0:5 / /etc/hami/vgpu.spec rox - t t ro", "/etc/hami/vgpu.spec") == 0);
    CHECK(hami_spec_mountinfo_readonly(NULL, "/x") == 0 && hami_spec_mountinfo_readonly("", "/x") == 0);
}

/* Decoding is total: any length and content gives LOADED or REFUSED with a reason, never a crash. */
static void test_spec_decode(void) {
    struct hami_spec s, out;
    char err[256];
    memset(&s, 0, sizeof s);
    s.magic = HAMI_SPEC_MAGIC;
    s.version_major = HAMI_SPEC_VERSION_MAJOR;
    s.spec_size = sizeof s;
    s.device_count = 1;
    s.task_priority = 1;
    s.default_sm_limit_percent = 150;
    s.devices[0].limit_bytes = 1 << 20;
    s.devices[0].sm_limit_percent = 100;
    s.devices[3].limit_bytes = 7; /* past device_count: cleared */
    snprintf(s.region_path, sizeof s.region_path, "/r.cache");
    CHECK(hami_spec_decode(&s, sizeof s, &out, err, sizeof err) == HAMI_SPEC_LOADED);
    CHECK(out.devices[0].limit_bytes == 1 << 20 && out.devices[0].sm_limit_percent == 0);
    CHECK(out.default_sm_limit_percent == 0 && out.devices[3].limit_bytes == 0);
    memset(s.region_path, 'a', sizeof s.region_path); /* no NUL */
    CHECK(hami_spec_decode(&s, sizeof s, &out, err, sizeof err) == HAMI_SPEC_REFUSED);
    unsigned char noise[2048];
    for (unsigned seed = 1; seed < 2000; seed++) {
        for (size_t i = 0; i < sizeof noise; i++) noise[i] = (unsigned char)((seed * 2654435761u + i * 40503u) >> 13);
        memcpy(noise, &s, 16); /* a plausible header now and then */
        size_t len = (seed * 7919u) % sizeof noise;
        int rc = hami_spec_decode(noise, len, &out, err, sizeof err);
        CHECK(rc == HAMI_SPEC_LOADED || (rc == HAMI_SPEC_REFUSED && err[0]));
    }
}

int main(void) {
    test_sizes();
    test_spec_mountinfo();
    test_spec_decode();
    test_uuids();
    test_visible_devices();
    test_clamped_sub();
    test_table_basics();
    test_table_concurrent();
    return check_report();
}

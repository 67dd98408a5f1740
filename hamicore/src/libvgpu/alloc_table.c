/* alloc_table.c - see alloc_table.h. Keys are claimed with a CAS; a removal
 * turns the key into a tombstone that later inserts reuse. The longest probe
 * ever used bounds lookups, so a miss (an untracked free) is also cheap. */
#define _GNU_SOURCE
#include "alloc_table.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>

#define TABLE_BITS 17
#define TABLE_SIZE (1u << TABLE_BITS)
#define KEY_EMPTY 0u
#define KEY_TOMBSTONE 1u
#define KEY_BUSY 2u /* claimed by an inserter that is writing bytes/dev */

struct slot {
    _Atomic uint64_t key;
    _Atomic uint64_t bytes;
    _Atomic int64_t dev;
};

struct table {
    _Atomic(struct slot *) slots;
    _Atomic uint32_t max_probe;
};

static struct table g_tables[HAMI_TABLE_COUNT];
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

static void reset_in_child(void) {
    for (int t = 0; t < HAMI_TABLE_COUNT; t++) {
        struct slot *s = atomic_exchange(&g_tables[t].slots, NULL);
        if (s) munmap(s, sizeof(struct slot) * TABLE_SIZE);
        atomic_store(&g_tables[t].max_probe, 0);
    }
}

static void register_atfork(void) { pthread_atfork(NULL, NULL, reset_in_child); }

static struct slot *slots_of(int t, int create) {
    struct slot *s = atomic_load_explicit(&g_tables[t].slots, memory_order_acquire);
    if (s || !create) return s;
    pthread_once(&g_atfork_once, register_atfork);
    void *m = mmap(NULL, sizeof(struct slot) * TABLE_SIZE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    struct slot *expected = NULL;
    if (!atomic_compare_exchange_strong(&g_tables[t].slots, &expected, (struct slot *)m)) {
        munmap(m, sizeof(struct slot) * TABLE_SIZE);
        return expected;
    }
    return m;
}

static inline uint32_t hash_key(uint64_t key) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (uint32_t)key & (TABLE_SIZE - 1);
}

int hami_table_insert(int t, uint64_t key, uint64_t bytes, int dev) {
    if (key <= KEY_BUSY || t < 0 || t >= HAMI_TABLE_COUNT) return -1;
    struct slot *s = slots_of(t, 1);
    if (!s) return -1;
    uint32_t h = hash_key(key);
    for (uint32_t probe = 0; probe < TABLE_SIZE; probe++) {
        struct slot *e = &s[(h + probe) & (TABLE_SIZE - 1)];
        uint64_t cur = atomic_load_explicit(&e->key, memory_order_relaxed);
        if (cur != KEY_EMPTY && cur != KEY_TOMBSTONE) continue;
        if (!atomic_compare_exchange_strong_explicit(&e->key, &cur, KEY_BUSY, memory_order_acquire,
                                                     memory_order_relaxed))
            continue;
        atomic_store_explicit(&e->bytes, bytes, memory_order_relaxed);
        atomic_store_explicit(&e->dev, dev, memory_order_relaxed);
        atomic_store_explicit(&e->key, key, memory_order_release); /* publish the entry */
        uint32_t mp = atomic_load_explicit(&g_tables[t].max_probe, memory_order_relaxed);
        while (probe + 1 > mp && !atomic_compare_exchange_weak(&g_tables[t].max_probe, &mp, probe + 1)) {
        }
        return 0;
    }
    return -1;
}

int hami_table_take(int t, uint64_t key, struct hami_alloc_info *out) {
    if (key <= KEY_BUSY || t < 0 || t >= HAMI_TABLE_COUNT) return 0;
    struct slot *s = slots_of(t, 0);
    if (!s) return 0;
    uint32_t h = hash_key(key);
    uint32_t limit = atomic_load_explicit(&g_tables[t].max_probe, memory_order_acquire);
    for (uint32_t probe = 0; probe < limit; probe++) {
        struct slot *e = &s[(h + probe) & (TABLE_SIZE - 1)];
        uint64_t cur = atomic_load_explicit(&e->key, memory_order_acquire);
        if (cur == KEY_EMPTY) return 0;
        if (cur != key) continue;
        /* The values belong to key as long as key is unchanged: the CAS below proves it. */
        uint64_t bytes = atomic_load_explicit(&e->bytes, memory_order_relaxed);
        int64_t dev = atomic_load_explicit(&e->dev, memory_order_relaxed);
        if (!atomic_compare_exchange_strong_explicit(&e->key, &cur, KEY_TOMBSTONE, memory_order_acq_rel,
                                                     memory_order_relaxed))
            return 0;
        if (out) {
            out->bytes = bytes;
            out->dev = (int)dev;
        }
        return 1;
    }
    return 0;
}

int hami_table_find(int t, uint64_t key, struct hami_alloc_info *out) {
    if (key <= KEY_BUSY || t < 0 || t >= HAMI_TABLE_COUNT) return 0;
    struct slot *s = slots_of(t, 0);
    if (!s) return 0;
    uint32_t h = hash_key(key);
    uint32_t limit = atomic_load_explicit(&g_tables[t].max_probe, memory_order_acquire);
    for (uint32_t probe = 0; probe < limit; probe++) {
        struct slot *e = &s[(h + probe) & (TABLE_SIZE - 1)];
        uint64_t cur = atomic_load_explicit(&e->key, memory_order_acquire);
        if (cur == KEY_EMPTY) return 0;
        if (cur != key) continue;
        if (out) {
            out->bytes = atomic_load_explicit(&e->bytes, memory_order_relaxed);
            out->dev = (int)atomic_load_explicit(&e->dev, memory_order_relaxed);
        }
        return 1;
    }
    return 0;
}

int hami_table_exchange_bytes(int t, uint64_t key, uint64_t bytes, uint64_t *old) {
    if (key <= KEY_BUSY || t < 0 || t >= HAMI_TABLE_COUNT) return 0;
    struct slot *s = slots_of(t, 0);
    if (!s) return 0;
    uint32_t h = hash_key(key);
    uint32_t limit = atomic_load_explicit(&g_tables[t].max_probe, memory_order_acquire);
    for (uint32_t probe = 0; probe < limit; probe++) {
        struct slot *e = &s[(h + probe) & (TABLE_SIZE - 1)];
        uint64_t cur = atomic_load_explicit(&e->key, memory_order_acquire);
        if (cur == KEY_EMPTY) return 0;
        if (cur != key) continue;
        *old = atomic_exchange_explicit(&e->bytes, bytes, memory_order_acq_rel);
        return 1;
    }
    return 0;
}

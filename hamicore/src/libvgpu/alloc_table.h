/* alloc_table.h - lock-free map of this process's accounted allocations
 * (device pointer or VMM handle -> bytes, limit index). Open addressing with
 * tombstones; O(1) expected per operation; no lock, so fork() can never
 * inherit it locked. A fork child starts with an empty table (see region.h). */
#ifndef HAMI_ALLOC_TABLE_H
#define HAMI_ALLOC_TABLE_H

#include <stdint.h>

/* Pointers and VMM handles of accounted allocations; memory pools and where they live. */
/* Driver objects that hold device memory: created contexts, modules, libraries, arrays. */
enum { HAMI_TABLE_POINTERS = 0, HAMI_TABLE_HANDLES = 1, HAMI_TABLE_POOLS = 2, HAMI_TABLE_OBJECTS = 3, HAMI_TABLE_COUNT = 4 };

struct hami_alloc_info {
    uint64_t bytes;
    int dev;
};

/* 0 on success, -1 when the table is full. key must be > 2. */
int hami_table_insert(int table, uint64_t key, uint64_t bytes, int dev);
/* Returns 1 with key's info (leaving it in place), or 0 when it is not tracked. */
int hami_table_find(int table, uint64_t key, struct hami_alloc_info *out);
/* Replaces key's bytes with `bytes` and returns 1 with the previous value in *old, or 0 when it is not tracked. */
int hami_table_exchange_bytes(int table, uint64_t key, uint64_t bytes, uint64_t *old);
/* Removes key and returns 1 with its info, or 0 when it is not tracked. */
int hami_table_take(int table, uint64_t key, struct hami_alloc_info *out);

#endif

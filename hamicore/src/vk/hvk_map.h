/* hvk_map: a small open-addressing hash map from a non-zero 64-bit key to a 64-bit value.
 *
 * The Vulkan layer keys its records by dispatch key (the loader's dispatch-table pointer at the start of
 * every dispatchable handle) and its memory objects by VkDeviceMemory handle; both are never zero, so zero
 * marks an empty slot. Linear probing with backward-shift deletion: no tombstones, lookups stay short.
 * Not thread-safe: the caller holds the lock that guards the map. */
#ifndef HVK_MAP_H
#define HVK_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct hvk_map_entry {
    uint64_t key;
    uint64_t value;
} hvk_map_entry;

typedef struct hvk_map {
    hvk_map_entry *slots; /* capacity entries, capacity a power of two (or NULL when empty) */
    size_t capacity;
    size_t count;
} hvk_map;

/* Inserts or replaces key (must be non-zero). Returns false only when memory runs out. */
bool hvk_map_put(hvk_map *map, uint64_t key, uint64_t value);
/* Finds key; stores its value in *value when found. */
bool hvk_map_get(const hvk_map *map, uint64_t key, uint64_t *value);
/* Removes key; stores its former value in *value (may be NULL) when it was present. */
bool hvk_map_remove(hvk_map *map, uint64_t key, uint64_t *value);
/* Frees the slots; the map is empty and reusable afterwards. */
void hvk_map_clear(hvk_map *map);

#endif

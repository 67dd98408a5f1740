/* hvk_map: open addressing with linear probing and backward-shift deletion (see hvk_map.h). */
#include "hvk_map.h"

#include <stdlib.h>

/* Fibonacci hashing spreads pointer-like keys, whose low bits are mostly zero, over the table. */
static size_t hvk_map_home(uint64_t key, size_t capacity)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & (capacity - 1);
}

static bool hvk_map_grow(hvk_map *map)
{
    size_t new_capacity = map->capacity ? map->capacity * 2 : 16;
    hvk_map_entry *new_slots = calloc(new_capacity, sizeof *new_slots);
    if (new_slots == NULL)
        return false;
    for (size_t i = 0; i < map->capacity; i++) {
        hvk_map_entry entry = map->slots[i];
        if (entry.key == 0)
            continue;
        size_t at = hvk_map_home(entry.key, new_capacity);
        while (new_slots[at].key != 0)
            at = (at + 1) & (new_capacity - 1);
        new_slots[at] = entry;
    }
    free(map->slots);
    map->slots = new_slots;
    map->capacity = new_capacity;
    return true;
}

bool hvk_map_put(hvk_map *map, uint64_t key, uint64_t value)
{
    /* Keep the load factor under 3/4 so probe sequences stay short and always end. */
    if ((map->count + 1) * 4 > map->capacity * 3 && !hvk_map_grow(map))
        return false;
    size_t at = hvk_map_home(key, map->capacity);
    while (map->slots[at].key != 0 && map->slots[at].key != key)
        at = (at + 1) & (map->capacity - 1);
    if (map->slots[at].key == 0)
        map->count++;
    map->slots[at].key = key;
    map->slots[at].value = value;
    return true;
}

static bool hvk_map_find(const hvk_map *map, uint64_t key, size_t *index)
{
    if (map->capacity == 0 || key == 0)
        return false;
    size_t at = hvk_map_home(key, map->capacity);
    while (map->slots[at].key != 0) {
        if (map->slots[at].key == key) {
            *index = at;
            return true;
        }
        at = (at + 1) & (map->capacity - 1);
    }
    return false;
}

bool hvk_map_get(const hvk_map *map, uint64_t key, uint64_t *value)
{
    size_t at;
    if (!hvk_map_find(map, key, &at))
        return false;
    *value = map->slots[at].value;
    return true;
}

bool hvk_map_remove(hvk_map *map, uint64_t key, uint64_t *value)
{
    size_t hole;
    if (!hvk_map_find(map, key, &hole))
        return false;
    if (value != NULL)
        *value = map->slots[hole].value;
    size_t mask = map->capacity - 1;
    /* Shift later members of the probe run back into the hole so no lookup stops early. */
    for (size_t next = (hole + 1) & mask; map->slots[next].key != 0; next = (next + 1) & mask) {
        size_t home = hvk_map_home(map->slots[next].key, map->capacity);
        /* The entry may move into the hole only if the hole lies on its path from home to next. */
        bool hole_on_path = ((next - home) & mask) >= ((next - hole) & mask);
        if (hole_on_path) {
            map->slots[hole] = map->slots[next];
            hole = next;
        }
    }
    map->slots[hole].key = 0;
    map->slots[hole].value = 0;
    map->count--;
    return true;
}

void hvk_map_clear(hvk_map *map)
{
    free(map->slots);
    map->slots = NULL;
    map->capacity = 0;
    map->count = 0;
}

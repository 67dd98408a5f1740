/* Unit tests of the Vulkan layer's pure parts: the record map and the memory policy (hvk_policy).
 * A tiny CHECK harness; exit status 0 when every check passed. */
#include "hvk_map.h"
#include "hvk_policy.h"

#include <stdio.h>
#include <string.h>

static int failures;
#define CHECK(cond)                                                                                          \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                        \
            failures++;                                                                                      \
        }                                                                                                    \
    } while (0)

#define MiB (1024ull * 1024ull)

static void test_map_put_get_remove_many(void)
{
    hvk_map map = {0};
    for (uint64_t k = 1; k <= 5000; k++)
        CHECK(hvk_map_put(&map, k * 4096, k));
    CHECK(map.count == 5000);
    for (uint64_t k = 1; k <= 5000; k += 2)
        CHECK(hvk_map_remove(&map, k * 4096, NULL));
    uint64_t value = 0;
    for (uint64_t k = 1; k <= 5000; k++) {
        bool found = hvk_map_get(&map, k * 4096, &value);
        CHECK(found == (k % 2 == 0));
        if (found)
            CHECK(value == k);
    }
    CHECK(!hvk_map_remove(&map, 4096, NULL));
    CHECK(!hvk_map_get(&map, 0, &value));
    CHECK(hvk_map_put(&map, 8192, 77) && hvk_map_get(&map, 8192, &value) && value == 77);
    CHECK(map.count == 2500);
    hvk_map_clear(&map);
    CHECK(map.count == 0 && !hvk_map_get(&map, 8192, &value));
}

/* A discrete-GPU-like layout: 8 GiB device-local heap, a 256 MiB device-local BAR heap, 16 GiB system heap. */
static VkPhysicalDeviceMemoryProperties discrete_gpu(void)
{
    VkPhysicalDeviceMemoryProperties p = {0};
    p.memoryHeapCount = 3;
    p.memoryHeaps[0] = (VkMemoryHeap){8192 * MiB, VK_MEMORY_HEAP_DEVICE_LOCAL_BIT};
    p.memoryHeaps[1] = (VkMemoryHeap){256 * MiB, VK_MEMORY_HEAP_DEVICE_LOCAL_BIT};
    p.memoryHeaps[2] = (VkMemoryHeap){16384 * MiB, 0};
    p.memoryTypeCount = 3;
    p.memoryTypes[0] = (VkMemoryType){VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0};
    p.memoryTypes[1] = (VkMemoryType){VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT | VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT, 1};
    p.memoryTypes[2] = (VkMemoryType){VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT, 2};
    return p;
}

static void test_charged_types(void)
{
    VkPhysicalDeviceMemoryProperties p = discrete_gpu();
    CHECK(hvk_memory_type_charged(&p, 0));
    CHECK(hvk_memory_type_charged(&p, 1));
    CHECK(!hvk_memory_type_charged(&p, 2)); /* host memory is not the GPU's */
    CHECK(!hvk_memory_type_charged(&p, 3)); /* out of range */
    CHECK(!hvk_memory_type_charged(&p, 4000));
}

static void test_clamp(void)
{
    VkPhysicalDeviceMemoryProperties p = discrete_gpu();
    hvk_slice slice = {.mapped = true, .limit = 1024 * MiB, .used_total = 0};
    hvk_clamp_heaps(&p, &slice);
    CHECK(p.memoryHeaps[0].size == 1024 * MiB);
    CHECK(p.memoryHeaps[1].size == 256 * MiB);
    CHECK(p.memoryHeaps[2].size == 16384 * MiB);

    VkPhysicalDeviceMemoryProperties unlimited = discrete_gpu();
    hvk_slice none = {.mapped = true, .limit = 0};
    hvk_clamp_heaps(&unlimited, &none);
    CHECK(unlimited.memoryHeaps[0].size == 8192 * MiB);
    hvk_slice unmapped = {.mapped = false, .limit = 1024 * MiB};
    hvk_clamp_heaps(&unlimited, &unmapped);
    CHECK(unlimited.memoryHeaps[0].size == 8192 * MiB);
}

static void test_budget_driver_silent(void)
{
    VkPhysicalDeviceMemoryProperties p = discrete_gpu();
    /* 300 MiB charged in the container: 100 MiB ours through Vulkan on heap 0, 200 MiB elsewhere (CUDA). */
    hvk_slice slice = {.mapped = true, .limit = 1024 * MiB, .used_total = 300 * MiB};
    uint64_t own[VK_MAX_MEMORY_HEAPS] = {100 * MiB, 0, 5 * MiB};
    VkPhysicalDeviceMemoryBudgetPropertiesEXT budget = {0};
    budget.heapBudget[7] = 123; /* garbage past the heap count must be cleared */
    hvk_fill_budget(&p, &slice, own, &budget);
    CHECK(budget.heapUsage[0] == 300 * MiB);
    CHECK(budget.heapBudget[0] == 1024 * MiB);
    CHECK(budget.heapBudget[0] - budget.heapUsage[0] == slice.limit - slice.used_total);
    CHECK(budget.heapUsage[1] == 0);
    CHECK(budget.heapBudget[1] == 256 * MiB);
    CHECK(budget.heapUsage[2] == 5 * MiB && budget.heapBudget[2] == 16384 * MiB);
    CHECK(budget.heapBudget[7] == 0 && budget.heapUsage[7] == 0);
}

static void test_budget_driver_headroom_caps(void)
{
    VkPhysicalDeviceMemoryProperties p = discrete_gpu();
    hvk_slice slice = {.mapped = true, .limit = 4096 * MiB, .used_total = 0};
    uint64_t own[VK_MAX_MEMORY_HEAPS] = {0};
    VkPhysicalDeviceMemoryBudgetPropertiesEXT budget = {0};
    budget.heapBudget[0] = 1500 * MiB; /* the driver sees other tenants: only 1000 MiB headroom */
    budget.heapUsage[0] = 500 * MiB;
    budget.heapBudget[2] = 9000 * MiB;
    budget.heapUsage[2] = 10 * MiB;
    hvk_fill_budget(&p, &slice, own, &budget);
    CHECK(budget.heapUsage[0] == 0);
    CHECK(budget.heapBudget[0] == 1000 * MiB);
    CHECK(budget.heapBudget[2] == 9000 * MiB && budget.heapUsage[2] == 10 * MiB); /* untouched */
}

static void test_budget_over_limit_never_negative(void)
{
    VkPhysicalDeviceMemoryProperties p = discrete_gpu();
    hvk_slice slice = {.mapped = true, .limit = 256 * MiB, .used_total = 300 * MiB};
    uint64_t own[VK_MAX_MEMORY_HEAPS] = {0};
    VkPhysicalDeviceMemoryBudgetPropertiesEXT budget = {0};
    hvk_fill_budget(&p, &slice, own, &budget);
    CHECK(budget.heapBudget[0] <= 256 * MiB);
    CHECK(budget.heapUsage[0] == 300 * MiB);
}

int main(void)
{
    test_map_put_get_remove_many();
    test_charged_types();
    test_clamp();
    test_budget_driver_silent();
    test_budget_driver_headroom_caps();
    test_budget_over_limit_never_negative();
    if (failures != 0) {
        fprintf(stderr, "hvk_unit_tests: %d check(s) failed\n", failures);
        return 1;
    }
    printf("hvk_unit_tests: all checks passed\n");
    return 0;
}

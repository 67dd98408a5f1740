/* Benchmark: the cost of vkAllocateMemory and vkFreeMemory through the real loader, with or without
 * VK_LAYER_HAMI_vgpu in the chain (the caller sets HAMI_VULKAN_ENABLE). Prints one JSON line:
 *   {"layer": true|false, "iterations": N, "size": bytes, "alloc_ns": x, "free_ns": y,
 *    "alloc_best_ns": x', "free_best_ns": y'}
 * Allocations are made in batches of 64 live objects (then freed) so the map and the budget see a
 * realistic number of live allocations. *_ns is the mean over all calls; *_best_ns the mean of the fastest
 * batch, which a loaded shared machine disturbs least. Usage: hvk_bench_alloc [iterations] [size-bytes] */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#include <vulkan/vulkan.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BATCH 64

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int layer_mapped(void)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[4096];
    int found = 0;
    while (maps && fgets(line, sizeof line, maps))
        if (strstr(line, "/libvgpu_vk.so"))
            found = 1;
    if (maps)
        fclose(maps);
    return found;
}

#define CHECK_VK(call)                                                                                       \
    do {                                                                                                     \
        VkResult result_ = (call);                                                                           \
        if (result_ != VK_SUCCESS) {                                                                         \
            fprintf(stderr, "hvk_bench_alloc: %s failed: %d\n", #call, (int)result_);                        \
            return 1;                                                                                        \
        }                                                                                                    \
    } while (0)

int main(int argc, char **argv)
{
    long iterations = argc > 1 ? atol(argv[1]) : 20000;
    VkDeviceSize size = argc > 2 ? (VkDeviceSize)atoll(argv[2]) : 4096;
    if (iterations < BATCH)
        iterations = BATCH;
    iterations -= iterations % BATCH;

    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO, .apiVersion = VK_API_VERSION_1_1};
    VkInstanceCreateInfo instance_info = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app};
    VkInstance instance;
    CHECK_VK(vkCreateInstance(&instance_info, NULL, &instance));
    uint32_t count = 1;
    VkPhysicalDevice physical;
    VkResult enumerated = vkEnumeratePhysicalDevices(instance, &count, &physical);
    if ((enumerated != VK_SUCCESS && enumerated != VK_INCOMPLETE) || count == 0) {
        fprintf(stderr, "hvk_bench_alloc: no Vulkan physical device\n");
        return 1;
    }
    float priority = 1.0f;
    VkDeviceQueueCreateInfo queue = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                     .queueCount = 1,
                                     .pQueuePriorities = &priority};
    VkDeviceCreateInfo device_info = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                                      .queueCreateInfoCount = 1,
                                      .pQueueCreateInfos = &queue};
    VkDevice device;
    CHECK_VK(vkCreateDevice(physical, &device_info, NULL, &device));
    /* Through the device's own pointers, as a real engine calls them (no loader trampoline). */
    PFN_vkAllocateMemory allocate = (PFN_vkAllocateMemory)vkGetDeviceProcAddr(device, "vkAllocateMemory");
    PFN_vkFreeMemory release = (PFN_vkFreeMemory)vkGetDeviceProcAddr(device, "vkFreeMemory");

    VkMemoryAllocateInfo info = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .allocationSize = size,
                                 .memoryTypeIndex = 0};
    VkDeviceMemory memory[BATCH];
    double alloc_ns = 0, free_ns = 0, alloc_best = 1e300, free_best = 1e300;
    for (long done = 0; done < iterations; done += BATCH) {
        double t0 = now_ns();
        for (int i = 0; i < BATCH; i++)
            CHECK_VK(allocate(device, &info, NULL, &memory[i]));
        double t1 = now_ns();
        for (int i = 0; i < BATCH; i++)
            release(device, memory[i], NULL);
        double t2 = now_ns();
        alloc_ns += t1 - t0;
        free_ns += t2 - t1;
        if (t1 - t0 < alloc_best)
            alloc_best = t1 - t0;
        if (t2 - t1 < free_best)
            free_best = t2 - t1;
    }
    printf("{\"layer\": %s, \"iterations\": %ld, \"size\": %llu, \"alloc_ns\": %.0f, \"free_ns\": %.0f, "
           "\"alloc_best_ns\": %.0f, \"free_best_ns\": %.0f}\n",
           layer_mapped() ? "true" : "false", iterations, (unsigned long long)size, alloc_ns / (double)iterations,
           free_ns / (double)iterations, alloc_best / BATCH, free_best / BATCH);
    vkDestroyDevice(device, NULL);
    vkDestroyInstance(instance, NULL);
    return 0;
}

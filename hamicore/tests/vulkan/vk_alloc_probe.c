/* vk_alloc_probe.c - a small Vulkan application for the real-node e2e tests (tests/e2e/test_real_node_vulkan.py):
 * linked against the real loader (libvulkan.so.1), it runs the commands on its command line against the first
 * physical device and prints one JSON object per command on stdout, in cuda_probe's style ({"cmd":...,"rc":...},
 * rc = the VkResult). No Python in the container image, so this is C rather than the layer suite's vk_probe.py.
 *
 *   layers          the instance layers the loader lists (vkEnumerateInstanceLayerProperties)
 *   init            vkCreateInstance (API 1.1), the first physical device, vkCreateDevice (with VK_EXT_memory_budget
 *                   when the device lists it); reports the device name, its deviceUUID (32 hex digits) and
 *                   whether the device lists VK_EXT_memory_budget
 *   heap            the first device-local heap: size, and VK_EXT_memory_budget's budget and usage when listed
 *   alloc <size>    vkAllocateMemory from the first memory type of that heap; size in bytes, or with k/m/g
 *   free <k>        vkFreeMemory of the k-th successful allocation (0-based)
 *   mapped          whether libvgpu_vk.so (the HAMi layer) is mapped into this process
 *   hold            print, flush and sleep until killed
 *
 * After a failed init the remaining device commands report rc -1 (no device); the exit status is 0 unless the
 * command line is malformed (2), so the test reads every outcome from the JSON lines. */
#define _POSIX_C_SOURCE 200809L
#include <vulkan/vulkan.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_ALLOCS 1024
#define NO_DEVICE (-1)

static VkInstance g_instance;
static VkPhysicalDevice g_physical;
static VkDevice g_device;
static int g_budget_ext;
static uint32_t g_heap = UINT32_MAX;
static uint32_t g_type = UINT32_MAX;
static VkDeviceMemory g_memory[MAX_ALLOCS];
static int g_nmemory;

static int parse_size(const char *text, VkDeviceSize *out)
{
    char *end;
    unsigned long long value = strtoull(text, &end, 10);
    if (end == text)
        return -1;
    int shift = 0;
    switch (*end) {
    case 'k': shift = 10; end++; break;
    case 'm': shift = 20; end++; break;
    case 'g': shift = 30; end++; break;
    default: break;
    }
    if (*end != '\0' || value > (~0ULL >> shift))
        return -1;
    *out = (VkDeviceSize)(value << shift);
    return 0;
}

static int layer_mapped(void)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[4096];
    int found = 0;
    while (maps && fgets(line, sizeof line, maps)) {
        size_t n = strcspn(line, "\n");
        line[n] = '\0';
        if (n >= 14 && strcmp(line + n - 14, "/libvgpu_vk.so") == 0)
            found = 1;
    }
    if (maps)
        fclose(maps);
    return found;
}

/* JSON string body: device names and layer names come from drivers and manifests, so escape what JSON needs. */
static void print_json_string(const char *text)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void cmd_layers(void)
{
    uint32_t count = 0;
    VkResult rc = vkEnumerateInstanceLayerProperties(&count, NULL);
    VkLayerProperties *layers = calloc(count ? count : 1, sizeof *layers);
    if (rc == VK_SUCCESS && layers)
        rc = vkEnumerateInstanceLayerProperties(&count, layers);
    printf("{\"cmd\":\"layers\",\"rc\":%d,\"names\":[", (int)rc);
    for (uint32_t i = 0; rc == VK_SUCCESS && layers && i < count; i++) {
        if (i)
            putchar(',');
        print_json_string(layers[i].layerName);
    }
    printf("]}\n");
    free(layers);
}

static int device_lists(const char *extension)
{
    uint32_t count = 0;
    if (vkEnumerateDeviceExtensionProperties(g_physical, NULL, &count, NULL) != VK_SUCCESS)
        return 0;
    VkExtensionProperties *props = calloc(count ? count : 1, sizeof *props);
    int found = 0;
    if (props && vkEnumerateDeviceExtensionProperties(g_physical, NULL, &count, props) == VK_SUCCESS)
        for (uint32_t i = 0; i < count; i++)
            if (strcmp(props[i].extensionName, extension) == 0)
                found = 1;
    free(props);
    return found;
}

static VkResult create_device(VkPhysicalDeviceProperties2 *props)
{
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
                             .pApplicationName = "vk_alloc_probe",
                             .apiVersion = VK_API_VERSION_1_1};
    VkInstanceCreateInfo instance_info = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app};
    VkResult rc = vkCreateInstance(&instance_info, NULL, &g_instance);
    if (rc != VK_SUCCESS)
        return rc;
    uint32_t count = 1;
    rc = vkEnumeratePhysicalDevices(g_instance, &count, &g_physical);
    if (rc == VK_INCOMPLETE)
        rc = VK_SUCCESS;
    if (rc != VK_SUCCESS)
        return rc;
    if (count == 0)
        return VK_ERROR_INITIALIZATION_FAILED;
    vkGetPhysicalDeviceProperties2(g_physical, props);
    VkPhysicalDeviceMemoryProperties memory;
    vkGetPhysicalDeviceMemoryProperties(g_physical, &memory);
    for (uint32_t t = 0; t < memory.memoryTypeCount && g_type == UINT32_MAX; t++) {
        uint32_t heap = memory.memoryTypes[t].heapIndex;
        if (memory.memoryHeaps[heap].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) {
            g_type = t;
            g_heap = heap;
        }
    }
    if (g_type == UINT32_MAX)
        return VK_ERROR_FEATURE_NOT_PRESENT;
    g_budget_ext = device_lists(VK_EXT_MEMORY_BUDGET_EXTENSION_NAME);
    float priority = 1.0f;
    VkDeviceQueueCreateInfo queue = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                     .queueCount = 1,
                                     .pQueuePriorities = &priority};
    const char *extensions[] = {VK_EXT_MEMORY_BUDGET_EXTENSION_NAME};
    VkDeviceCreateInfo device_info = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                                      .queueCreateInfoCount = 1,
                                      .pQueueCreateInfos = &queue,
                                      .enabledExtensionCount = g_budget_ext ? 1 : 0,
                                      .ppEnabledExtensionNames = extensions};
    return vkCreateDevice(g_physical, &device_info, NULL, &g_device);
}

static void cmd_init(void)
{
    VkPhysicalDeviceIDProperties ids = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES};
    VkPhysicalDeviceProperties2 props = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &ids};
    VkResult rc = create_device(&props);
    if (rc != VK_SUCCESS) {
        g_device = VK_NULL_HANDLE;
        printf("{\"cmd\":\"init\",\"rc\":%d}\n", (int)rc);
        return;
    }
    printf("{\"cmd\":\"init\",\"rc\":0,\"device\":");
    print_json_string(props.properties.deviceName);
    printf(",\"uuid\":\"");
    for (unsigned i = 0; i < VK_UUID_SIZE; i++)
        printf("%02x", ids.deviceUUID[i]);
    printf("\",\"budget_ext\":%s}\n", g_budget_ext ? "true" : "false");
}

static void cmd_heap(void)
{
    if (g_device == VK_NULL_HANDLE) {
        printf("{\"cmd\":\"heap\",\"rc\":%d}\n", NO_DEVICE);
        return;
    }
    VkPhysicalDeviceMemoryBudgetPropertiesEXT budget = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT};
    VkPhysicalDeviceMemoryProperties2 memory = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2,
                                                .pNext = g_budget_ext ? &budget : NULL};
    vkGetPhysicalDeviceMemoryProperties2(g_physical, &memory);
    printf("{\"cmd\":\"heap\",\"rc\":0,\"heap\":%u,\"size\":%llu", g_heap,
           (unsigned long long)memory.memoryProperties.memoryHeaps[g_heap].size);
    if (g_budget_ext)
        printf(",\"budget\":%llu,\"usage\":%llu", (unsigned long long)budget.heapBudget[g_heap],
               (unsigned long long)budget.heapUsage[g_heap]);
    printf("}\n");
}

static const char *result_name(VkResult rc)
{
    switch (rc) {
    case VK_SUCCESS: return "VK_SUCCESS";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
    default: return "other";
    }
}

static void cmd_alloc(VkDeviceSize size)
{
    if (g_device == VK_NULL_HANDLE || g_nmemory == MAX_ALLOCS) {
        printf("{\"cmd\":\"alloc\",\"rc\":%d,\"size\":%llu}\n", NO_DEVICE, (unsigned long long)size);
        return;
    }
    VkMemoryAllocateInfo info = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                                 .allocationSize = size,
                                 .memoryTypeIndex = g_type};
    VkDeviceMemory memory;
    VkResult rc = vkAllocateMemory(g_device, &info, NULL, &memory);
    printf("{\"cmd\":\"alloc\",\"rc\":%d,\"result\":\"%s\",\"size\":%llu", (int)rc, result_name(rc),
           (unsigned long long)size);
    if (rc == VK_SUCCESS) {
        g_memory[g_nmemory] = memory;
        printf(",\"id\":%d", g_nmemory++);
    }
    printf("}\n");
}

static void cmd_free(int k)
{
    if (g_device == VK_NULL_HANDLE || k < 0 || k >= g_nmemory || g_memory[k] == VK_NULL_HANDLE) {
        printf("{\"cmd\":\"free\",\"rc\":%d}\n", NO_DEVICE);
        return;
    }
    vkFreeMemory(g_device, g_memory[k], NULL);
    g_memory[k] = VK_NULL_HANDLE;
    printf("{\"cmd\":\"free\",\"rc\":0,\"id\":%d}\n", k);
}

static int usage(const char *why)
{
    fprintf(stderr, "vk_alloc_probe: %s\nusage: vk_alloc_probe [layers|init|heap|alloc SIZE|free K|mapped|hold]...\n",
            why);
    return 2;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *cmd = argv[i];
        if (strcmp(cmd, "layers") == 0) {
            cmd_layers();
        } else if (strcmp(cmd, "init") == 0) {
            cmd_init();
        } else if (strcmp(cmd, "heap") == 0) {
            cmd_heap();
        } else if (strcmp(cmd, "alloc") == 0) {
            VkDeviceSize size;
            if (i + 1 >= argc || parse_size(argv[++i], &size) != 0)
                return usage("alloc needs a size (bytes, or with k/m/g)");
            cmd_alloc(size);
        } else if (strcmp(cmd, "free") == 0) {
            if (i + 1 >= argc)
                return usage("free needs an allocation index");
            cmd_free(atoi(argv[++i]));
        } else if (strcmp(cmd, "mapped") == 0) {
            printf("{\"cmd\":\"mapped\",\"rc\":0,\"layer\":%s}\n", layer_mapped() ? "true" : "false");
        } else if (strcmp(cmd, "hold") == 0) {
            printf("{\"cmd\":\"hold\",\"rc\":0}\n");
            fflush(stdout);
            for (;;)
                pause();
        } else {
            return usage("unknown command");
        }
    }
    for (int k = 0; k < g_nmemory; k++)
        if (g_memory[k] != VK_NULL_HANDLE)
            vkFreeMemory(g_device, g_memory[k], NULL);
    if (g_device != VK_NULL_HANDLE)
        vkDestroyDevice(g_device, NULL);
    if (g_instance != VK_NULL_HANDLE)
        vkDestroyInstance(g_instance, NULL);
    return 0;
}

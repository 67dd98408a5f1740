/* hvk_budget: the layer's accounting client, one small interface over the container's GPU memory budget.
 *
 * Backends, chosen once per process at the first vkCreateInstance:
 *   "libvgpu"  libvgpu.so is loaded (LD_PRELOAD or /etc/ld.so.preload): its exported hami_budget_* API,
 *              found with dlsym(RTLD_DEFAULT). CUDA and Vulkan then share one process slot.
 *   "linked"   otherwise: our own hidden copy of the accounting core (CMake target hami_accounting), linked
 *              into libvgpu_vk.so. It maps the same shared file (CUDA_DEVICE_MEMORY_SHARED_CACHE), reads
 *              the same limits and uses the same atomics, so the cap is one cap whichever copy charges it.
 * All calls are thread-safe. Return conventions are those of hamicore/include/hami_budget.h. */
#ifndef HVK_BUDGET_H
#define HVK_BUDGET_H

typedef struct hvk_budget_ops {
    const char *name;
    /* limit index of the GPU with this UUID, or -1 when the container has no such GPU */
    int (*device_by_uuid)(const unsigned char uuid[16]);
    /* 0 reserved, 1 over the limit, -1 error or no budget for dev (the caller then charges nothing) */
    int (*reserve)(int dev, unsigned long long bytes);
    void (*release)(int dev, unsigned long long bytes);
    /* 0 on success; limit 0 means no limit */
    int (*query)(int dev, unsigned long long *limit, unsigned long long *used_total,
                 unsigned long long *used_self);
} hvk_budget_ops;

/* Resolves the backend once (thread-safe) and returns it; never NULL. */
const hvk_budget_ops *hvk_budget_resolve(void);

#endif

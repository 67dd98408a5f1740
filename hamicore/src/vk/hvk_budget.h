/* hvk_budget: the layer's accounting client, one small interface over the container's GPU memory budget.
 *
 * Backends, chosen once per process at the first vkCreateInstance (first match wins):
 *   "libvgpu"  libvgpu.so is loaded (LD_PRELOAD or /etc/ld.so.preload): its exported hami_budget_* API,
 *              found with dlsym(RTLD_DEFAULT). The layer then shares that library's process slot.
 *   "linked"   our own hidden copy of the accounting core, linked into libvgpu_vk.so: it maps the same
 *              shared file (CUDA_DEVICE_MEMORY_SHARED_CACHE) with the same atomics, so the cap is the
 *              same one whichever copy charges it.
 *   "local"    built without the core: limits from CUDA_DEVICE_MEMORY_LIMIT[_i], UUIDs from
 *              NVIDIA_VISIBLE_DEVICES, counters in this process only (one process, no sharing).
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

/* The "local" backend, exposed for the resolver (hvk_budget_local.c). */
extern const hvk_budget_ops hvk_budget_local_ops;

#endif

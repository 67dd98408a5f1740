/*
 * hami_budget.h - the device-memory budget API of hamicore.
 *
 * libvgpu.so exports these functions (see src/libvgpu.map) so that other
 * interposers loaded into the same process, in particular the Vulkan layer
 * libvgpu_vk.so, charge their allocations to the same per-container budget
 * as CUDA allocations. The same functions are also available as the static,
 * hidden-visibility CMake target `hami_accounting`, so a library can link the
 * accounting core into itself and work when libvgpu.so is not preloaded.
 *
 * Budget state lives in the per-container shared region named by
 * CUDA_DEVICE_MEMORY_SHARED_CACHE (format in hamicore/README.md); limits come
 * from CUDA_DEVICE_MEMORY_LIMIT[_<i>]. The "device index" used below is the
 * limit index: the i of CUDA_DEVICE_MEMORY_LIMIT_<i>, i.e. the position of the
 * GPU among the GPUs visible to the container (NVML order), independent of
 * CUDA_VISIBLE_DEVICES.
 *
 * All functions are thread-safe, async-signal-unsafe, never block on a lock
 * another process can hold, and never crash on bad arguments.
 */
#ifndef HAMI_BUDGET_H
#define HAMI_BUDGET_H

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this API; bumped when a declaration changes incompatibly. */
#define HAMI_BUDGET_API_VERSION 1

/* Returns the limit index (0..n-1, the container-visible CUDA device index) whose device has this
 * 16-byte UUID, or -1 (unknown UUID, NULL argument, or no budget active). */
int hami_budget_device_by_uuid(const unsigned char uuid[16]);

/* Reserve bytes on device index dev against the container's shared budget.
 * 0 = reserved, 1 = over limit (nothing reserved; one OOM line is logged), -1 = error/no budget active.
 * Memory of processes that died without releasing is reclaimed before 1 is returned. */
int hami_budget_reserve(int dev, unsigned long long bytes);

/* Return a previous reservation (bytes are clamped so usage never goes below zero). */
void hami_budget_release(int dev, unsigned long long bytes);

/* Fill limit (0 = unlimited), used by all processes of the container, used by this process.
 * Any pointer may be NULL. Returns 0 or -1 (bad index or no budget active). */
int hami_budget_query(int dev, unsigned long long *limit, unsigned long long *used_total,
                      unsigned long long *used_self);

/* Number of devices the budget knows (limit indices 0..n-1), or -1 when no budget is active. */
int hami_budget_device_count(void);

#ifdef __cplusplus
}
#endif

#endif /* HAMI_BUDGET_H */

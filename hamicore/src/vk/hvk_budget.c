/* hvk_budget: backend resolution for the accounting client (see hvk_budget.h for the order and why). */
#define _GNU_SOURCE
#include "hvk_budget.h"

#include "hvk_log.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

#include "hami_budget.h"

/* Our own copy of the accounting core: hidden symbols, so dlsym(RTLD_DEFAULT) below never finds these. */
static const hvk_budget_ops hvk_budget_linked_ops = {
    .name = "linked",
    .device_by_uuid = hami_budget_device_by_uuid,
    .reserve = hami_budget_reserve,
    .release = hami_budget_release,
    .query = hami_budget_query,
};

static hvk_budget_ops hvk_budget_preloaded_ops = {.name = "libvgpu"};
static const hvk_budget_ops *hvk_budget_chosen = &hvk_budget_linked_ops;
static pthread_once_t hvk_budget_once = PTHREAD_ONCE_INIT;

/* libvgpu.so exports the budget API; when it is in the process, charging through it keeps one process
 * slot for CUDA and Vulkan together. dlsym(RTLD_DEFAULT) searches the global scope only: the layer itself
 * is dlopen'ed RTLD_LOCAL by the loader and its own copy is hidden, so a hit is libvgpu.so's. */
static void hvk_budget_choose(void)
{
    hvk_budget_ops *ops = &hvk_budget_preloaded_ops;
    *(void **)&ops->device_by_uuid = dlsym(RTLD_DEFAULT, "hami_budget_device_by_uuid");
    *(void **)&ops->reserve = dlsym(RTLD_DEFAULT, "hami_budget_reserve");
    *(void **)&ops->release = dlsym(RTLD_DEFAULT, "hami_budget_release");
    *(void **)&ops->query = dlsym(RTLD_DEFAULT, "hami_budget_query");
    if (ops->device_by_uuid && ops->reserve && ops->release && ops->query)
        hvk_budget_chosen = ops;
    hvk_log(HVK_LOG_INFO, "accounting backend: %s", hvk_budget_chosen->name);
}

const hvk_budget_ops *hvk_budget_resolve(void)
{
    pthread_once(&hvk_budget_once, hvk_budget_choose);
    return hvk_budget_chosen;
}

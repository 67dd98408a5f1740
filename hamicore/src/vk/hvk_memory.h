/* hvk_memory: the memory intercepts of the layer (hvk_memory.c), handed to the loader by hvk_layer.c, and the
 * clean-up vkDestroyDevice calls. */
#ifndef HVK_MEMORY_H
#define HVK_MEMORY_H

#include "hvk_records.h"

VKAPI_ATTR void VKAPI_CALL hvk_GetPhysicalDeviceMemoryProperties(VkPhysicalDevice physical_device,
                                                                 VkPhysicalDeviceMemoryProperties *properties);
VKAPI_ATTR void VKAPI_CALL hvk_GetPhysicalDeviceMemoryProperties2(VkPhysicalDevice physical_device,
                                                                  VkPhysicalDeviceMemoryProperties2 *properties);
VKAPI_ATTR void VKAPI_CALL hvk_GetPhysicalDeviceMemoryProperties2KHR(VkPhysicalDevice physical_device,
                                                                     VkPhysicalDeviceMemoryProperties2 *properties);
VKAPI_ATTR VkResult VKAPI_CALL hvk_AllocateMemory(VkDevice device, const VkMemoryAllocateInfo *info,
                                                  const VkAllocationCallbacks *allocator, VkDeviceMemory *memory);
VKAPI_ATTR void VKAPI_CALL hvk_FreeMemory(VkDevice device, VkDeviceMemory memory,
                                          const VkAllocationCallbacks *allocator);
/* Called by vkDestroyDevice: returns the budget of allocations the application did not free. */
void hvk_device_release_leftovers(hvk_device *device);

#endif
